"""The cached Grain input pipeline against seqio: the same model features, every cached
example once per epoch, the mixture's rates, and a resumable position."""

import collections
import json
import types

import grain
import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax import cache_tasks, data, input_pipeline, task_cache
from flan_jax.models import base

LENGTHS = {"inputs": 32, "targets": 8}
VOCABULARY = seqio.PassThroughVocabulary(size=512, eos_id=1)
ENC_DEC = types.SimpleNamespace(FEATURE_CONVERTER=base.EncoderDecoderModel.FEATURE_CONVERTER)
PREFIX_LM = types.SimpleNamespace(FEATURE_CONVERTER=base.DecoderOnlyModel.FEATURE_CONVERTER)
MODELS = {"enc_dec": ENC_DEC, "prefix_lm": PREFIX_LM}
CONVERTERS = {
    "EncDecFeatureConverter": seqio.EncDecFeatureConverter,
    "PrefixLMFeatureConverter": seqio.PrefixLMFeatureConverter,
}


def _register_task(name, num_examples, marker):
    """A task of random token sequences (some longer than LENGTHS, so caching trims), each
    input starting with `marker` to tell the tasks apart in a mixture."""

    def dataset_fn(split, shuffle_files, seed=None):
        rng = np.random.default_rng(marker)
        rows = [
            {
                "inputs": np.r_[marker, rng.integers(10, 500, rng.integers(2, 40))],
                "targets": rng.integers(10, 500, rng.integers(0, 12)),
            }
            for _ in range(num_examples)
        ]
        return tf.data.Dataset.from_generator(
            lambda: ({k: v.astype(np.int32) for k, v in row.items()} for row in rows),
            output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")},
        )

    seqio.TaskRegistry.add(
        name,
        seqio.FunctionDataSource(dataset_fn, splits=("train",)),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={k: seqio.Feature(VOCABULARY, add_eos=True) for k in LENGTHS},
    )


for _name, _size, _marker in [("h3_a", 60, 2), ("h3_b", 45, 3), ("h3_c", 30, 4), ("h3_d", 5, 5)]:
    _register_task(_name, _size, _marker)
MIXTURE = "h3_mixture"
RATES = {"h3_a": 0.5, "h3_b": 0.3, "h3_c": 0.2}
# A rate-0 task is dropped: it needs no cache.
seqio.MixtureRegistry.add(MIXTURE, [*RATES.items(), ("h3_d", 0.0)])


def _examples(task_name, lengths=LENGTHS):
    """What the cache holds for a task: seqio's own dataset, trimmed, EOS appended."""
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(
        sequence_length=lengths, split="train", shuffle=False, num_epochs=1, use_cached=False
    )
    return [{k: ex[k] for k in task.output_features} for ex in ds.as_numpy_iterator()]


def _write_cache(cache_dir, task_name, lengths=LENGTHS):
    task = seqio.get_mixture_or_task(task_name)
    raw = task.source.get_dataset(split="train", shuffle=False)
    cache_tasks.write_task(
        task, raw, cache_dir=str(cache_dir), task_feature_lengths=lengths, num_shards=2
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache")
    for name in RATES:
        _write_cache(directory, name)
    return str(directory)


def _pipeline(cache_dir, name="h3_a", model=ENC_DEC, **kwargs):
    kwargs = {"global_batch_size": 4, "seed": 7, **kwargs}
    return input_pipeline.train_input(name, LENGTHS, model, cache_dir=cache_dir, **kwargs)


def _stream(cache_dir, name, count, seed=7):
    """The first examples of the pipeline's mixed stream, in order."""
    examples = input_pipeline.mixed_examples(
        input_pipeline.cached_tasks(name, LENGTHS, cache_dir), seed
    )
    return [examples[i] for i in range(count)]


def _seqio_features(examples, model, pack):
    """seqio's feature converter for the model on these examples."""
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in LENGTHS},
    )
    converter = CONVERTERS[model.FEATURE_CONVERTER](pack=pack)
    return list(converter(ds, LENGTHS).as_numpy_iterator())


def _stack(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _assert_batches_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].dtype == np.int32, name
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_unpacked_batches_are_seqio_converter_output(cache_dir, model):
    batches = _pipeline(cache_dir, model=model, pack=False)
    expected = _seqio_features(_stream(cache_dir, "h3_a", 12), model, pack=False)
    for i in range(3):
        _assert_batches_equal(next(batches), _stack(expected[4 * i : 4 * i + 4]))


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_packed_rows_convert_as_seqio_converts_them(cache_dir, model):
    """The conversion of packed rows (shifts per segment, loss weights, the prefix-LM masks)
    against seqio's converter on the rows seqio's own packer makes of the same examples."""
    examples = _stream(cache_dir, "h3_a", 40)
    layout, row_lengths = input_pipeline.layout(model, LENGTHS)
    ds = tf.data.Dataset.from_generator(
        lambda: (layout(e) for e in examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in row_lengths},
    )
    rows = list(seqio.utils.trim_and_pack_dataset(ds, row_lengths).as_numpy_iterator())
    converted = input_pipeline.ModelFeatures(model.FEATURE_CONVERTER, pack=True)(_stack(rows))
    _assert_batches_equal(converted, _stack(_seqio_features(examples, model, pack=True)))


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_features_are_those_of_the_streaming_pipeline(cache_dir, model, pack):
    streaming = data.train_dataset(
        "h3_a", LENGTHS, model, global_batch_size=4, seed=7, pack=pack
    ).element_spec
    batch = next(_pipeline(cache_dir, model=model, pack=pack))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (tuple(s.shape), s.dtype.as_numpy_dtype) for k, s in streaming.items()
    }


def _segments(batch):
    """(inputs, targets) of every example packed in an EncDec batch, checking each row's
    layout: segments 1..k in order, positions restarting at 0, padding only at the end,
    inputs and targets paired by segment id."""
    pairs = []
    for row in range(len(batch["encoder_input_tokens"])):
        sides = {}
        for side, tokens in (
            ("encoder", "encoder_input_tokens"),
            ("decoder", "decoder_target_tokens"),
        ):
            ids, positions = batch[f"{side}_segment_ids"][row], batch[f"{side}_positions"][row]
            used = np.count_nonzero(ids)
            assert np.all(ids[:used] > 0) and not ids[used:].any()
            assert np.all(np.diff(ids[:used]) >= 0)
            assert not batch[tokens][row][used:].any()
            sides[side] = [batch[tokens][row][ids == s] for s in range(1, ids.max() + 1)]
            for s, segment in enumerate(sides[side], 1):
                np.testing.assert_array_equal(positions[ids == s], np.arange(len(segment)))
        assert len(sides["encoder"]) == len(sides["decoder"])
        pairs += [(tuple(i), tuple(t)) for i, t in zip(sides["encoder"], sides["decoder"])]
    return pairs


def test_packed_rows_hold_every_cached_example_once_per_epoch(cache_dir):
    """A batch of PACKING_BINS rows is one packed batch, a stretch of the stream: after k
    batches each of the task's examples has been packed P // N or P // N + 1 times."""
    bins = 8
    batches = _pipeline(cache_dir, global_batch_size=bins, packing_bins=bins)
    cached = collections.Counter(
        (tuple(e["inputs"]), tuple(e["targets"])) for e in _examples("h3_a")
    )
    assert len(cached) == 60
    packed = collections.Counter()
    for _ in range(30):
        batch = next(batches)
        packed.update(_segments(batch))
        np.testing.assert_array_equal(
            batch["decoder_loss_weights"], batch["decoder_target_tokens"] != 0
        )
    assert set(packed) == set(cached)
    total = sum(packed.values())
    epochs = total // len(cached)
    assert epochs >= 3
    assert sorted(collections.Counter(packed.values()).items()) == sorted(
        {epochs: len(cached) - total % len(cached), epochs + 1: total % len(cached)}.items()
        - {(epochs + 1, 0)}
    )


def test_mixture_shares_within_a_point_of_the_rates(cache_dir):
    """20k examples of the mixed stream the pipeline packs, told apart by their first
    token; h3_d (rate 0) has no cache and is not asked for."""
    markers = collections.Counter(e["inputs"][0] for e in _stream(cache_dir, MIXTURE, 20_000))
    names = {2: "h3_a", 3: "h3_b", 4: "h3_c"}
    assert set(markers) == set(names)
    for marker, name in names.items():
        assert abs(markers[marker] / 20_000 - RATES[name] / sum(RATES.values())) < 0.01, name


def _round_trip(cache_dir, n, m, **kwargs):
    """m batches after n, and the m batches a fresh pipeline gives from the state after n."""
    first = _pipeline(cache_dir, MIXTURE, **kwargs)
    for _ in range(n):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    expected = [next(first) for _ in range(m)]
    first.close()
    resumed = _pipeline(cache_dir, MIXTURE, **kwargs)
    resumed.set_state(state)
    actual = [next(resumed) for _ in range(m)]
    resumed.close()
    return actual, expected


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="packed"),
        pytest.param({"pack": False}, id="unpacked"),
        pytest.param({"model": PREFIX_LM}, id="prefix_lm"),
        # Two pipelines of two spawned worker processes each: 13-30 s on a shared 2-core box.
        pytest.param({"worker_count": 2}, id="workers", marks=pytest.mark.slow),
    ],
)
def test_restored_state_continues_with_the_same_batches(cache_dir, kwargs):
    actual, expected = _round_trip(cache_dir, 5, 6, packing_bins=16, **kwargs)
    for a, e in zip(actual, expected, strict=True):
        _assert_batches_equal(a, e)


def test_state_does_not_grow_with_the_step(cache_dir):
    """The same structure after 5 and 500 batches, only the counters move."""
    batches = _pipeline(cache_dir, MIXTURE)
    states = []
    for step in range(1, 501):
        next(batches)
        if step in (5, 500):
            states.append(batches.get_state())

    def shape(tree):
        if isinstance(tree, dict):
            return {k: shape(v) for k, v in tree.items()}
        return type(tree).__name__

    assert shape(states[0]) == shape(states[1])
    assert states[0] != states[1]
    assert abs(len(json.dumps(states[0])) - len(json.dumps(states[1]))) < 32


def test_state_of_another_pipeline_is_refused(cache_dir):
    state = _pipeline(cache_dir, MIXTURE).get_state()
    with pytest.raises(ValueError, match=r"global_batch_size: saved 4, this run 8"):
        _pipeline(cache_dir, MIXTURE, global_batch_size=8).set_state(state)


def test_missing_cache_names_the_task_directory_and_command(cache_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _pipeline(str(tmp_path), MIXTURE)
    message = str(error.value)
    assert "'h3_a'" in message and str(tmp_path) in message
    assert "python -m flan_jax.cache_tasks" in message


def test_cache_made_with_other_lengths_is_refused(tmp_path):
    _write_cache(tmp_path, "h3_b", {"inputs": 16, "targets": 8})
    with pytest.raises(task_cache.CacheMismatchError, match=r"'h3_b'.*lengths"):
        _pipeline(str(tmp_path), "h3_b")


def test_mix_of_many_uneven_tasks_keeps_each_share_and_order():
    """300 tasks with long-tailed weights: over the first 100k draws each task supplies its
    share to within a few examples, and its own examples in order without skips."""
    weights = np.random.default_rng(0).lognormal(3, 1.5, 300).astype(int) + 1
    mixed = input_pipeline.Mix(
        [grain.MapDataset.range(10**9).map(lambda i, t=t: (t, i)) for t in range(300)],
        weights.tolist(),
    )
    drawn = [mixed[k] for k in range(100_000)]
    counts = collections.Counter(t for t, _ in drawn)
    expected = 100_000 * weights / weights.sum()
    assert max(abs(counts[t] - expected[t]) for t in range(300)) < 10
    seen = collections.defaultdict(list)
    for t, i in drawn:
        seen[t].append(i)
    assert all(indices == list(range(len(indices))) for indices in seen.values())


def test_truncation_is_counted_over_every_cached_example(cache_dir):
    task = seqio.get_mixture_or_task("h3_a")
    raw = list(task.source.get_dataset(split="train", shuffle=False).as_numpy_iterator())
    cut = {k: sum(len(ex[k]) + 1 > n for ex in raw) for k, n in LENGTHS.items()}  # + EOS
    assert min(cut.values()) > 0
    warning = _pipeline(cache_dir).truncation
    assert f"{sum(cut.values())} features of the 60 cached examples" in warning
    assert f"h3_a inputs {cut['inputs']}" in warning
    assert f"h3_a targets {cut['targets']}" in warning
