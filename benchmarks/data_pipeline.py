"""The input pipeline: a mixture through seqio with packing, the way `flan_jax.train` reads it
(`flan_jax.data.train_dataset`, first-fit packing), beside seqio's own packer on the same
stream, against what the trainer consumes at T5-base."""

from __future__ import annotations

import importlib
import time

import numpy as np

from benchmarks import _common, scaling

LENGTHS = {"inputs": 2048, "targets": 512}
BATCH_SIZE = 8
BATCHES_PER_RUN = 16
TARGET_EFFICIENCY = 0.95
# What the trainer's consumption is measured at: T5-small, batch 1, the paper's lengths.
# (T5-base's step at 2048/512 needs about 16 GiB of this machine's 24 GiB; under the one-arena
# malloc the entry points set before 2026-12-03 it outgrew them.) A
# smaller consumer eats rows faster, so the headroom it gives is the conservative one.
CONSUMER = {"size": "small", "batch_size": 1}
QUICK_CONSUMER = {"size": "tiny", "batch_size": 1}


PACKERS = ("flan_jax", "seqio")


def setup_pipeline(mixture, lengths, packer):
    """mixture is "module:name": the module registers it. packer "seqio" swaps in seqio's
    `EncDecFeatureConverter(pack=True)`. Pulls one batch before timing (vocabulary loading,
    graph building, first shuffle-buffer fill)."""
    import seqio

    from flan_jax import data, packing
    from flan_jax.models.base import EncoderDecoderModel
    from flan_jax.models.t5 import T5Config

    module, name = mixture.split(":")
    importlib.import_module(module)
    start = time.perf_counter()
    converter = seqio.EncDecFeatureConverter(pack=True) if packer == "seqio" else None
    dataset = data.train_dataset(
        name, lengths, EncoderDecoderModel(T5Config()), global_batch_size=BATCH_SIZE, seed=0,
        converter=converter,
    )  # fmt: skip
    batches = dataset.as_numpy_iterator()
    next(batches)
    info = {"first_batch_s": time.perf_counter() - start, "open_rows": packing.OPEN_ROWS}

    def run():
        counts = {"examples": 0, "input_tokens": 0, "target_tokens": 0}
        start = time.perf_counter()
        for _ in range(BATCHES_PER_RUN):
            batch = next(batches)
            # Packed segments are numbered 1..k in each row: the row's maximum is k.
            counts["examples"] += int(batch["encoder_segment_ids"].max(axis=1).sum())
            counts["input_tokens"] += int(np.count_nonzero(batch["encoder_input_tokens"]))
            counts["target_tokens"] += int(np.count_nonzero(batch["decoder_target_tokens"]))
        return {"seconds": time.perf_counter() - start, **counts}

    return info, run


def matched_lengths(measured: dict) -> dict:
    """Input length 2048 and the target length that matches the mixture's measured ratio of
    target to input tokens (rounded up to a multiple of 8), so both sides fill together."""
    targets = LENGTHS["inputs"] * measured["target_to_input_tokens"]
    return {"inputs": LENGTHS["inputs"], "targets": int(8 * np.ceil(targets / 8))}


def _pipeline_row(mixture: str, lengths: dict, packer: str, repetitions: int) -> dict:
    args = {"mixture": mixture, "lengths": lengths, "packer": packer}
    with _common.Worker("data_pipeline", "pipeline", args, _common.CPU_ENV) as worker:
        (runs,) = _common.alternate([worker], repetitions)
        open_rows = worker.info["open_rows"]
    seconds = _common.median(runs)
    rows = BATCH_SIZE * BATCHES_PER_RUN
    per_run = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
    return {
        "mixture": mixture,
        "packer": packer,
        "open_rows": open_rows,
        "lengths": f"{lengths['inputs']}/{lengths['targets']}",
        "rows_per_s": rows / seconds,
        "examples_per_s": per_run["examples"] / seconds,
        "tokens_per_s": (per_run["input_tokens"] + per_run["target_tokens"]) / seconds,
        "input_efficiency": per_run["input_tokens"] / (rows * lengths["inputs"]),
        "target_efficiency": per_run["target_tokens"] / (rows * lengths["targets"]),
        "efficiency": (per_run["input_tokens"] + per_run["target_tokens"])
        / (rows * sum(lengths.values())),
        "target_to_input_tokens": per_run["target_tokens"] / per_run["input_tokens"],
        "examples_per_row": per_run["examples"] / rows,
    }


def measure(mixtures, repetitions: int, quick: bool = False) -> dict:
    """mixtures: "module:name" strings; one that cannot be built is reported, not fatal."""
    measured, failed = [], []
    for mixture in mixtures:
        try:
            paper = _pipeline_row(mixture, LENGTHS, "flan_jax", repetitions)
        except _common.WorkerError as error:
            failed.append((mixture, str(error).strip().splitlines()[-1]))
            continue
        matched = matched_lengths(paper)
        measured += [paper, _pipeline_row(mixture, LENGTHS, "seqio", repetitions)]
        measured += [_pipeline_row(mixture, matched, packer, repetitions) for packer in PACKERS]

    consumer = QUICK_CONSUMER if quick else CONSUMER
    seconds, _, _ = scaling.step_time(
        consumer["size"], consumer["batch_size"], LENGTHS["inputs"], LENGTHS["targets"], repetitions
    )
    consumed_rows = consumer["batch_size"] / seconds
    rows = [
        (m["mixture"], m["lengths"], m["packer"], f"{m['rows_per_s']:.1f}",
         f"{m['examples_per_s']:.0f}", f"{m['tokens_per_s']:.0f}", f"{m['examples_per_row']:.1f}",
         f"{100 * m['input_efficiency']:.1f}% / {100 * m['target_efficiency']:.1f}%",
         f"**{100 * m['efficiency']:.2f}%** "
         f"({_common.verdict(m['efficiency'], TARGET_EFFICIENCY)})",
         f"{m['rows_per_s'] / consumed_rows:.0f}x")
        for m in measured
    ]  # fmt: skip
    header = ("mixture", "lengths", "packer", "rows/s", "examples/s", "tokens/s", "examples/row",
              "efficiency inputs / targets", "efficiency", "headroom")  # fmt: skip
    lengths = f"{LENGTHS['inputs']}/{LENGTHS['targets']}"
    markdown = f"""`flan_jax.data.train_dataset` (seqio, shuffled, repeated, packed at {lengths}),
batches of {BATCH_SIZE} rows; a repetition pulls {BATCHES_PER_RUN} batches in one process that
does nothing else. Packer "flan_jax" is what training uses: `flan_jax.packing`, first-fit
into up to {measured[0]["open_rows"] if measured else "?"} open rows, closing the one nearest to
full (by its fullest side) when an example fits none. Packer "seqio" is seqio's
`EncDecFeatureConverter(pack=True)` on the same stream: TF ops that keep one open row and
close it at the first example that does not fit, and close the last row of every window of
128 examples (seqio's first-fit custom ops need tensor2tensor, not installable here). Tokens
are non-padding positions of inputs and targets; packing efficiency is the non-padding
fraction (inputs / targets, and both together).

The trainer consumes, at T5 v1.1 {consumer["size"]} (fp32, this CPU, batch
{consumer["batch_size"]} x {lengths}, measured: median step {seconds:.2f} s of {repetitions}),
{consumed_rows:.3f} packed rows/s, i.e. {consumed_rows * sum(LENGTHS.values()):.0f} positions/s;
"headroom" is rows produced / rows consumed.

`benchmarks.flan_fixtures:flan_fixtures` is the Flan collection as far as it can be read
here: the NIV2 and CoT tasks (proportions B of those two families) over the repo's fixture
files in the real formats, with the real templates and few-shot budget, tokenized with the demo
vocabulary; Muffin, T0-SF (TFDS) and T5's vocabulary (gs://) cannot be fetched here.

Each mixture's last two rows pack at 2048 inputs and the target length matched to its measured
ratio of target to input tokens (`matched_lengths`): with 2048/512 the side whose data runs
out of room first (targets, when a mixture has more than 1 target token per 4 input tokens)
closes each row while the other is still partly empty, so those rows separate what the
lengths cost from what the packer costs.

{_common.table(header, rows)}
"""
    for mixture, reason in failed:
        markdown += f"\n- `{mixture}` could not be measured: {reason}\n"
    return {"mixtures": measured, "failed": failed, "consumed_rows_per_s": consumed_rows,
            "markdown": markdown}  # fmt: skip
