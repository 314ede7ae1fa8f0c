"""Raw dataset examples -> the fields Flan templates read, as tf.data map functions.

Classification datasets become `options` (the answer texts) and `answer` (one of them);
the helpers here keep each dataset's converter to a line or two. A row whose label is no
option's index has no options, and the registry drops it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf


def first(values: tf.Tensor) -> tf.Tensor:
    """The first string of a vector, or "" for an empty one."""
    return tf.concat([tf.reshape(values, [-1]), [""]], axis=0)[0]


def labelled(renames: Mapping[str, str], label: str, options: Sequence[str]):
    """A converter: copies raw features to template fields, and reads the class id in
    `label` as an index into `options`."""
    option_values = tf.constant(list(options))

    def convert(example):
        fields = {field: example[raw] for field, raw in renames.items()}
        return {**fields, **answered(option_values, tf.cast(example[label], tf.int64))}

    return convert


def choices(renames: Mapping[str, str], options_of, answer_index_of):
    """A converter for multiple choice: `options_of(example)` gives the option texts and
    `answer_index_of(example, options)` the correct one's index."""

    def convert(example):
        options = options_of(example)
        index = tf.cast(answer_index_of(example, options), tf.int64)
        fields = {field: example[raw] for field, raw in renames.items()}
        return {**fields, **answered(options, index)}

    return convert


def answered(options: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """`options` and the one at `index` as `answer`. An index that is no option's (SNLI's
    and MNLI's -1: annotators did not agree) gives no options and an empty answer: the
    registry drops examples without options, rather than teach an answer nobody gave."""
    count = tf.size(options, tf.int64)
    valid = (index >= 0) & (index < count)
    options = options[: tf.where(valid, count, 0)]
    return {"options": options, "answer": first(options[tf.maximum(index, 0) :][:1])}


def key_index(keys: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Position of `key` among `keys` (0 when absent)."""
    return tf.argmax(tf.cast(tf.equal(keys, key), tf.int32))


def text_pair(renames: Mapping[str, str], target: str, target_of=None):
    """A converter for generation: renamed fields plus `target_of(example)` (or the raw
    feature `target`) as the field `target`."""

    def convert(example):
        fields = {field: example[raw] for field, raw in renames.items()}
        value = target_of(example) if target_of else example[target]
        return {**fields, "target": value}

    return convert
