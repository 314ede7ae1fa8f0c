"""First-fit packing in TensorFlow ops: examples go into the first of several open rows they fit.

seqio's packer keeps one open row and closes it as soon as an example does not fit, and it
closes the last row of every 128-example window. Keeping `open_rows` rows open, and closing
the one nearest to full only when a new example fits none of them, cuts the padding on the
demo mixture (benchmarks/PROFILE.md). The rows are built by a `tf.data` scan, so packing runs
in tf.data's threads without Python or the GIL, and its output is seqio's packed format: seqio's
feature converters turn it into model features unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import seqio
import tensorflow as tf

OPEN_ROWS = 64


class _Rows:
    """The scan's state and step. `open_rows` slots each hold one row being filled, as its
    tokens then its segment ids in one buffer (`rows`, [slot, 2 * sum(lengths)]), with its
    tokens per feature (`used`) and its number of examples (`count`; 0 is an empty slot).

    A step writes one example with a single scatter and never zeroes a slot: a closed slot
    just restarts at offset 0, and `render` masks whatever lies past `used`. So a step costs
    one copy of the buffer, whatever the number of features.
    """

    def __init__(self, lengths: Mapping[str, int], open_rows: int):
        self.lengths = dict(lengths)
        self.capacity = tf.constant(list(self.lengths.values()), tf.int32)
        self.offsets = dict(zip(self.lengths, itertools.accumulate([0, *self.lengths.values()])))
        self.width = sum(self.lengths.values())
        self.open_rows = open_rows

    def initial(self) -> dict[str, tf.Tensor]:
        return {
            "rows": tf.zeros([self.open_rows, 2 * self.width], tf.int32),
            "used": tf.zeros([self.open_rows, len(self.lengths)], tf.int32),
            "count": tf.zeros([self.open_rows], tf.int32),
        }

    def step(self, state, example):
        """Places one example in the first open slot it fits, else an empty slot, else the
        slot nearest to full (by its fullest feature), which is closed first. A flush marker
        closes the fullest open slot instead. Emits up to two rows: the slot closed to make
        room, and the slot the example filled."""
        rows, used, count = state["rows"], state["used"], state["count"]
        sizes = tf.stack([tf.size(example[k]) for k in self.lengths])
        flush = example["flush"]
        open_ = count > 0
        fits = tf.reduce_all(used + sizes <= self.capacity, axis=1) & open_
        fullness = tf.reduce_max(tf.cast(used, tf.float32) / tf.cast(self.capacity, tf.float32), 1)
        fullest = tf.argmax(tf.where(open_, fullness, -1.0), output_type=tf.int32)
        empty = tf.argmax(tf.cast(~open_, tf.int32), output_type=tf.int32)
        first_fit = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
        r = tf.where(
            tf.reduce_any(fits), first_fit, tf.where(tf.reduce_any(~open_), empty, fullest)
        )
        r = tf.where(flush, fullest, r)
        close = open_[r] & tf.where(flush, True, ~fits[r])
        closed = (rows[r], used[r])

        start = tf.where(close, 0, used[r])
        segment = tf.where(close, 0, count[r]) + 1
        columns = tf.concat(
            [self.offsets[k] + start[i] + tf.range(sizes[i]) for i, k in enumerate(self.lengths)], 0
        )
        tokens = tf.concat([example[k] for k in self.lengths], 0)
        columns = tf.concat([columns, self.width + columns], 0)
        values = tf.concat([tokens, tf.fill(tf.shape(tokens), segment)], 0)
        index = tf.stack([tf.fill(tf.shape(columns), r), columns], axis=1)
        rows = tf.tensor_scatter_nd_update(rows, index, values)

        filled_used = start + sizes
        full = tf.reduce_all(filled_used == self.capacity) & ~flush
        keep = ~full & ~flush
        used = tf.tensor_scatter_nd_update(used, [[r]], [tf.where(keep, filled_used, 0)])
        count = tf.tensor_scatter_nd_update(count, [[r]], [tf.where(keep, segment, 0)])
        emitted = {
            "rows": tf.stack([closed[0], rows[r]]),
            "used": tf.stack([closed[1], filled_used]),
            "emit": tf.stack([close, full]),
        }
        return {"rows": rows, "used": used, "count": count}, emitted

    def render(self, emitted) -> dict[str, tf.Tensor]:
        """One emitted slot -> seqio's packed layout: KEY, KEY_segment_ids (1, 2, ...; 0 is
        padding) and KEY_positions (0-based within each example), zero past the used tokens."""
        out = {}
        for i, (k, length) in enumerate(self.lengths.items()):
            valid = tf.range(length) < emitted["used"][i]
            begin = self.offsets[k]
            tokens = tf.where(valid, emitted["rows"][begin : begin + length], 0)
            ids = tf.where(valid, emitted["rows"][self.width + begin :][:length], 0)
            # Segments are numbered in order, so each example starts where its id first occurs.
            starts = tf.math.unsorted_segment_min(tf.range(length), ids, length + 1)
            out[k] = tokens
            out[f"{k}_segment_ids"] = ids
            out[f"{k}_positions"] = tf.where(valid, tf.range(length) - tf.gather(starts, ids), 0)
        return out


def pack_dataset(
    dataset: tf.data.Dataset, lengths: Mapping[str, int], open_rows: int = OPEN_ROWS
) -> tf.data.Dataset:
    """Packs a tf.data stream of unpadded examples (1-D int features) into rows of exactly
    `lengths`, trimming each feature as seqio trims. Deterministic: the same stream gives the
    same rows. Features not in `lengths` are dropped, as seqio's packer drops them."""
    if open_rows < 1:
        raise ValueError(f"open_rows={open_rows}: first-fit packing needs at least one open row")
    rows = _Rows(lengths, open_rows)
    examples = dataset.map(
        lambda ex: {
            **{k: tf.cast(ex[k][:n], tf.int32) for k, n in lengths.items()},
            "flush": False,
        },
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # At the end of a finite stream, one flush marker per slot closes the rows still open.
    marker = {**{k: tf.zeros([0], tf.int32) for k in lengths}, "flush": True}
    examples = examples.concatenate(tf.data.Dataset.from_tensors(marker).repeat(open_rows))
    packed = examples.scan(rows.initial(), rows.step).unbatch()
    return packed.filter(lambda row: row["emit"]).map(
        rows.render, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


class FirstFitPacking:
    """Mixin for a seqio FeatureConverter: packs with `pack_dataset` instead of seqio's
    one-open-row packer; unpacked (pack=False) conversion is seqio's own."""

    def _pack_or_pad(self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]):
        if not self.pack:
            return super()._pack_or_pad(ds, packed_lengths)
        return pack_dataset(ds, packed_lengths)


class EncDecFeatureConverter(FirstFitPacking, seqio.EncDecFeatureConverter):
    pass


class PrefixLMFeatureConverter(FirstFitPacking, seqio.PrefixLMFeatureConverter):
    pass
