"""The offline task cache's Beam pipeline (`flan_jax.cache_tasks`): cached examples equal
`task.get_dataset`'s, shared files read once, tasks committed whole, reruns skip, caches made
differently refused, length statistics."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import seqio
import tensorflow as tf
from train_testing import REPO

from flan_jax import cache_tasks, task_cache
from tasks import demo

DEMO_LENGTHS = {"inputs": 16, "targets": 8}  # short enough that some examples are cut
CACHE_COMMAND = [sys.executable, "-m", "flan_jax.cache_tasks", "--gin_file=runs/demo.gin"]


def _cached(cache_dir, name):
    spec = task_cache.read_spec(cache_dir, name)
    assert spec is not None, f"{name} is not complete in {cache_dir}"
    from array_record.python import array_record_module

    examples = []
    for path in task_cache.shard_paths(cache_dir, spec):
        reader = array_record_module.ArrayRecordReader(path)
        examples += [task_cache.decode(r) for r in reader.read_all()]
        reader.close()
    return spec, examples


def _seqio_examples(task, lengths):
    ds = task.get_dataset(
        sequence_length=lengths, split="train", shuffle=False, num_epochs=1, use_cached=False
    )
    return [{k: ex[k] for k in ("inputs", "targets")} for ex in ds.as_numpy_iterator()]


def _assert_same(cached, expected):
    assert len(cached) == len(expected)
    for got, want in zip(cached, expected):
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_length_stats_on_hand_made_lengths():
    stats = task_cache.length_stats(
        {"inputs": [5, 1, 3, 9, 7], "targets": [2, 2, 4, 100]}, {"inputs": 6, "targets": 4}
    )
    assert stats == {
        "inputs": {"mean": 5.0, "max": 9, "p50": 5, "p99": 9, "truncated": 2},
        "targets": {"mean": 27.0, "max": 100, "p50": 2, "p99": 100, "truncated": 1},
    }


@pytest.mark.slow
def test_cli_caches_the_demo_mixture_with_two_worker_processes(tmp_path):
    cache_dir = tmp_path / "cache"
    command = [
        *CACHE_COMMAND,
        f"--gin.CACHE_DIR='{cache_dir}'",
        f"--gin.TASK_FEATURE_LENGTHS={DEMO_LENGTHS}",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cached 4 tasks" in result.stdout
    truncated = 0
    for name in demo.TASK_NAMES:
        task = seqio.get_mixture_or_task(name)
        spec, cached = _cached(cache_dir, name)
        _assert_same(cached, _seqio_examples(task, DEMO_LENGTHS))
        assert spec["fingerprint"] == json.loads(
            json.dumps(task_cache.fingerprint(task, DEMO_LENGTHS))
        )
        untrimmed = _seqio_examples(task, None)
        for feature, limit in DEMO_LENGTHS.items():
            lengths = [len(ex[feature]) for ex in untrimmed]
            assert spec["stats"][feature]["max"] == max(lengths)
            assert spec["stats"][feature]["truncated"] == sum(n > limit for n in lengths)
            truncated += spec["stats"][feature]["truncated"]
    assert truncated  # the lengths cut some examples: trimming is what got compared


# A collection whose rows live in files shared by its tasks (contract #2), in JSON lines.
class SharedSource(seqio.DataSource):
    reads: list[str] = []

    def __init__(self, files, partition):
        super().__init__(splits=["train"])
        self.files, self.partition = tuple(files), partition

    @property
    def supports_arbitrary_sharding(self):
        return False

    def list_shards(self, split):
        return list(self.files)

    def shared_files(self, split):
        return self.files

    def num_input_examples(self, split):
        return sum(k == self.partition for p in self.files for k, _ in self._rows(p))

    def read_partitioned(self, path, keys=None):
        SharedSource.reads.append(path)
        yield from ((k, r) for k, r in self._rows(path) if keys is None or k in keys)

    def rows_to_dataset(self, rows):
        return tf.data.Dataset.from_tensor_slices(
            {k: tf.constant([r[k] for r in rows], tf.string) for k in ("inputs", "targets")}
        )

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None):
        rows = [r for p in self.files for k, r in self._rows(p) if k == self.partition]
        return self.rows_to_dataset(rows)

    @staticmethod
    def _rows(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                yield row.pop("task"), row


def _register(name, source):
    features = {k: seqio.Feature(demo.vocabulary(), add_eos=True) for k in ("inputs", "targets")}
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=features,
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
    )


SHARED_TASKS = ("h2_shared_a", "h2_shared_b", "h2_shared_c")
LENGTHS = {"inputs": 12, "targets": 6}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """Three tasks interleaved over two shared files, cached once by the pipeline."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "sort", "these", "numbers", "yes", "no"]
    files = []
    for index in range(2):
        path = root / f"train-{index}.jsonl"
        with open(path, "w") as f:
            for row in range(60):
                task = SHARED_TASKS[rng.integers(len(SHARED_TASKS))]
                text = " ".join(rng.choice(words, rng.integers(1, 12)))
                f.write(json.dumps({"task": task, "inputs": f"{row} {text}", "targets": text}))
                f.write("\n")
        files.append(str(path))
    for name in SHARED_TASKS:
        _register(name, SharedSource(files, name))
    seqio.MixtureRegistry.remove("h2_shared")
    seqio.MixtureRegistry.add("h2_shared", SHARED_TASKS, default_rate=1.0)
    SharedSource.reads.clear()
    cache_dir = str(root / "cache")
    result = cache_tasks.run("h2_shared", LENGTHS, cache_dir)
    yield cache_dir, files, result
    for name in SHARED_TASKS:
        seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove("h2_shared")


def test_shared_files_are_read_once_and_equal_each_tasks_own_dataset(shared_cache):
    cache_dir, files, result = shared_cache
    assert sorted(SharedSource.reads) == sorted(files)
    assert sorted(result["cached"]) == sorted(SHARED_TASKS) and not result["failed"]
    for name in SHARED_TASKS:
        spec, cached = _cached(cache_dir, name)
        expected = _seqio_examples(seqio.get_mixture_or_task(name), LENGTHS)
        assert spec["num_examples"] == len(expected) == result["cached"][name]
        _assert_same(cached, expected)


def test_groups_respect_the_row_bound_and_cache_the_same_examples(shared_cache, monkeypatch):
    cache_dir, files, _ = shared_cache
    tasks = [seqio.get_mixture_or_task(name) for name in SHARED_TASKS]
    counts = {t.name: t.source.num_input_examples("train") for t in tasks}
    bound = max(counts.values())  # no two tasks fit together
    monkeypatch.setattr(cache_tasks, "GROUP_ROWS", bound)
    assert cache_tasks.shared_groups(tasks, "train") == [(name,) for name in SHARED_TASKS]
    monkeypatch.setattr(cache_tasks, "GROUP_ROWS", bound - 1)  # each task over it: alone
    assert cache_tasks.shared_groups(tasks, "train") == [(name,) for name in SHARED_TASKS]
    monkeypatch.setattr(cache_tasks, "GROUP_ROWS", sum(counts.values()))
    monkeypatch.setattr(cache_tasks, "GROUP_TASKS", 2)
    assert cache_tasks.shared_groups(tasks, "train") == [SHARED_TASKS[:2], SHARED_TASKS[2:]]
    monkeypatch.setattr(cache_tasks, "GROUP_ROWS", bound)
    SharedSource.reads.clear()
    split_dir = str(cache_dir) + "_split"
    result = cache_tasks.run("h2_shared", LENGTHS, split_dir)
    assert sorted(SharedSource.reads) == sorted(files * len(SHARED_TASKS))  # once a unit
    assert sorted(result["cached"]) == sorted(SHARED_TASKS) and not result["failed"]
    for name in SHARED_TASKS:
        spec, cached = _cached(split_dir, name)
        _assert_same(cached, _cached(cache_dir, name)[1])
        assert spec["stats"] == _cached(cache_dir, name)[0]["stats"]


def test_rerun_skips_complete_tasks_without_processing_any(shared_cache, monkeypatch):
    cache_dir, _, _ = shared_cache

    def no_pipeline(*args, **kwargs):
        raise AssertionError("a rerun over complete tasks started a pipeline")

    monkeypatch.setattr(cache_tasks, "build_pipeline", no_pipeline)
    result = cache_tasks.run("h2_shared", LENGTHS, cache_dir)
    assert result == {"cached": {}, "skipped": list(SHARED_TASKS), "failed": {}}


def test_a_cache_made_with_other_lengths_is_refused_naming_task_and_lengths(shared_cache):
    cache_dir, _, _ = shared_cache
    with pytest.raises(task_cache.CacheMismatchError) as error:
        cache_tasks.run("h2_shared", {"inputs": 12, "targets": 7}, cache_dir)
    for name in SHARED_TASKS:
        assert f"task {name!r}" in str(error.value)
    assert "lengths: cached {'inputs': 12, 'targets': 6}" in str(error.value)


def test_a_task_failing_mid_write_leaves_no_directory_while_the_others_commit(tmp_path):
    def failing_rows(split, shuffle_files, seed=None):
        def rows():
            for i in range(5):
                yield {"inputs": f"row {i}", "targets": "ok"}
            raise ValueError("the source broke after 5 rows")

        spec = {k: tf.TensorSpec([], tf.string) for k in ("inputs", "targets")}
        return tf.data.Dataset.from_generator(rows, output_signature=spec)

    def good_rows(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": ["one two", "three"], "targets": ["a", "b"]}
        )

    _register("h2_broken", seqio.FunctionDataSource(failing_rows, splits=["train"]))
    _register("h2_fine", seqio.FunctionDataSource(good_rows, splits=["train"]))
    seqio.MixtureRegistry.remove("h2_partly_broken")
    seqio.MixtureRegistry.add("h2_partly_broken", ["h2_broken", "h2_fine"], default_rate=1.0)
    cache_dir = tmp_path / "cache"
    leftover = cache_dir / task_cache.TMP_DIR / "h2_fine-0123abcd"
    leftover.mkdir(parents=True)  # what a killed run leaves
    try:
        result = cache_tasks.run("h2_partly_broken", LENGTHS, str(cache_dir))
    finally:
        for name in ("h2_broken", "h2_fine"):
            seqio.TaskRegistry.remove(name)
        seqio.MixtureRegistry.remove("h2_partly_broken")
    assert result["cached"] == {"h2_fine": 2}
    assert "the source broke after 5 rows" in result["failed"]["h2_broken"]
    assert not (cache_dir / "h2_broken").exists()
    assert not leftover.exists()
    assert sorted(p.name for p in (cache_dir / task_cache.TMP_DIR).iterdir()) == ["h2_broken.error"]


def _released_cot(directory):
    """Two shards of a released cot submix in `directory`: three tasks, 80 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.flan import released

    data = directory / released.folder("cot") / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(1)
    keys = [("gsm8k", "zs_opt"), ("gsm8k", "fs_opt"), ("strategyqa", "zs_opt")]
    for index in range(2):
        rows = [keys[k] for k in rng.integers(len(keys), size=40)]
        table = pa.table(
            {
                "inputs": [f"Q{index}.{i}: what is {i} plus {i}?" for i in range(len(rows))],
                "targets": [f"{2 * i}" for i in range(len(rows))],
                "task_source": ["CoT"] * len(rows),
                "task_name": [name for name, _ in rows],
                "template_type": [template_type for _, template_type in rows],
            }
        )
        pq.write_table(table, data / f"train-{index:05d}-of-00002.parquet", row_group_size=16)


def test_released_collection_tasks_cache_from_one_read_of_each_shard(tmp_path, monkeypatch):
    from tasks import vocab
    from tasks.flan import released

    monkeypatch.setenv(vocab.FLAN_VOCAB_ENV, demo.vocabulary().sentencepiece_model_file)
    _released_cot(tmp_path / "released")
    names = released.register_collection(str(tmp_path / "released"))
    seqio.MixtureRegistry.remove("h2_released")
    seqio.MixtureRegistry.add("h2_released", names, default_rate=1.0)
    reads = []
    read = released.ReleasedSource.read_partitioned

    def counted(self, path, keys=None):
        reads.append(path)
        return read(self, path, keys)

    monkeypatch.setattr(released.ReleasedSource, "read_partitioned", counted)
    lengths = {"inputs": 10, "targets": 4}
    try:
        result = cache_tasks.run("h2_released", lengths, str(tmp_path / "cache"))
        assert len(reads) == 2 and sorted(result["cached"]) == sorted(names)
        for name in names:
            _, cached = _cached(tmp_path / "cache", name)
            _assert_same(cached, _seqio_examples(seqio.get_mixture_or_task(name), lengths))
    finally:
        seqio.MixtureRegistry.remove("h2_released")
        for name in names:
            seqio.TaskRegistry.remove(name)


def test_an_unreadable_vocabulary_stops_before_beam_and_writes_nothing(tmp_path, monkeypatch):
    from flan_jax import preflight
    from tasks import vocab
    from tasks.flan import released

    missing = tmp_path / "nowhere" / "sentencepiece.model"
    monkeypatch.setenv(vocab.FLAN_VOCAB_ENV, str(missing))
    _released_cot(tmp_path / "released")
    name = released.register_mixture("h_unreadable_vocab", {"cot": 1}, str(tmp_path / "released"))
    monkeypatch.setattr(cache_tasks, "build_pipeline", lambda *a: pytest.fail("Beam started"))
    cache_dir = tmp_path / "cache"
    try:
        with pytest.raises(preflight.InputsUnreadable) as stop:
            cache_tasks.run(name, {"inputs": 10, "targets": 4}, str(cache_dir))
    finally:
        seqio.MixtureRegistry.remove(name)
    message = str(stop.value)
    assert message.count(f"the vocabulary {missing}") == 1  # once, not once a task
    assert f"Point ${vocab.FLAN_VOCAB_ENV} at a local copy" in message
    assert not cache_dir.exists()  # no .tmp leftovers, no error files


@pytest.mark.slow
def test_cli_with_unreachable_gs_vocabulary_stops_at_the_first_failed_attempt(tmp_path):
    """gs:// unreachable (an emulator address nobody listens on): one message, given at
    gcsfs's first failed attempt rather than after its minute of retries, before Beam."""
    _released_cot(tmp_path / "released")
    cache_dir = tmp_path / "cache"
    command = [
        *CACHE_COMMAND,
        "--gin_file=mixtures/flan2022_released.gin",
        f"--gin.RELEASED_DIR='{tmp_path / 'released'}'",
        "--gin.MIXTURE_PROPORTIONS={'cot': 1}",
        f"--gin.CACHE_DIR='{cache_dir}'",
    ]
    env = {
        **os.environ,
        "FLAN_JAX_VOCAB": "gs://flan-jax-no-such-bucket/vocab/sentencepiece.model",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
    }
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("Stopped before any work") == 1
    assert "the vocabulary gs://flan-jax-no-such-bucket/vocab/sentencepiece.model" in result.stderr
    assert "gcsfs would retry" in result.stderr and "FLAN_JAX_VOCAB" in result.stderr
    assert "Traceback" not in result.stderr
    assert not cache_dir.exists()
    assert elapsed < 120, elapsed
