"""First-fit packing against seqio's packer: same format, same examples, fewer padding tokens."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax import packing

LENGTHS = {"inputs": 64, "targets": 16}


def _examples(n, seed=0):
    """Random examples of nonzero tokens (seqio's packer treats 0 as padding), some longer
    than LENGTHS so trimming is exercised."""
    rng = np.random.default_rng(seed)
    return [
        {
            "inputs": rng.integers(1, 100, rng.integers(1, 80), dtype=np.int32),
            "targets": rng.integers(1, 100, rng.integers(1, 20), dtype=np.int32),
            "idx": np.int32(i),
        }
        for i in range(n)
    ]


def _dataset(examples):
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
            "idx": tf.TensorSpec([], tf.int32),
        },
    )


def _unpack(rows):
    """The (inputs, targets) token tuples held by packed rows, checking the layout."""
    out = []
    for row in rows:
        segments = {}
        for key, length in LENGTHS.items():
            tokens, ids, pos = (row[key], row[f"{key}_segment_ids"], row[f"{key}_positions"])
            assert tokens.shape == ids.shape == pos.shape == (length,)
            assert all(a.dtype == np.int32 for a in (tokens, ids, pos))
            used = np.flatnonzero(ids)
            assert np.array_equal(used, np.arange(len(used))), "padding only at the end"
            assert not tokens[len(used) :].any() and not pos[len(used) :].any()
            segments[key] = [tokens[ids == s] for s in range(1, ids.max() + 1)]
            for s, seg in enumerate(segments[key], 1):
                assert np.array_equal(pos[ids == s], np.arange(len(seg)))
        assert len(segments["inputs"]) == len(segments["targets"])
        out += [tuple(map(tuple, pair)) for pair in zip(segments["inputs"], segments["targets"])]
    return out


def _pack(examples, **kwargs):
    return list(packing.pack_dataset(_dataset(examples), LENGTHS, **kwargs).as_numpy_iterator())


def _efficiency(rows):
    tokens = sum(np.count_nonzero(r[k]) for r in rows for k in LENGTHS)
    return tokens / (len(rows) * sum(LENGTHS.values()))


def test_every_example_lands_once_trimmed_as_seqio_trims():
    examples = _examples(500)
    rows = _pack(examples)
    trimmed = seqio.utils.trim_and_pad_dataset(_dataset(examples), LENGTHS)
    expected = [
        (tuple(e["inputs"][e["inputs"] != 0]), tuple(e["targets"][e["targets"] != 0]))
        for e in trimmed.as_numpy_iterator()
    ]
    assert collections.Counter(_unpack(rows)) == collections.Counter(expected)


def test_pads_less_than_seqio_packing_the_same_stream():
    examples = _examples(2000, seed=1)
    ours = _pack(examples)
    theirs = list(
        seqio.utils.trim_and_pack_dataset(_dataset(examples), LENGTHS).as_numpy_iterator()
    )
    assert collections.Counter(_unpack(ours)) == collections.Counter(_unpack(theirs))
    assert _efficiency(ours) > _efficiency(theirs) + 0.05
    assert set(ours[0]) == set(theirs[0])  # seqio's keys: "idx" dropped as seqio drops it


def test_deterministic_and_one_open_row_still_packs():
    examples = _examples(300, seed=2)
    first = _pack(examples)
    again = _pack(examples)
    assert all(
        all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(first, again, strict=True)
    )
    single = _pack(examples, open_rows=1)
    assert collections.Counter(_unpack(single)) == collections.Counter(_unpack(first))
    assert _efficiency(first) > _efficiency(single)


def test_no_open_rows_is_refused():
    with pytest.raises(ValueError, match="open_rows=0"):
        packing.pack_dataset(_dataset(_examples(1)), LENGTHS, open_rows=0)


@pytest.mark.parametrize("name", ["EncDecFeatureConverter", "PrefixLMFeatureConverter"])
def test_converters_give_seqio_features(name):
    """The model features of our converters: seqio's keys, shapes and dtypes, packed or not."""
    examples = [{k: e[k][:n] for k, n in LENGTHS.items()} for e in _examples(200, seed=3)]
    ds = lambda: tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in LENGTHS},
    )
    for pack in (True, False):
        ours = getattr(packing, name)(pack=pack)(ds(), LENGTHS)
        theirs = getattr(seqio, name)(pack=pack)(ds(), LENGTHS)
        assert ours.element_spec.keys() == theirs.element_spec.keys()
        for key, spec in theirs.element_spec.items():
            assert ours.element_spec[key].dtype == spec.dtype, key
        if not pack:  # unpacked conversion is seqio's own
            for a, b in zip(ours.as_numpy_iterator(), theirs.as_numpy_iterator(), strict=True):
                assert all(np.array_equal(a[k], b[k]) for k in a)
