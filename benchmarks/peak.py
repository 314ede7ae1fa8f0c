"""This machine's fp32 matmul peak, measured with XLA (jax) and with torch in the same run.

The peak MFU is measured against is the best GFLOP/s either library reaches on large
square fp32 matmuls: what the cores demonstrably deliver, not a datasheet number.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import _common

SIZES = (2048, 4096)


def _best_gflops(matmul, operands) -> dict:
    """Best of three calls per size; returns the best GFLOP/s over the sizes."""
    best = 0.0
    for n, (a, b) in operands.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            matmul(a, b)
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / min(times) / 1e9)
    return {"seconds": 0.0, "gflops": best}


def _operands(sizes, convert):
    rng = np.random.default_rng(0)
    return {n: tuple(convert(rng.standard_normal((n, n), np.float32)) for _ in "ab") for n in sizes}


def setup_jax(sizes=SIZES):
    import jax
    import jax.numpy as jnp

    operands = _operands(sizes, jnp.asarray)
    jitted = jax.jit(jnp.matmul)
    matmul = lambda a, b: jitted(a, b).block_until_ready()
    for a, b in operands.values():
        matmul(a, b)  # compile
    return {"version": jax.__version__}, lambda: _best_gflops(matmul, operands)


def setup_torch(sizes=SIZES):
    import torch

    threads = _common.torch_threads()
    operands = _operands(sizes, torch.from_numpy)
    return (
        {"version": torch.__version__, "threads": threads},
        lambda: _best_gflops(torch.matmul, operands),
    )


def measure(repetitions: int) -> dict:
    """{'peak_gflops', 'jax_gflops', 'torch_gflops', 'markdown'}: medians per library over
    alternating repetitions; the peak is the best single repetition of either."""
    with (
        _common.Worker("peak", "jax", {}, _common.CPU_ENV) as jax_side,
        _common.Worker("peak", "torch", {}, _common.CPU_ENV) as torch_side,
    ):
        jax_runs, torch_runs = _common.alternate([jax_side, torch_side], repetitions)
    peak = max(r["gflops"] for r in jax_runs + torch_runs)
    rows = [
        ("XLA (jax.jit(jnp.matmul))", f"{_common.median(jax_runs, 'gflops'):.1f}",
         _common.spread(jax_runs, "gflops")),
        ("torch.matmul", f"{_common.median(torch_runs, 'gflops'):.1f}",
         _common.spread(torch_runs, "gflops")),
    ]  # fmt: skip
    markdown = (
        f"fp32 square matmuls of size {' and '.join(map(str, SIZES))}, best of 3 calls per "
        f"size, {repetitions} alternating repetitions per library.\n\n"
        + _common.table(("library", "median GFLOP/s", "range"), rows)
        + f"\n\n**Machine peak used for MFU: {peak:.1f} GFLOP/s** (the best repetition of "
        "either library).\n"
    )
    return {
        "peak_gflops": peak,
        "jax_gflops": _common.median(jax_runs, "gflops"),
        "torch_gflops": _common.median(torch_runs, "gflops"),
        "markdown": markdown,
    }
