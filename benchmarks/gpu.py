"""MFU of the flan_jax train step on one GPU: T5 v1.1 XL, bf16 activations, float32
parameters (T5X's mixed precision), scanned layers. Skips, saying why, without a GPU."""

from __future__ import annotations

import dataclasses
import shutil

from benchmarks import _common

SHAPE = {"size": "xl", "batch_size": 16, "inputs_length": 512, "targets_length": 128}
TARGET_MFU = 0.45
# The worker must see the GPU: no JAX_PLATFORMS=cpu here.
GPU_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _why_no_gpu() -> str | None:
    import jax

    try:
        jax.devices("gpu")
        return None
    except RuntimeError:
        if shutil.which("nvidia-smi"):
            return (
                "an NVIDIA GPU is present but jax has no CUDA backend; install it with "
                "`.venv/bin/pip install -U 'jax[cuda12]'` and rerun `make bench`"
            )
        return "this machine has no GPU (jax finds no 'gpu' device, no nvidia-smi)"


def setup_flan_jax(size, batch_size, inputs_length, targets_length):
    why = _why_no_gpu()
    if why:
        return {"skipped": why}, None

    import jax

    from benchmarks import _flan_jax
    from flan_jax import flops

    config = dataclasses.replace(
        _flan_jax.t5_config(size), dtype="bfloat16", param_dtype="float32", scan_layers=True
    )
    batch = _common.synthetic_batch(batch_size, inputs_length, targets_length, config.vocab_size)
    info, run, _ = _flan_jax.train_step_runner(config, batch)
    device = jax.devices()[0].device_kind
    info.update(
        device=device,
        peak_flops=flops.PEAK_FLOPS_PER_DEVICE.get(device),
        config=dataclasses.asdict(config),
    )
    return info, run


def measure(repetitions: int) -> dict:
    try:
        with _common.Worker("gpu", "flan_jax", SHAPE, GPU_ENV) as worker:
            info = worker.info
            runs = None if "skipped" in info else _common.alternate([worker], repetitions)[0]
    except _common.WorkerError as error:
        info, runs = {"skipped": f"the GPU run failed: {str(error).strip().splitlines()[-1]}"}, None
    if runs is None:
        return {"mfu": None, "markdown": f"**Could not be measured**: {info['skipped']}.\n"}

    seconds = _common.median(runs)
    achieved = info["step_flops"] / seconds
    mfu = achieved / info["peak_flops"] if info["peak_flops"] else None
    mfu_text = (
        f"**MFU {100 * mfu:.1f}%** against {info['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16 "
        f"(target >= {100 * TARGET_MFU:.0f}%: {_common.verdict(mfu, TARGET_MFU)})"
        if mfu is not None
        else f"no known peak for device kind {info['device']!r}: MFU not computed"
    )
    config = info["config"]
    markdown = f"""{info["device"]}: T5 v1.1 {SHAPE["size"]} ({config["num_encoder_layers"]}+
{config["num_decoder_layers"]} layers, d_model {config["d_model"]}), batch
{SHAPE["batch_size"]} x ({SHAPE["inputs_length"]} inputs, {SHAPE["targets_length"]} targets),
bfloat16 activations, float32 parameters, scanned layers, no remat, Adafactor; median step
{seconds:.3f} s of {repetitions} ({_common.spread(runs)} s), compile + first step
{info["compile_and_first_step_s"]:.0f} s.

FLOPs per step = batch x `flan_jax.flops.train_flops_per_sequence` = 3 x forward matmul FLOPs
(2 per multiply-add; encoder: L_in x layers x (2 (4 d H + 3 d d_ff) + 4 L_in H); decoder:
L_tgt x layers x (2 (6 d H + 3 d d_ff) + 4 (L_tgt + L_in) H) + cross-attention K/V
L_in x layers x 4 d H; logits 2 L_tgt d V; H = heads x d_kv) = {info["step_flops"] / 1e12:.2f}
TFLOP; achieved {achieved / 1e12:.1f} TFLOP/s. {mfu_text}.
"""
    return {"mfu": mfu, "markdown": markdown}
