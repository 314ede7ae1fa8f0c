"""The collection benchmark's direct cache writer (`benchmarks.collection.write_cache`)
writes what seqio yields for each released task, so the Grain side reads the cache the Beam
command would write."""

import sys

import numpy as np
import pytest
import seqio
from array_record.python import array_record_module
from train_testing import REPO

from flan_jax import input_pipeline, task_cache
from tasks import demo, vocab
from tasks.flan import released

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the repo, not an installed package
from benchmarks import collection, synthetic_collection  # noqa: E402

LENGTHS = {"inputs": 64, "targets": 8}  # short: most few-shot inputs are cut


@pytest.fixture
def cot_collection(tmp_path, monkeypatch):
    monkeypatch.setenv(vocab.FLAN_VOCAB_ENV, demo.vocabulary().sentencepiece_model_file)
    monkeypatch.setattr(synthetic_collection, "SUBMIXES", {"cot_submix_original": (3, 1.0, "CoT")})
    synthetic_collection.write(str(tmp_path / "released"), rows=60)
    return str(tmp_path / "released")


def test_write_cache_matches_seqio(cot_collection, tmp_path):
    mixture = released.released_mixture({"cot": 1.0}, directory=cot_collection)
    cache_dir = str(tmp_path / "cache")
    counts = collection.write_cache(cot_collection, cache_dir, mixture, LENGTHS)
    tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture))
    assert sorted(counts) == sorted(t.name for t in tasks)
    truncated = 0
    for task in tasks:
        spec = task_cache.read_spec(cache_dir, task.name)
        task_cache.check_fingerprint(spec, task_cache.fingerprint(task, LENGTHS), cache_dir)
        truncated += spec["stats"]["inputs"]["truncated"]
        (path,) = task_cache.shard_paths(cache_dir, spec)
        reader = array_record_module.ArrayRecordReader(path)
        cached = [task_cache.decode(r) for r in reader.read_all()]
        reader.close()
        expected = list(
            task.get_dataset(
                sequence_length=LENGTHS, split="train", shuffle=False, use_cached=False
            ).as_numpy_iterator()
        )
        assert len(cached) == len(expected) == counts[task.name] > 0
        for got, want in zip(cached, expected):
            for name in LENGTHS:
                np.testing.assert_array_equal(got[name], want[name])
    assert truncated > 0
    # The cache is one Grain reads.
    assert len(input_pipeline.cached_tasks(mixture, LENGTHS, cache_dir)) == len(tasks)


def test_at_step_moves_only_the_stream_position():
    state = {"version": 1, "grain": {"parent": {"next_index": 7}, "next_row": 3, "counter": 9}}
    moved = collection.at_step(state, 12.5, 30_000)
    assert moved["grain"] == {"parent": {"next_index": 375_000}, "next_row": 3, "counter": 9}
    assert state["grain"]["parent"]["next_index"] == 7
    with pytest.raises(ValueError, match="next_index"):
        collection.at_step({"grain": {"counter": 1}}, 1.0, 5)
