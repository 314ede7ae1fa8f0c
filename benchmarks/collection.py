"""The Flan 2022 collection at scale (issue #16): the Beam cache, Grain over the cache
(`flan_jax.input_pipeline`) and today's seqio streaming (`flan_jax.data.train_dataset`)
side by side, on the synthetic collection (`benchmarks.synthetic_collection`) in the released
layout, at 2048/512, batch 64, the demo vocabulary.

The collection is written once into ~/.cache/flan_jax_bench/ (keyed by its size and seed)
and reused. The cache the Grain side reads is written there too, once, by `write_cache`:
the examples the Beam command writes (each task's rows in file order, tokenized, trimmed
with EOS, same fingerprint), written directly because the Beam command itself does not
finish the whole collection in this section's time; the Beam command is timed separately
on its own fresh cache, capped.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import _common, synthetic_collection

LENGTHS = {"inputs": 2048, "targets": 512}
BATCH_SIZE = 64
MIXTURE = "flan2022_released"
FIXTURES = "flan_fixtures"
ROWS, QUICK_ROWS = 2_000_000, 20_000
BENCH_DIR = os.path.join(os.path.expanduser("~"), ".cache", "flan_jax_bench")
RESUME_STEP = 30_000
BEAM_WORKERS = 2
# Task writers open at once while writing the Grain side's cache.
OPEN_WRITERS = 256
# The Beam command is stopped when its processes hold more than this (the machine's share).
BEAM_MEMORY_CAP_GIB = 6.0
# Caps: the Beam command's run, and today's path building the released mixture.
BEAM_CAP_S, QUICK_BEAM_CAP_S = 240, 120
STREAM_CAP_S, QUICK_STREAM_CAP_S = 150, 90
# Batches timed: enough for several flushes of the packer's bins (256 rows = 4 batches).
TIMED_BATCHES, QUICK_TIMED_BATCHES = 24, 12
# Targets (issue #16).
TARGET_FIRST_BATCH_S = 30.0
TARGET_RESUME_S = 10.0
TARGET_PEAK_GIB = 4.0
TARGET_EFFICIENCY = 0.8438  # today's packer on the fixture mixture
TARGET_HEADROOM = 3.0
# One TPU v4 host: 4 chips at 275 TFLOP/s bf16 peak, at PaLM's reported MFU.
V4_CHIPS, ASSUMED_MFU = 4, 0.462
MODEL_NAMES = {"base": "T5-base", "xl": "T5-XL"}


def _env(released_dir: str | None = None) -> dict:
    """The workers' environment: CPU only, the demo vocabulary as Flan's, the collection."""
    from tasks import demo, vocab

    env = {**_common.CPU_ENV, vocab.FLAN_VOCAB_ENV: demo.vocabulary().sentencepiece_model_file}
    if released_dir:
        env["FLAN_JAX_RELEASED_DIR"] = released_dir
    return env


def _import_mixture(name: str) -> None:
    if name == FIXTURES:
        import benchmarks.flan_fixtures  # noqa: F401
    else:
        import tasks.flan.released  # noqa: F401


def _model():
    from flan_jax.models.base import EncoderDecoderModel
    from flan_jax.models.t5 import T5Config

    return EncoderDecoderModel(T5Config())


# ---- the data on disk, written once -----------------------------------------------------------


def _once(directory: str, build) -> str:
    """`directory`, built by `build(aside)` the first time, then renamed: complete or absent."""
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building it: wait, then reuse it
        if not os.path.isdir(directory):
            aside = tempfile.mkdtemp(dir=os.path.dirname(directory), prefix=".partial-")
            build(aside)
            os.rename(aside, directory)
    return directory


def collection_dir(rows: int, seed: int = 0) -> str:
    return _once(
        os.path.join(BENCH_DIR, f"collection-rows{rows}-seed{seed}"),
        lambda d: synthetic_collection.write(d, rows, seed),
    )


def write_cache(released_dir: str, cache_dir: str, mixture: str = MIXTURE, lengths=LENGTHS) -> dict:
    """Caches every task of a released mixture: rows in file order, tokenized with the task's
    vocabulary, trimmed to `lengths` with EOS (seqio's `tokenize` + `append_eos_after_trim`),
    with the task's fingerprint. Returns rows per task.

    An ArrayRecord writer holds megabytes until closed, so at most OPEN_WRITERS tasks are
    written at once: one pass over a submix's shards per group of tasks, each row read and
    tokenized in the pass of its group."""
    import pyarrow.parquet as pq
    import seqio

    from flan_jax import task_cache
    from tasks.flan import released

    os.environ[released.DIR_ENV] = released_dir
    tasks = {t.name: t for t in seqio.get_subtasks(seqio.get_mixture_or_task(mixture))}
    features = next(iter(tasks.values())).output_features
    counts = {}
    indexes = {id(task.source.index): task.source.index for task in tasks.values()}
    for index in indexes.values():
        ids = {name: i for i, name in enumerate(index.names.values())}
        row_ids = []  # per shard, each row's task number
        for path in index.files:
            table = pq.read_table(path, columns=["task_name", "template_type"])
            keys = zip(table["task_name"].to_pylist(), table["template_type"].to_pylist())
            row_ids.append(np.array([ids[index.names[key]] for key in keys]))
        mine = []
        for name in index.names.values():
            spec = task_cache.read_spec(cache_dir, name) if name in tasks else None
            if spec is not None:  # written by an earlier, stopped run
                counts[name] = spec["num_examples"]
            elif name in tasks:
                mine.append(ids[name])
        for group in np.array_split(mine, -(-len(mine) // OPEN_WRITERS) or 1):
            counts.update(_write_group(index, row_ids, group, tasks, features, cache_dir, lengths))
    return counts


def _write_group(index, row_ids, group, tasks, features, cache_dir, lengths) -> dict:
    import pyarrow.parquet as pq

    from flan_jax import task_cache

    names = list(index.names.values())
    writers = {names[i]: task_cache.TaskWriter(cache_dir, names[i], "train", 1) for i in group}
    untrimmed = {name: {f: [] for f in lengths} for name in writers}
    for path, shard_ids in zip(index.files, row_ids):
        rows = np.flatnonzero(np.isin(shard_ids, group))
        if not len(rows):
            continue
        table = pq.read_table(path, columns=list(lengths)).take(rows)
        encoded = {
            f: features[f].vocabulary.tokenizer.EncodeAsIds(table[f].to_pylist()) for f in lengths
        }
        for position, row in enumerate(rows):
            name, example = names[shard_ids[row]], {}
            for f, length in lengths.items():
                ids, eos = encoded[f][position], features[f].add_eos
                untrimmed[name][f].append(len(ids) + eos)
                ids = ids[: length - eos] + [features[f].vocabulary.eos_id] * eos
                example[f] = np.asarray(ids, np.int32)
            writers[name].write(example)
    for name, writer in writers.items():
        stats = task_cache.length_stats(untrimmed[name], lengths)
        writer.commit(task_cache.fingerprint(tasks[name], lengths), stats)
    return {name: writer.num_examples for name, writer in writers.items()}


def grain_cache_dir(released_dir: str) -> str:
    """The Grain side's cache of the collection. Written in place, task by task (each task
    commits whole), so a run stopped half way leaves its tasks for the next; counts.json,
    written last, marks it complete."""
    name = os.path.basename(released_dir) + "-cache-{inputs}x{targets}".format(**LENGTHS)
    directory = os.path.join(BENCH_DIR, name)
    os.makedirs(directory, exist_ok=True)
    done = os.path.join(directory, "counts.json")
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run writing it: wait, then reuse it
        if not os.path.exists(done):
            counts = write_cache(released_dir, directory)
            with open(done + ".tmp", "w") as f:
                json.dump(counts, f)
            os.rename(done + ".tmp", done)
    return directory


def fixtures_cache_dir() -> str:
    """The fixture mixture cached by the cache command's own per-task writer, in a directory
    named by the tasks' cache fingerprints: a change of rendering or tokenization builds a
    new one instead of meeting the old one's refusal."""
    import seqio

    from flan_jax import cache_tasks, task_cache

    _import_mixture(FIXTURES)
    tasks = seqio.get_subtasks(seqio.get_mixture_or_task(FIXTURES))
    prints = json.dumps([task_cache.fingerprint(t, LENGTHS) for t in tasks], sort_keys=True)
    key = hashlib.sha256(prints.encode()).hexdigest()[:12]

    def build(directory):
        for task in tasks:
            raw = task.source.get_dataset(split="train", shuffle=False)
            cache_tasks.write_task(task, raw, cache_dir=directory, task_feature_lengths=LENGTHS)

    name = "flan_fixtures-cache-{inputs}x{targets}".format(**LENGTHS) + f"-{key}"
    return _once(os.path.join(BENCH_DIR, name), build)


# ---- worker sides -----------------------------------------------------------------------------


class _Timeout(Exception):
    pass


def _within(seconds: float, fn):
    """fn() or None when it takes longer than `seconds` (SIGALRM in the worker's main thread)."""

    def alarm(*_):
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(seconds))
    try:
        return fn()
    except _Timeout:
        return None
    finally:
        signal.alarm(0)


def _counts(batch) -> dict:
    return {
        "examples": int(batch["encoder_segment_ids"].max(axis=1).sum()),
        "tokens": int(np.count_nonzero(batch["encoder_input_tokens"]))
        + int(np.count_nonzero(batch["decoder_target_tokens"])),
    }


def _timed_batches(batches, n: int):
    def run():
        totals = {"examples": 0, "tokens": 0}
        start = time.perf_counter()
        for _ in range(n):
            for key, value in _counts(next(batches)).items():
                totals[key] += value
        return {"seconds": time.perf_counter() - start, "batches": n, **totals}

    return run


def setup_stream(mixture: str, cap_s: float, batches: int):
    """Today's path: seqio streaming, uncached. info: seconds to the first batch (None past
    cap_s); each run pulls `batches` batches (what a replaying resume skips per step)."""
    from flan_jax import data

    start = time.perf_counter()

    def first():
        _import_mixture(mixture)
        dataset = data.train_dataset(
            mixture, LENGTHS, _model(), global_batch_size=BATCH_SIZE, seed=0
        ).as_numpy_iterator()
        next(dataset)
        return dataset

    dataset = _within(cap_s, first)
    info = {"first_batch_s": None if dataset is None else time.perf_counter() - start}
    if dataset is None:
        return info, lambda: {"seconds": float("nan")}
    return info, _timed_batches(dataset, batches)


def _train_input(mixture: str, cache_dir: str):
    from flan_jax import input_pipeline

    _import_mixture(mixture)
    return input_pipeline.train_input(
        mixture, LENGTHS, _model(), cache_dir=cache_dir, global_batch_size=BATCH_SIZE, seed=0
    )


def setup_cached(mixture: str, cache_dir: str, batches: int):
    """The cached path (Grain). info: seconds to the first batch, the state after it."""
    start = time.perf_counter()
    inputs = _train_input(mixture, cache_dir)
    first = next(inputs)
    info = {
        "first_batch_s": time.perf_counter() - start,
        "state": inputs.get_state(),
        "examples_per_batch": _counts(first)["examples"],
    }
    return info, _timed_batches(inputs, batches)


def setup_resume(mixture: str, cache_dir: str, state: dict):
    """A restarted run: builds the pipeline, restores `state`, takes its first batch."""
    start = time.perf_counter()
    inputs = _train_input(mixture, cache_dir)
    built = time.perf_counter()
    inputs.set_state(state)
    next(inputs)
    end = time.perf_counter()
    return {"resume_s": end - start, "build_s": built - start}, lambda: {"seconds": 0.0}


def at_step(state: dict, examples_per_batch: float, step: int) -> dict:
    """The state after one batch with the example stream's position moved to where `step`
    batches of `examples_per_batch` examples leave it (the packer's open rows as after one)."""
    moved = json.loads(json.dumps(state))
    position = int(round(step * examples_per_batch))

    def move(node):
        if isinstance(node, dict):
            if "next_index" in node:
                node["next_index"] = position
                return True
            return any(move(value) for value in node.values())
        return False

    if not move(moved["grain"]):
        raise ValueError(f"no stream position (next_index) in the input state {state['grain']}")
    return moved


# ---- driver -----------------------------------------------------------------------------------


def _side(side: str, args: dict, env: dict, repetitions: int = 1):
    """(info, runs, peak GiB) of one side in its own worker process."""
    with _common.Worker("collection", side, args, env) as worker:
        runs = [worker.run() for _ in range(repetitions)] if repetitions else []
        return worker.info, runs, worker.peak_memory_gib()


def beam_throughput(released_dir: str, cap_s: float) -> dict:
    """The cache command as a user runs it (DirectRunner, 2 worker processes) into a fresh
    cache, stopped at cap_s: tasks and rows committed, wall time."""
    cache_dir = tempfile.mkdtemp(prefix="flan_jax_bench_beam-")
    run_file = os.path.join(cache_dir, "run.gin")
    with open(run_file, "w") as f:
        f.write("include 'runs/flan_t5/base.gin'\ninclude 'mixtures/flan2022_released.gin'\n")
    command = [
        sys.executable, "-m", "flan_jax.cache_tasks", f"--gin_file={run_file}",
        f"--gin.CACHE_DIR='{cache_dir}/cache'", f"--direct_num_workers={BEAM_WORKERS}",
        "--direct_running_mode=multi_processing",
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=_common.REPO_ROOT, env={**os.environ, **_env(released_dir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    peak_gib, stopped = 0.0, None
    while process.poll() is None:
        peak_gib = max(peak_gib, _group_rss_gib(process.pid))
        if peak_gib > BEAM_MEMORY_CAP_GIB or time.perf_counter() - start > cap_s:
            stopped = "memory" if peak_gib > BEAM_MEMORY_CAP_GIB else "time"
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        time.sleep(1)
    finished = process.returncode == 0
    seconds = time.perf_counter() - start
    specs = glob.glob(os.path.join(cache_dir, "cache", "*", "spec.json"))
    rows = sum(json.load(open(p))["num_examples"] for p in specs)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"finished": finished, "seconds": seconds, "tasks": len(specs), "rows": rows,
            "peak_gib": peak_gib, "stopped": stopped}  # fmt: skip


def _group_rss_gib(group: int) -> float:
    """Resident memory of every process in a process group, in GiB."""
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # after the name: state, ppid, pgrp, ...; rss in pages
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**30


def _v4_consumption(batch_tokens_config) -> float:
    from flan_jax import flops

    per_batch = BATCH_SIZE * flops.train_flops_per_sequence(batch_tokens_config, LENGTHS)
    return V4_CHIPS * flops.PEAK_FLOPS_PER_DEVICE["TPU v4"] * ASSUMED_MFU / per_batch


def measure(quick: bool = False) -> dict:
    from benchmarks import _flan_jax

    rows = QUICK_ROWS if quick else ROWS
    beam_cap = QUICK_BEAM_CAP_S if quick else BEAM_CAP_S
    stream_cap = QUICK_STREAM_CAP_S if quick else STREAM_CAP_S
    batches = QUICK_TIMED_BATCHES if quick else TIMED_BATCHES
    released_dir = collection_dir(rows)
    env = _env(released_dir)
    r = {"rows": rows, "beam": beam_throughput(released_dir, beam_cap)}
    stream_info, _, stream_peak = _side(
        "stream", {"mixture": MIXTURE, "cap_s": stream_cap, "batches": batches}, env, 0
    )
    os.environ.update(env)  # write_cache registers the tasks in this process
    cache_dir = grain_cache_dir(released_dir)
    with open(os.path.join(cache_dir, "counts.json")) as f:
        counts = json.load(f)
    r.update(tasks=len(counts), mixture_rows=sum(counts.values()))
    written = sum(
        len(glob.glob(os.path.join(released_dir, s, "data", "*.parquet")))
        for s in synthetic_collection.SUBMIXES
    )
    r["shards"] = written

    cached_info, cached_runs, cached_peak = _side(
        "cached", {"mixture": MIXTURE, "cache_dir": cache_dir, "batches": batches}, env
    )
    state = at_step(cached_info["state"], cached_info["examples_per_batch"], RESUME_STEP)
    resume_info, _, _ = _side(
        "resume", {"mixture": MIXTURE, "cache_dir": cache_dir, "state": state}, env, 0
    )
    r.update(cached=cached_info, cached_peak=cached_peak, stream=stream_info,
             stream_peak=stream_peak, resume_s=resume_info["resume_s"],
             resume_build_s=resume_info["build_s"])  # fmt: skip
    r["cached_batches_per_s"] = batches / cached_runs[0]["seconds"]

    fixtures = fixtures_cache_dir()
    fixtures_env = _env()
    _, fixture_cached, _ = _side(
        "cached", {"mixture": FIXTURES, "cache_dir": fixtures, "batches": batches}, fixtures_env
    )
    _, fixture_stream, _ = _side(
        "stream", {"mixture": FIXTURES, "cap_s": stream_cap, "batches": batches}, fixtures_env
    )
    positions = BATCH_SIZE * sum(LENGTHS.values())
    r["efficiency"] = {
        "grain": fixture_cached[0]["tokens"] / (batches * positions),
        "today": fixture_stream[0]["tokens"] / (batches * positions),
    }
    r["skip_s"] = fixture_stream[0]["seconds"] / batches
    r["consumption"] = {size: _v4_consumption(_flan_jax.t5_config(size)) for size in ("base", "xl")}
    r["markdown"] = _markdown(r, beam_cap, stream_cap, batches)
    return r


def _seconds(value, cap) -> str:
    return f"> {cap:.0f} s (stopped)" if value is None else f"{value:.1f} s"


def summary_rows(r: dict) -> list[tuple]:
    """(figure, measured, target, verdict) rows for the BENCHMARKS.md summary."""
    beam, rows = r["beam"], []
    per_worker = beam["rows"] / beam["seconds"] / BEAM_WORKERS
    rows.append(("cache throughput (Beam, DirectRunner, 2 workers), rows/s per worker",
                 f"{per_worker:.0f}", "-", "-"))  # fmt: skip
    first = r["cached"]["first_batch_s"]
    rows.append(("time to first batch, cached (Grain)", f"{first:.1f} s", "<= 30 s",
                 _common.verdict(TARGET_FIRST_BATCH_S, first)))  # fmt: skip
    rows.append(("resume at step 30,000: wait for the first batch, cached",
                 f"{r['resume_s']:.1f} s", "<= 10 s",
                 _common.verdict(TARGET_RESUME_S, r["resume_s"])))  # fmt: skip
    rows.append(("peak RSS of the training input, cached", f"{r['cached_peak']:.2f} GiB",
                 "<= 4 GiB", _common.verdict(TARGET_PEAK_GIB, r["cached_peak"])))  # fmt: skip
    grain = r["efficiency"]["grain"]
    rows.append(("packing efficiency at 2048/512 on flan_fixtures, Grain", f"{100 * grain:.2f}%",
                 ">= 84.38%", _common.verdict(grain, TARGET_EFFICIENCY)))  # fmt: skip
    for size, consumed in r["consumption"].items():
        ratio = r["cached_batches_per_s"] / consumed
        rows.append((f"cached batches/s against {MODEL_NAMES[size]} on a v4 host",
                     f"{ratio:.1f}x", ">= 3x",
                     _common.verdict(ratio, TARGET_HEADROOM)))  # fmt: skip
    return rows


def _markdown(r: dict, beam_cap: float, stream_cap: float, batches: int) -> str:
    beam = r["beam"]
    per_worker = beam["rows"] / beam["seconds"] / BEAM_WORKERS
    if beam["finished"]:
        whole = f"{beam['seconds']:.0f} s"
    else:
        estimate = beam["seconds"] * r["tasks"] / beam["tasks"] if beam["tasks"] else None
        reason = (
            f"over {BEAM_MEMORY_CAP_GIB:.0f} GiB of RSS"
            if beam["stopped"] == "memory"
            else f"at {beam_cap:.0f} s"
        )
        whole = (
            f"> {beam['seconds']:.0f} s (stopped {reason}; {beam['tasks']} of {r['tasks']} "
            "tasks committed"
            + (f", about {estimate / 3600:.1f} h extrapolated by tasks)" if estimate else ")")
        )
    stream_first = r["stream"]["first_batch_s"]
    today_resume = r["skip_s"] * RESUME_STEP
    lengths = "{inputs}/{targets}".format(**LENGTHS)
    header = ("figure", "cached (Beam cache + Grain)", "today (seqio streaming)", "target", "")
    first = r["cached"]["first_batch_s"]
    grain_eff, today_eff = r["efficiency"]["grain"], r["efficiency"]["today"]
    table_rows = [
        ("cache: rows/s per worker", f"{per_worker:.0f}", "-", "-", "-"),
        ("cache: wall time, whole collection", whole, "-", "-", "-"),
        ("time to the first batch", f"{first:.1f} s", _seconds(stream_first, stream_cap),
         "<= 30 s", _common.verdict(TARGET_FIRST_BATCH_S, first)),
        (f"resume at step {RESUME_STEP:,}: wait for the first batch",
         f"{r['resume_s']:.1f} s (building the pipeline: {r['resume_build_s']:.1f} s)",
         f"~{today_resume / 3600:.1f} h (extrapolated: {1e3 * r['skip_s']:.0f} ms a skipped batch "
         f"x {RESUME_STEP:,}, on {FIXTURES})", "<= 10 s",
         _common.verdict(TARGET_RESUME_S, r["resume_s"])),
        ("peak RSS of the training-input process", f"{r['cached_peak']:.2f} GiB",
         f"{r['stream_peak']:.2f} GiB" + (" (at the stop)" if stream_first is None else ""),
         "<= 4 GiB", _common.verdict(TARGET_PEAK_GIB, r["cached_peak"])),
        (f"packing efficiency at {lengths}, {FIXTURES}", f"{100 * grain_eff:.2f}%",
         f"{100 * today_eff:.2f}%", ">= 84.38%", _common.verdict(grain_eff, TARGET_EFFICIENCY)),
    ]  # fmt: skip
    for size, consumed in r["consumption"].items():
        ratio = r["cached_batches_per_s"] / consumed
        table_rows.append((
            f"batches/s against {MODEL_NAMES[size]}'s consumption on a v4 host "
            f"({consumed:.2f} batches/s)",
            f"{r['cached_batches_per_s']:.2f} ({ratio:.1f}x)", "-", ">= 3x",
            _common.verdict(ratio, TARGET_HEADROOM),
        ))  # fmt: skip
    return f"""The synthetic collection (`benchmarks/synthetic_collection.py`): {r["rows"]:,}
rows in {r["shards"]} parquet shards in the released layout, 1,836 task names over the five
submixes, Zipf task sizes, zero- and few-shot input lengths as released; mixture `{MIXTURE}` (FLAN's
weights): {r["tasks"]:,} seqio tasks, {r["mixture_rows"]:,} rows. {lengths}, batch
{BATCH_SIZE}, the demo vocabulary (T5's lives on gs://), CPU. Each side runs in its own
process.

- Cache: `python -m flan_jax.cache_tasks` with `runs/flan_t5/base.gin` and
  `mixtures/flan2022_released.gin`, `--direct_num_workers={BEAM_WORKERS}
  --direct_running_mode=multi_processing`, into a fresh cache, stopped after {beam_cap:.0f} s
  if not done or when its processes hold over {BEAM_MEMORY_CAP_GIB:.0f} GiB:
  {beam["tasks"]:,} tasks ({beam["rows"]:,} rows) committed in {beam["seconds"]:.0f} s, peak
  RSS of its processes {beam["peak_gib"]:.1f} GiB. The cache Grain reads below is written once
  by the benchmark (`collection.write_cache`: the same examples and fingerprints).
- Cached side: `flan_jax.input_pipeline.train_input` (Grain, first-fit packing, in the
  training process); today's side: `flan_jax.data.train_dataset` over the same mixture,
  uncached, stopped after {stream_cap:.0f} s without a first batch.
- Resume: a fresh process builds the pipeline, restores the state saved after one batch with
  its stream position moved to step {RESUME_STEP:,}'s ({RESUME_STEP:,} x
  {r["cached"]["examples_per_batch"]} examples), and takes the first batch. Today's path
  replays: its per-batch cost is measured on `{FIXTURES}` ({batches} batches after the
  first).
- Packing: {batches} batches of {BATCH_SIZE} on `{FIXTURES}` (its tasks cached by
  `cache_tasks.write_task`); non-padding share of inputs and targets together.
- Consumption: T5 v1.1 base and XL training FLOPs a batch (`flan_jax.flops`), at
  {V4_CHIPS} TPU v4 chips x 275 TFLOP/s bf16 x an assumed MFU of {100 * ASSUMED_MFU:.1f}%
  (PaLM's); the cached side's batches/s over {batches} batches on this CPU.

{_common.table(header, table_rows)}
"""
