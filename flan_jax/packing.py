"""First-fit packing: examples go into the first of several open rows they fit.

seqio's packer keeps one open row and closes it as soon as an example does not fit, and it
closes the last row of every 128-example window. Keeping `open_rows` rows open and closing
the fullest one only when a new example fits none of them cuts the padding on the demo
mixture at matched lengths from 8.6% to 6.1% (benchmarks/PROFILE.md). The output is seqio's
packed format, so seqio's feature converters turn it into model features unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

OPEN_ROWS = 64


class _Row:
    """One packed row being filled: the examples it holds, per feature."""

    def __init__(self, lengths: Mapping[str, int]):
        self.lengths = lengths
        self.examples: list[dict[str, np.ndarray]] = []
        self.used = dict.fromkeys(lengths, 0)

    def fits(self, example: Mapping[str, np.ndarray]) -> bool:
        return all(self.used[k] + len(example[k]) <= self.lengths[k] for k in self.lengths)

    def add(self, example: Mapping[str, np.ndarray]) -> None:
        self.examples.append(example)
        for k in self.lengths:
            self.used[k] += len(example[k])

    def is_full(self) -> bool:
        return all(self.used[k] == self.lengths[k] for k in self.lengths)

    def tokens(self) -> int:
        return sum(self.used.values())

    def pack(self) -> dict[str, np.ndarray]:
        """seqio's packed layout: KEY, KEY_segment_ids (1, 2, ...; 0 is padding) and
        KEY_positions (0-based within each example), each padded with 0 to its length."""
        out = {}
        for k, length in self.lengths.items():
            pieces = [e[k] for e in self.examples]
            pad = length - self.used[k]
            out[k] = np.concatenate(pieces + [np.zeros(pad, np.int32)]).astype(np.int32)
            out[f"{k}_segment_ids"] = np.concatenate(
                [np.full(len(p), i, np.int32) for i, p in enumerate(pieces, 1)]
                + [np.zeros(pad, np.int32)]
            )
            out[f"{k}_positions"] = np.concatenate(
                [np.arange(len(p), dtype=np.int32) for p in pieces] + [np.zeros(pad, np.int32)]
            )
        return out


def pack_examples(
    examples: Iterable[Mapping[str, np.ndarray]],
    lengths: Mapping[str, int],
    open_rows: int = OPEN_ROWS,
) -> Iterator[dict[str, np.ndarray]]:
    """Packs examples (1-D int arrays per feature, trimmed to `lengths` as seqio trims) into
    rows of exactly `lengths`. Deterministic: the same stream gives the same rows."""
    if open_rows < 1:
        raise ValueError(f"open_rows={open_rows}: first-fit packing needs at least one open row")
    rows: list[_Row] = []
    for example in examples:
        example = {k: np.asarray(example[k])[:length] for k, length in lengths.items()}
        row = next((r for r in rows if r.fits(example)), None)
        if row is None:
            if len(rows) == open_rows:
                yield rows.pop(max(range(len(rows)), key=lambda i: rows[i].tokens())).pack()
            row = _Row(lengths)
            rows.append(row)
        row.add(example)
        if row.is_full():
            rows.remove(row)
            yield row.pack()
    for row in rows:
        yield row.pack()


def pack_dataset(
    dataset: tf.data.Dataset, lengths: Mapping[str, int], open_rows: int = OPEN_ROWS
) -> tf.data.Dataset:
    """`pack_examples` over a tf.data stream of unpadded examples; features not in `lengths`
    are dropped, as seqio's packer drops them."""
    signature = {
        f"{k}{suffix}": tf.TensorSpec([length], tf.int32)
        for k, length in lengths.items()
        for suffix in ("", "_segment_ids", "_positions")
    }
    return tf.data.Dataset.from_generator(
        lambda: pack_examples(dataset.as_numpy_iterator(), lengths, open_rows),
        output_signature=signature,
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
