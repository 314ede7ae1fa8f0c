"""Greedy decoding: flan_jax's KV-cached jitted loop against transformers' generate(),
T5 v1.1 small, same weights, same inputs, on this machine's CPU."""

from __future__ import annotations

import time

import numpy as np

from benchmarks import _common

SHAPE = {"batch_size": 8, "inputs_length": 512, "new_tokens": 128}
TARGET_RATIO = 2.01  # issue #15


def _inputs(batch_size, inputs_length, new_tokens):
    from flan_jax.models.t5 import T5Config

    del new_tokens
    batch = _common.synthetic_batch(batch_size, inputs_length, 1, T5Config().vocab_size, seed=1)
    return batch["encoder_input_tokens"]


def setup_flan_jax(hf_dir, **shape):
    """EncoderDecoderModel.predict_batch (greedy) under one jax.jit; writes its weights to
    hf_dir for the other side."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from flan_jax.models.base import EncoderDecoderModel
    from flan_jax.models.t5 import T5Config

    config = T5Config()
    model = EncoderDecoderModel(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0)))
    _common.write_hf_checkpoint(jax.tree.map(np.asarray, params), config, hf_dir)
    predict = jax.jit(
        lambda p, tokens: model.predict_batch(
            p, {"encoder_input_tokens": tokens}, max_decode_length=shape["new_tokens"]
        )
    )
    tokens = jnp.asarray(_inputs(**shape))
    start = time.perf_counter()
    output = np.asarray(predict(params, tokens))
    info = {"compile_and_first_s": time.perf_counter() - start, "tokens": output.tolist()}

    def run():
        start = time.perf_counter()
        predict(params, tokens).block_until_ready()
        return {"seconds": time.perf_counter() - start}

    return info, run


def setup_transformers(hf_dir, **shape):
    """T5ForConditionalGeneration.generate: greedy, KV cache on (its default)."""
    import torch
    import transformers

    threads = _common.torch_threads()
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    tokens = torch.from_numpy(_inputs(**shape)).long()

    def generate():
        with torch.inference_mode():
            out = model.generate(
                input_ids=tokens,
                max_new_tokens=shape["new_tokens"],
                do_sample=False,
                num_beams=1,
            )
        return out[:, 1:].numpy()  # drop the decoder start token

    output = generate()
    info = {"threads": threads, "tokens": output.tolist(), "version": transformers.__version__}

    def run():
        start = time.perf_counter()
        generate()
        return {"seconds": time.perf_counter() - start}

    return info, run


def _agreement(ours, theirs) -> tuple[float, int]:
    """Fraction of positions where both sides emitted the same token (up to the shorter),
    and the fewest tokens any row of either side generated before stopping."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    length = min(ours.shape[1], theirs.shape[1])
    same = float(np.mean(ours[:, :length] == theirs[:, :length]))
    generated = lambda t: (t != 0).sum(axis=1).min() if t.size else 0
    return same, int(min(generated(ours), generated(theirs)))


def measure(repetitions: int) -> dict:
    our_runs, their_runs, our_info, their_info = _common.compare_with_transformers(
        "decode_t5", SHAPE, repetitions
    )

    batch, new = SHAPE["batch_size"], SHAPE["new_tokens"]
    same, fewest = _agreement(our_info["tokens"], their_info["tokens"])
    sides = {
        name: {"seconds": _common.median(runs), "range": _common.spread(runs)}
        for name, runs in (("flan_jax", our_runs), ("transformers", their_runs))
    }
    for s in sides.values():
        s["tokens_per_s"] = batch * new / s["seconds"]
    ratio = sides["flan_jax"]["tokens_per_s"] / sides["transformers"]["tokens_per_s"]
    rows = [
        (name, f"{s['seconds']:.3f}", s["range"], f"{s['tokens_per_s']:.0f}")
        for name, s in sides.items()
    ]
    markdown = f"""T5 v1.1 small, fp32, greedy, batch {batch}, {SHAPE["inputs_length"]}-token
inputs, {new} new tokens; the timed call includes encoding the inputs. Same weights on both
sides (flan_jax's initialization, exported to HF).

- flan_jax: `EncoderDecoderModel.predict_batch` (encoder, cross-attention K/V computed once,
  self-attention KV cache, one `jax.lax.while_loop`) under one `jax.jit`; compile + first call
  {our_info["compile_and_first_s"]:.1f} s (not timed).
- transformers {their_info["version"]}: `generate(max_new_tokens={new}, do_sample=False,
  num_beams=1)` (its KV cache), `torch.inference_mode()`,
  `torch.set_num_threads({their_info["threads"]})`.
- Sanity: the two sides emit the same token at {100 * same:.1f}% of positions; every row
  generated at least {fewest} tokens (both stop early only if all rows emit EOS).

{_common.table(("side", "median s per batch", "range s", "new tokens/s"), rows)}

**flan_jax / transformers: {ratio:.2f}x** (target >= {TARGET_RATIO}x:
{_common.verdict(ratio, TARGET_RATIO)}).
"""
    return {"ratio": ratio, "sides": sides, "agreement": same, "markdown": markdown}
