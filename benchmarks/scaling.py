"""flan_jax train-step time against sequence length and model size, plotted to a PNG.

Each point is its own worker process (one compile each); targets are a quarter of the
inputs, as in the paper's 2048/512.
"""

from __future__ import annotations

import os

from benchmarks import _common

BATCH_SIZE = 2
LENGTHS = (256, 512, 1024, 2048)  # inputs; targets = inputs / 4, T5 v1.1 small
SIZES = ("tiny", "small", "base")  # at 512 / 128
QUICK_LENGTHS, QUICK_SIZES = (256, 512), ("tiny", "small")
HEADER = ("size", "inputs / targets", "median step s", "range s", "tokens/s", "MFU", "compile s")
PLOT = os.path.join(_common.REPO_ROOT, "benchmarks", "scaling.png")


def setup_flan_jax(size, batch_size, inputs_length, targets_length):
    from benchmarks import _flan_jax

    config = _flan_jax.t5_config(size)
    batch = _common.synthetic_batch(batch_size, inputs_length, targets_length, config.vocab_size)
    info, run, _ = _flan_jax.train_step_runner(config, batch)
    return info, run


def step_time(
    size: str, batch_size: int, inputs_length: int, targets_length: int, repetitions: int
):
    """(median seconds, range, worker info) of one flan_jax train step."""
    args = dict(size=size, batch_size=batch_size, inputs_length=inputs_length,
                targets_length=targets_length)  # fmt: skip
    with _common.Worker("scaling", "flan_jax", args, _common.CPU_ENV) as worker:
        (runs,) = _common.alternate([worker], repetitions)
        return _common.median(runs), _common.spread(runs), worker.info


def _plot(by_length, by_size):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([p["inputs"] for p in by_length], [p["seconds"] for p in by_length], "o-")
    left.set(xscale="log", xlabel="input length (targets = input / 4)",
             ylabel="train step s", title=f"T5 v1.1 small, batch {BATCH_SIZE}")  # fmt: skip
    left.set_xticks([p["inputs"] for p in by_length], [str(p["inputs"]) for p in by_length])
    left.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    right.bar([p["size"] for p in by_size], [p["seconds"] for p in by_size])
    right.set(xlabel="T5 v1.1 size", ylabel="train step s",
              title=f"512 / 128, batch {BATCH_SIZE}")  # fmt: skip
    fig.suptitle("flan_jax train step on CPU, fp32")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def measure(repetitions: int, peak_gflops: float, quick: bool = False) -> dict:
    lengths, sizes = (QUICK_LENGTHS, QUICK_SIZES) if quick else (LENGTHS, SIZES)
    points = {}

    def point(size, inputs):
        key = (size, inputs)
        if key in points:
            return points[key]
        try:
            seconds, spread, info = step_time(size, BATCH_SIZE, inputs, inputs // 4, repetitions)
        except _common.WorkerError as error:  # e.g. killed for memory (-9): a row that says so
            points[key] = {"size": size, "inputs": inputs, "failed": str(error).splitlines()[0]}
        else:
            points[key] = {"size": size, "inputs": inputs, "seconds": seconds, "range": spread,
                           "compile_s": info["compile_and_first_step_s"],
                           "mfu": info["step_flops"] / seconds / (peak_gflops * 1e9)}  # fmt: skip
        return points[key]

    measured = lambda ps: [p for p in ps if "failed" not in p]  # noqa: E731
    by_length = measured([point("small", n) for n in lengths])
    by_size = measured([point(size, 512) for size in sizes])
    _plot(by_length, by_size)
    rows = [
        (p["size"], f"{p['inputs']} / {p['inputs'] // 4}", f"{p['seconds']:.3f}", p["range"],
         f"{BATCH_SIZE * p['inputs'] * 5 / 4 / p['seconds']:.0f}", f"{100 * p['mfu']:.1f}%",
         f"{p['compile_s']:.0f}")
        if "failed" not in p
        else (p["size"], f"{p['inputs']} / {p['inputs'] // 4}", f"**{p['failed']}**", "", "", "",
              "")
        for p in points.values()
    ]  # fmt: skip
    markdown = f"""flan_jax train step (fp32, batch {BATCH_SIZE}, Adafactor), T5 v1.1 sizes from
`gin/models/t5_1_1/*.gin` with the 32128 vocabulary; each point in its own process, median of
{repetitions}. Plot: `benchmarks/scaling.png`.

{_common.table(HEADER, rows)}

![step time against length and size](benchmarks/scaling.png)
"""
    return {"points": list(points.values()), "markdown": markdown}
