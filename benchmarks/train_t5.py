"""Training throughput: the flan_jax train step against transformers' PyTorch T5 with its
Adafactor, T5 v1.1 small, same weights, same batch, fp32, on this machine's CPU."""

from __future__ import annotations

import dataclasses
import time

from benchmarks import _common

SHAPE = {"batch_size": 8, "inputs_length": 512, "targets_length": 128}
TARGET_RATIO = 1.7  # issue #15
TARGET_MFU = 0.5
# T5X's Adafactor in transformers' terms: lr 1e-3 constant, parameter-scaled updates,
# second-moment decay t^-0.8, update clipping 1.0, no momentum, no weight decay.
OPTIMIZER = dict(
    lr=1e-3,
    relative_step=False,
    scale_parameter=True,
    warmup_init=False,
    decay_rate=-0.8,
    clip_threshold=1.0,
    beta1=None,
    weight_decay=0.0,
)


def _batch(batch_size, inputs_length, targets_length):
    from flan_jax.models.t5 import T5Config

    return _common.synthetic_batch(batch_size, inputs_length, targets_length, T5Config().vocab_size)


def setup_flan_jax(hf_dir, **shape):
    """T5 v1.1 small (T5Config's defaults); also writes its initial weights to hf_dir."""
    from benchmarks import _flan_jax
    from flan_jax.models.t5 import T5Config

    config = T5Config()
    info, run, params = _flan_jax.train_step_runner(config, _batch(**shape))
    _common.write_hf_checkpoint(params, config, hf_dir)
    return {**info, "config": dataclasses.asdict(config)}, run


def setup_transformers(hf_dir, **shape):
    """transformers' T5ForConditionalGeneration from hf_dir, eager PyTorch, with
    transformers.optimization.Adafactor set up as T5X's (see OPTIMIZER)."""
    import torch
    import transformers
    from transformers.optimization import Adafactor

    threads = _common.torch_threads()
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).train()
    optimizer = Adafactor(model.parameters(), **OPTIMIZER)
    batch = {k: torch.from_numpy(v).long() for k, v in _batch(**shape).items()}

    def step():
        loss = model(
            input_ids=batch["encoder_input_tokens"],
            decoder_input_ids=batch["decoder_input_tokens"],
            labels=batch["decoder_target_tokens"],
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    start = time.perf_counter()
    first_loss = step()
    info = {
        "first_step_s": time.perf_counter() - start,
        "first_cross_entropy": first_loss,
        "threads": threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "attn_implementation": model.config._attn_implementation,
    }

    def run():
        start = time.perf_counter()
        loss = step()
        return {"seconds": time.perf_counter() - start, "loss": loss}

    return info, run


def measure(repetitions: int, peak_gflops: float) -> dict:
    our_runs, their_runs, our_info, their_info = _common.compare_with_transformers(
        "train_t5", SHAPE, repetitions
    )

    batch, lengths = SHAPE["batch_size"], SHAPE["inputs_length"] + SHAPE["targets_length"]
    step_flops = our_info["step_flops"]
    sides = {}
    for name, runs, info in (
        ("flan_jax", our_runs, our_info),
        ("transformers", their_runs, their_info),
    ):
        seconds = _common.median(runs)
        sides[name] = {
            "step_s": seconds,
            "tokens_per_s": batch * lengths / seconds,
            "mfu": step_flops / seconds / (peak_gflops * 1e9),
            "range": _common.spread(runs),
            "peak_gib": info["peak_gib"],
        }
    ratio = sides["flan_jax"]["tokens_per_s"] / sides["transformers"]["tokens_per_s"]
    loss_gap = abs(our_info["first_cross_entropy"] - their_info["first_cross_entropy"])
    rows = [
        (name, f"{s['step_s']:.3f}", s["range"], f"{s['tokens_per_s']:.0f}",
         f"{100 * s['mfu']:.1f}%", f"{s['peak_gib']:.1f}")
        for name, s in sides.items()
    ]  # fmt: skip
    markdown = f"""T5 v1.1 small (vocab 32128, d_model 512, 8+8 layers), batch {batch} x
({SHAPE["inputs_length"]} inputs, {SHAPE["targets_length"]} targets), fp32, no packing, no
padding, dropout 0. Both sides start from the same weights (flan_jax's initialization,
exported with `flan_jax.interop.hf_t5.params_to_hf`) and train on the same batch.

- flan_jax: `Trainer.train_step` (one `jax.jit` program, state donated), `optim.adafactor(1e-3)`
  (T5X defaults), z-loss 1e-4; XLA CPU, one device, all cores; malloc as its entry points set
  it (`flan_jax.allocator.configure()`: glibc's mappings backed by transparent huge pages).
- transformers {their_info["versions"]["transformers"]} / torch {their_info["versions"]["torch"]}:
  `T5ForConditionalGeneration` in eager mode (attention implementation
  `{their_info["attn_implementation"]}`), `loss.backward()`,
  `transformers.optimization.Adafactor({", ".join(f"{k}={v}" for k, v in OPTIMIZER.items())})`;
  `torch.set_num_threads({their_info["threads"]})`; glibc malloc's defaults.
- Sanity: cross-entropy at the shared initial weights: flan_jax
  {our_info["first_cross_entropy"]:.5f}, transformers {their_info["first_cross_entropy"]:.5f}
  (difference {loss_gap:.1e}).
- flan_jax compile + first step: {our_info["compile_and_first_step_s"]:.1f} s (not timed).

{_common.table(("side", "median step s", "range s", "tokens/s", "MFU", "peak memory GiB"), rows)}

Tokens/s counts input and target positions: {batch} x {lengths} per step. MFU = model FLOPs
per step / step time / measured peak; model FLOPs = `flan_jax.flops.train_flops_per_sequence`
x {batch} = {step_flops / 1e9:.1f} GFLOP (3 x the forward matmuls, attention included,
2 FLOPs per multiply-add), the same count for both sides.

**flan_jax / transformers: {ratio:.2f}x** (target >= {TARGET_RATIO}x:
{_common.verdict(ratio, TARGET_RATIO)});
flan_jax MFU {100 * sides["flan_jax"]["mfu"]:.1f}% (target >= {100 * TARGET_MFU:.0f}%:
{_common.verdict(sides["flan_jax"]["mfu"], TARGET_MFU)}).
"""
    return {"ratio": ratio, "sides": sides, "loss_gap": loss_gap, "markdown": markdown}
