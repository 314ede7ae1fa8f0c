"""The offline task cache on disk: each task's preprocessed, tokenized split as ArrayRecord shards.

    <cache_dir>/<task>/spec.json                        what the shards hold and how they were made
    <cache_dir>/<task>/<split>.array_record-00000-of-00004   one record per example (`encode`)

A task's directory is complete or absent: its shards are written on local disk (ArrayRecord
writes local paths only), copied into `<cache_dir>/.tmp/<task>-<uuid>/` (`flan_jax.paths`:
local or gs://) with the spec, and renamed into place (`TaskWriter.commit`). ArrayRecord
reads gs:// shards itself, so a cache on gs:// is trained from where it lies. The spec
lists every shard with its size, so a copy that stopped half way (a rename on an object
store copies file by file) reads as absent, not as a shorter task. Records are msgpack maps
of feature name -> little-endian int32 bytes: readable without TensorFlow or seqio.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import numpy as np
from array_record.python import array_record_module
from etils import epath

from flan_jax import paths

FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
TMP_DIR = ".tmp"
# One record per chunk: random access reads one example, not a 64k-record group.
WRITER_OPTIONS = "group_size:1"


class CacheMismatchError(ValueError):
    """A cached task was made with another vocabulary, other lengths or other preprocessing."""


def encode(example: Mapping[str, np.ndarray]) -> bytes:
    return msgpack.packb(
        {name: np.asarray(value, "<i4").tobytes() for name, value in sorted(example.items())}
    )


def decode(record: bytes) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(value, "<i4") for name, value in msgpack.unpackb(record).items()}


def task_dir(cache_dir: str | epath.Path, task_name: str) -> epath.Path:
    return paths.path(cache_dir, "CACHE_DIR") / task_name


def read_spec(cache_dir: str | epath.Path, task_name: str) -> dict | None:
    """The spec of a complete cached task, or None where the task is absent or incomplete."""
    directory = task_dir(cache_dir, task_name)
    paths.forget_listings(directory)  # another process (a Beam worker) may have written it
    spec_path = directory / SPEC_FILE
    if not spec_path.exists():
        return None
    spec = json.loads(spec_path.read_text())
    for name, size in spec["files"].items():
        path = directory / name
        if not path.exists() or path.stat().length != size:
            return None
    return spec


def shard_paths(cache_dir: str | epath.Path, spec: Mapping[str, Any]) -> list[str]:
    directory = task_dir(cache_dir, spec["task"])
    return [str(directory / name) for name in sorted(spec["files"])]


def check_fingerprint(spec: Mapping[str, Any], expected: Mapping[str, Any], cache_dir) -> None:
    """Refuses a cached task made differently from what this run asks for, naming the task
    and each part that differs."""
    saved = spec.get("fingerprint", {})
    differs = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    if differs:
        details = "; ".join(
            f"{key}: cached {saved.get(key)!r}, this run {expected.get(key)!r}" for key in differs
        )
        raise CacheMismatchError(
            f"the cache of task {spec['task']!r} in {cache_dir} was made differently: {details}. "
            "Rebuild it (python -m flan_jax.cache_tasks with this run's gin files, after "
            f"removing {task_dir(cache_dir, spec['task'])}) or point CACHE_DIR at a cache made "
            "with these settings."
        )


def fingerprint(task, task_feature_lengths: Mapping[str, int]) -> dict:
    """What makes a seqio task's cached examples what they are: its vocabularies (by the
    content of their model files), the feature lengths examples were trimmed to, and its
    preprocessors (by name and arguments; a preprocessor may add the settings it reads at
    run time through a `cache_fingerprint()` attribute)."""
    return {
        "format": FORMAT_VERSION,
        "vocabulary": {
            name: _vocabulary_id(feature.vocabulary)
            for name, feature in sorted(task.output_features.items())
        },
        "lengths": {
            name: task_feature_lengths[name]
            for name in sorted(task.output_features)
            if name in task_feature_lengths
        },
        "preprocessors": [_callable_id(p) for p in task.preprocessors],
    }


def _vocabulary_id(vocabulary) -> str:
    model_file = getattr(vocabulary, "sentencepiece_model_file", None)
    if model_file:
        return f"sentencepiece:{_file_digest(model_file)}:extra_ids={vocabulary.extra_ids}"
    return f"{type(vocabulary).__qualname__}:{vocabulary.vocab_size}"


@functools.cache
def _file_digest(path: str) -> str:
    """Read once per process: a mixture's thousands of tasks share one vocabulary file."""
    return hashlib.sha256(paths.path(path, "vocabulary").read_bytes()).hexdigest()[:16]


def _callable_id(fn) -> str:
    arguments = ""
    if isinstance(fn, functools.partial):
        parts = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        arguments = "(" + ", ".join(parts) + ")"
        fn = fn.func
    identity = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    settings = getattr(fn, "cache_fingerprint", None)
    if settings is not None:
        identity += f"[{json.dumps(settings(), sort_keys=True, default=repr)}]"
    # Object addresses change from run to run; what they name does not.
    return re.sub(r" at 0x[0-9a-f]+", "", identity + arguments)


class TaskWriter:
    """Writes one task's shards aside and commits them with its spec in one rename.

    Records go round-robin to `num_shards` shards (readers see shard after shard: the
    order is fixed by the cache, and training shuffles it anyway).
    """

    def __init__(self, cache_dir: str | epath.Path, task_name: str, split: str, num_shards: int):
        self.cache_dir = paths.path(cache_dir, "CACHE_DIR")
        self.task_name, self.split = task_name, split
        self.local = epath.Path(tempfile.mkdtemp(prefix=f"{task_name}-"))
        self.names = [
            f"{split}.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)
        ]
        self._writers = [
            array_record_module.ArrayRecordWriter(str(self.local / name), WRITER_OPTIONS)
            for name in self.names
        ]
        self.num_examples = 0

    def write(self, example: Mapping[str, np.ndarray]) -> None:
        self._writers[self.num_examples % len(self._writers)].write(encode(example))
        self.num_examples += 1

    def write_all(self, examples: Iterable[Mapping[str, np.ndarray]]) -> None:
        for example in examples:
            self.write(example)

    def commit(self, fingerprint: Mapping[str, Any], stats: Mapping[str, Any]) -> dict:
        """Closes the shards, copies them with the spec into the cache's .tmp/ and renames the
        directory into place (replacing an incomplete one); returns the spec."""
        for writer in self._writers:
            writer.close()
        spec = {
            "format": FORMAT_VERSION,
            "task": self.task_name,
            "split": self.split,
            "num_examples": self.num_examples,
            "files": {name: (self.local / name).stat().length for name in self.names},
            "fingerprint": dict(fingerprint),
            "stats": dict(stats),
        }
        aside = self.cache_dir / TMP_DIR / f"{self.task_name}-{uuid.uuid4().hex}"
        aside.mkdir(parents=True)
        try:
            for name in self.names:
                (self.local / name).copy(aside / name)
            (aside / SPEC_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True))
            final = task_dir(self.cache_dir, self.task_name)
            if final.exists():
                final.rmtree()
            aside.rename(final)
        finally:
            shutil.rmtree(self.local, ignore_errors=True)
            if aside.exists():
                aside.rmtree()
        return spec

    def abort(self) -> None:
        for writer in self._writers:
            writer.close()
        shutil.rmtree(self.local, ignore_errors=True)


def remove_leftovers(cache_dir: str | epath.Path) -> int:
    """Removes what runs that stopped half way left in `<cache_dir>/.tmp/`; returns how many
    entries. (Only while no other run writes into the same cache.)"""
    leftovers = paths.path(cache_dir, "CACHE_DIR") / TMP_DIR
    if not leftovers.exists():
        return 0
    count = len(list(leftovers.iterdir()))
    leftovers.rmtree()
    return count


def length_stats(
    lengths: Mapping[str, Iterable[int]], task_feature_lengths: Mapping[str, int]
) -> dict:
    """Per feature, the examples' lengths before trimming (mean, max, median, 99th
    percentile: the smallest length that at least that share of examples fits) and how many
    examples the feature lengths cut."""
    stats = {}
    for name, values in sorted(lengths.items()):
        values = np.asarray(list(values), np.int64)
        limit = task_feature_lengths.get(name)
        if not len(values):
            stats[name] = {"mean": 0.0, "max": 0, "p50": 0, "p99": 0, "truncated": 0}
            continue
        p50, p99 = np.percentile(values, [50, 99], method="inverted_cdf")
        stats[name] = {
            "mean": float(values.mean()),
            "max": int(values.max()),
            "p50": int(p50),
            "p99": int(p99),
            "truncated": int((values > limit).sum()) if limit is not None else 0,
        }
    return stats
