"""The offline task cache, built by an Apache Beam pipeline:

    python -m flan_jax.cache_tasks --gin_file=<the training run file> \\
        --gin.CACHE_DIR="'/data/cache'" [--direct_num_workers=4 \\
        --direct_running_mode=multi_processing | --runner=DataflowRunner ...]

It reads the same gin as training (MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, the tasks and
vocabulary the run registers, CACHE_DIR) and writes each subtask's train split into CACHE_DIR
in `flan_jax.task_cache`'s format: exactly the examples `task.get_dataset(sequence_length=
lengths, shuffle=False, use_cached=False)` yields, with counts and length statistics.

One unit of work is one task, run through its own seqio source and preprocessors. Tasks whose
rows live in files shared by many tasks (a source with `shared_files`, `partition`,
`read_partitioned`, `rows_to_dataset`: the released collection) are cut into groups of at
most GROUP_ROWS rows: one unit reads every file once, keeping its group's rows, and feeds
them through each task's own preprocessors, so a worker holds a bounded share of the
collection whatever its size. A rerun skips tasks already complete with the same
fingerprint and refuses one made differently. Beam's worker processes start empty: each
re-parses the command's gin files (which import and register the tasks) before its first
task.
"""

from __future__ import annotations

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import inspect
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence

import apache_beam as beam
import gin
import seqio
import tensorflow as tf
from etils import epath

from flan_jax import cli, paths, preflight, task_cache

log = logging.getLogger(__name__)

# Parsed before the run's own files: CACHE_DIR's default and the settings this command reads.
CACHE_GIN = "cache.gin"
# What a source whose rows live in files shared by many tasks offers (tasks.flan.released).
SHARED_FILE_METHODS = ("shared_files", "partition", "read_partitioned", "rows_to_dataset")


def settings(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    cache_dir: str | None,
    split: str = "train",
    num_shards: int = 1,
) -> dict:
    """What gin/cache.gin binds from the run's macros (num_shards: ArrayRecord files a task)."""
    for macro, value in [
        ("MIXTURE_OR_TASK_NAME", mixture_or_task_name),
        ("TASK_FEATURE_LENGTHS", task_feature_lengths),
    ]:
        if value is gin.REQUIRED:
            raise ValueError(
                f"{macro} is not set: pass --gin.{macro}=VALUE or a run file that sets it "
                "(the task cache reads the same gin files as training)."
            )
    return dict(
        mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=dict(task_feature_lengths),
        cache_dir=cache_dir,
        split=split,
        num_shards=num_shards,
    )


def postcache(task: seqio.Task, ds: tf.data.Dataset, lengths: Mapping[str, int] | None):
    """Preprocessed rows the rest of the way: the steps of `Task.get_dataset` after
    `preprocess_precache` (lengths None: nothing trimmed)."""
    ds = task.preprocess_postcache(ds, sequence_length=lengths)
    return task._trim_output_features(task._validate_preprocessing(ds), lengths)


# Examples a tf.data step hands to Python: one at a time, tf.data's per-element cost is
# three times the preprocessing.
BATCH = 256


def _batched(ds: tf.data.Dataset, features: Sequence[str], fn) -> Iterator[dict]:
    """`fn` of the features of each example, as numpy, a ragged batch at a time."""
    ds = ds.map(lambda ex: {name: fn(ex[name]) for name in features})
    return ds.ragged_batch(BATCH).as_numpy_iterator()


def _unbatched(batches: Iterator[dict], features: Sequence[str]) -> Iterator[dict]:
    for batch in batches:
        for values in zip(*(batch[name] for name in features)):
            yield dict(zip(features, values))


def split_at_lengths(task: seqio.Task) -> seqio.Task:
    """The task with its cache point just before the first preprocessor that takes the
    lengths: the steps before it (tokenizing) give the same rows for any lengths, so the
    trimmed and the untrimmed pass share them."""
    steps = [p for p in task.preprocessors if not isinstance(p, seqio.CacheDatasetPlaceholder)]
    takes_lengths = ["sequence_length" in inspect.signature(step).parameters for step in steps] + [
        True
    ]
    at = takes_lengths.index(True)
    return task.replace(preprocessors=[*steps[:at], seqio.CacheDatasetPlaceholder(), *steps[at:]])


def write_task(
    task: seqio.Task,
    raw: tf.data.Dataset,
    *,
    cache_dir: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "train",
    num_shards: int = 1,
) -> dict:
    """Caches one task from its source rows; returns its spec. The length statistics come
    from a second pass without trimming, which starts from the first pass's rows as they
    were before the first length-dependent step (kept in memory), so the source and the
    costly steps (tokenizing) run once."""
    features = [name for name, f in task.output_features.items() if f.dtype.is_integer]
    steps = split_at_lengths(task)
    shared = steps.preprocess_precache(raw).cache()
    writer = task_cache.TaskWriter(cache_dir, task.name, split, num_shards)
    try:
        trimmed = postcache(steps, shared, task_feature_lengths)
        writer.write_all(_unbatched(_batched(trimmed, features, tf.identity), features))
        sizes = list(_batched(postcache(steps, shared, None), features, tf.size))
        untrimmed = {name: [n for batch in sizes for n in batch[name]] for name in features}
        stats = task_cache.length_stats(untrimmed, task_feature_lengths)
        return writer.commit(task_cache.fingerprint(task, task_feature_lengths), stats)
    except BaseException:
        writer.abort()
        raise


_parsed: tuple[tuple[str, ...], dict] | None = None


def parse_gin_once(gin_args: Sequence[str]) -> dict:
    """The command's gin files and bindings into this process's gin config, unless already
    there; returns its `settings`. Both register the tasks: the files import their modules,
    and a mixture made by a gin call (`@released.released_mixture()`) is registered when
    the settings are evaluated."""
    global _parsed
    if _parsed is None or _parsed[0] != tuple(gin_args):
        files, bindings, search_paths = cli.split_gin_args(gin_args)
        gin.clear_config()
        cli.parse_gin(files, bindings, search_paths=search_paths, finalize=False)
        _parsed = tuple(gin_args), gin.get_configurable(settings)()
    return dict(_parsed[1])


def load_tasks(gin_args: Sequence[str], mixture_or_task_name: str) -> None:
    """Registers the command's tasks in a Beam worker process, which starts with none: its
    gin, then its mixture resolved (which registers the tasks of a lazy mixture, as the
    released collection's)."""
    if gin_args:
        parse_gin_once(gin_args)
    seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))


def error_path(cache_dir: str, task_name: str) -> epath.Path:
    return paths.path(cache_dir, "CACHE_DIR") / task_cache.TMP_DIR / f"{task_name}.error"


class _TaskDoFn(beam.DoFn):
    """Loads the command's tasks in its worker; `_cache` writes one task, and a task that
    fails leaves its error beside the cache instead of stopping the other tasks."""

    def __init__(self, tasks: tuple, options: Mapping):
        self.tasks, self.options = tasks, dict(options)

    def setup(self):
        load_tasks(*self.tasks)

    def _cache(self, task_name: str, raw_fn) -> Iterator[tuple[str, int]]:
        try:
            task = seqio.get_mixture_or_task(task_name)
            spec = write_task(task, raw_fn(task), **self.options)
        except Exception as e:
            log.exception("caching task %s failed", task_name)
            path = error_path(self.options["cache_dir"], task_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            summary = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
            path.write_text(f"{summary}\n{traceback.format_exc()}")
            return
        beam.metrics.Metrics.counter("cache_tasks", "examples").inc(spec["num_examples"])
        yield task_name, spec["num_examples"]


class CacheTask(_TaskDoFn):
    """A task name -> its cache, from its own source."""

    def process(self, task_name: str):
        split = self.options["split"]
        yield from self._cache(
            task_name, lambda task: task.source.get_dataset(split=split, shuffle=False)
        )


class CacheGroup(_TaskDoFn):
    """A group of tasks of the same shared files -> their caches: each file read once,
    keeping only the group's rows (in file order), then each task through `rows_to_dataset`
    and its preprocessors, its rows released once written."""

    def process(self, names: tuple[str, ...]):
        sources = [seqio.get_mixture_or_task(name).source for name in names]
        tasks = {source.partition: name for name, source in zip(names, sources)}
        rows = {name: [] for name in names}
        for path in sources[0].shared_files(self.options["split"]):
            for key, row in sources[0].read_partitioned(path, keys=set(tasks)):
                rows[tasks[key]].append(row)
        for name in names:
            mine = rows.pop(name)
            if mine:  # none: reported by `run` as missing from its shared files
                yield from self._cache(
                    name, lambda task, mine=mine: task.source.rows_to_dataset(mine)
                )


# A unit of work over shared files holds at most this many rows in memory (a task with
# more is a unit alone), and at most this many tasks (each written in turn).
GROUP_ROWS = 250_000
GROUP_TASKS = 500


def shared_groups(tasks: Sequence[seqio.Task], split: str) -> list[tuple[str, ...]]:
    """The units of work over shared files: the tasks of each collection (same shared files)
    cut, in order, into groups of at most GROUP_ROWS rows (`num_input_examples`; a source
    that does not know its count is a unit alone) and GROUP_TASKS tasks."""
    collections: dict[tuple[str, ...], list[seqio.Task]] = {}
    for task in tasks:
        collections.setdefault(tuple(task.source.shared_files(split)), []).append(task)
    groups = []
    for members in collections.values():
        group, rows = [], 0
        for task in members:
            count = task.source.num_input_examples(split)
            count = GROUP_ROWS if count is None else count
            if group and (rows + count > GROUP_ROWS or len(group) == GROUP_TASKS):
                groups.append(tuple(group))
                group, rows = [], 0
            group.append(task.name)
            rows += count
        groups.append(tuple(group))
    return groups


def is_shared_file_source(source) -> bool:
    return all(hasattr(source, name) for name in SHARED_FILE_METHODS)


def plan(tasks: Sequence[seqio.Task], cache_dir: str, lengths: Mapping[str, int]):
    """(tasks to cache, names of those already complete with the same fingerprint); refuses,
    naming each, the complete tasks made differently."""
    todo, skipped, mismatches = [], [], []
    for task in tasks:
        spec = task_cache.read_spec(cache_dir, task.name)
        if spec is None:
            todo.append(task)
            continue
        try:
            task_cache.check_fingerprint(spec, task_cache.fingerprint(task, lengths), cache_dir)
            skipped.append(task.name)
        except task_cache.CacheMismatchError as e:
            mismatches.append(str(e))
    if mismatches:
        raise task_cache.CacheMismatchError("\n".join(mismatches))
    return todo, skipped


def build_pipeline(pipeline, tasks: Sequence[seqio.Task], loader: tuple, options: Mapping):
    """Adds the caching of `tasks` to a Beam pipeline: generic tasks one unit each; tasks of
    shared files in groups of bounded rows (`shared_groups`). `loader`: the
    arguments of `load_tasks` that register the tasks in a worker."""
    shared = [t for t in tasks if is_shared_file_source(t.source)]
    generic = [t.name for t in tasks if t not in shared]
    if generic:
        _ = (
            pipeline
            | "task names" >> beam.Create(generic)
            | "spread tasks" >> beam.Reshuffle()
            | "cache tasks" >> beam.ParDo(CacheTask(loader, options))
        )
    if shared:
        _ = (
            pipeline
            | "shared-file groups" >> beam.Create(shared_groups(shared, options["split"]))
            | "spread groups" >> beam.Reshuffle()
            | "cache groups" >> beam.ParDo(CacheGroup(loader, options))
        )


def run(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    cache_dir: str,
    *,
    split: str = "train",
    num_shards: int = 1,
    gin_args: Sequence[str] = (),
    beam_args: Sequence[str] = (),
) -> dict:
    """Caches every subtask of the mixture not yet complete; returns what it did
    ({'cached': {task: examples}, 'skipped': [...], 'failed': {task: error}}). Its data, its
    vocabularies and `cache_dir` are read once first (`flan_jax.preflight`): one of them
    unreadable stops it, naming what and how to fix it, before Beam starts or anything is
    written."""
    tasks = preflight.check_inputs(mixture_or_task_name, cache_dir)
    removed = task_cache.remove_leftovers(cache_dir)
    if removed:
        log.info("removed %d leftovers of earlier runs from %s/.tmp", removed, cache_dir)
    todo, skipped = plan(tasks, cache_dir, task_feature_lengths)
    log.info(
        "%s: %d tasks to cache into %s, %d already complete (skipped)",
        mixture_or_task_name,
        len(todo),
        cache_dir,
        len(skipped),
    )
    if todo:
        options = dict(
            cache_dir=str(cache_dir),
            task_feature_lengths=dict(task_feature_lengths),
            split=split,
            num_shards=num_shards,
        )
        with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(beam_args)) as p:
            build_pipeline(p, todo, (tuple(gin_args), mixture_or_task_name), options)
    cached, failed = {}, {}
    for task in todo:
        spec = task_cache.read_spec(cache_dir, task.name)
        if spec is not None:
            cached[task.name] = spec["num_examples"]
            continue
        error = error_path(cache_dir, task.name)
        failed[task.name] = (
            error.read_text().splitlines()[0]
            if error.exists()
            else "no rows of this task in its shared files"
        )
    return {"cached": cached, "skipped": skipped, "failed": failed}


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.new_parser(
        "Builds the offline task cache of a training run's mixture (Apache Beam). Flags "
        "other than the ones below go to Beam (e.g. --direct_num_workers=4 "
        "--direct_running_mode=multi_processing, or --runner=DataflowRunner --project=... "
        "--region=... --temp_location=gs://... --setup_file=./setup.py); write them "
        "--flag=value.",
        gin_files=True,
    )
    _, rest = parser.parse_known_args(argv)
    beam_args = [a for a in rest if not a.startswith("--gin.")]
    own = list(argv)
    for item in beam_args:
        own.remove(item)
    args = cli.parse_args(parser, own)
    if not args.gin_file:
        parser.error("at least one --gin_file is required: the training run's, e.g. runs/demo.gin")
    # Workers look the files up from wherever they start: add this directory to the path.
    search_paths = [p for p in args.gin_search_paths.split(",") if p] + [os.getcwd()]
    args.gin_search_paths = ",".join(search_paths)
    gin_args = [f"--gin_file={CACHE_GIN}", *cli.gin_args(args)]
    config = parse_gin_once(gin_args)
    if not config["cache_dir"]:
        parser.error("CACHE_DIR is not set: pass --gin.CACHE_DIR=\"'DIR'\" (a path or gs://)")
    config["cache_dir"] = os.fspath(paths.path(config["cache_dir"], "CACHE_DIR"))
    try:
        result = run(
            config.pop("mixture_or_task_name"),
            config.pop("task_feature_lengths"),
            config.pop("cache_dir"),
            **config,
            gin_args=gin_args,
            beam_args=beam_args,
        )
    except preflight.InputsUnreadable as e:
        sys.exit(str(e))
    examples = sum(result["cached"].values())
    print(
        f"cached {len(result['cached'])} tasks ({examples} examples); skipped "
        f"{len(result['skipped'])} already complete; failed {len(result['failed'])}",
        flush=True,
    )
    for name, error in sorted(result["failed"].items()):
        print(f"  failed {name}: {error}", file=sys.stderr)
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    # Beam pickles the DoFns by reference to this module, not to __main__.
    from flan_jax import cache_tasks

    cache_tasks.main()
