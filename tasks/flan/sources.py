"""Data sources of the Flan collection: TFDS datasets, natural-instructions task JSON files,
and the chain-of-thought TSV files, local or on gs:// (tasks.files).

Registration never reads data: a source checks its files when a dataset is built, so every
task registers on a machine without the data, and one whose data is missing fails at use
with the directory or environment variable to set. Malformed files fail with `file:line`.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from tasks import files

NIV2_DIR_ENV = "FLAN_JAX_NIV2_DIR"
COT_DIR_ENV = "FLAN_JAX_COT_DIR"
TFDS_DIR_ENV = "TFDS_DATA_DIR"

# NIV2 tasks derived from MMLU (the paper removes these 44): the natural-instructions files
# are named taskNNN_mmmlu_answer_generation_<subject>.json and list MMLU as their Source.
_MMLU_PATTERN = re.compile(r"mmlu|hendrycks", re.IGNORECASE)
_NIV2_SOURCE_PATTERN = re.compile(r'"Source"\s*:\s*\[([^\]]*)\]')
# "Source" sits near the top of a task file; reading this much finds it without the instances.
_NIV2_HEAD_BYTES = 8192
# Task files are read this many bytes at a time (more only for a longer value), and their
# datasets this many instances at a time.
_NIV2_READ_BYTES = 1 << 16
_NIV2_BLOCK = 128
_JSON_DECODER = json.JSONDecoder()
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


class LazyCountSource(seqio.FunctionDataSource):
    """A FunctionDataSource whose example counts are looked up on demand (None: unknown)."""

    def __init__(self, dataset_fn, splits, count_fn: Callable[[str], int | None]):
        super().__init__(dataset_fn, splits=splits)
        self._count_fn = count_fn

    def num_input_examples(self, split: str) -> int | None:
        return self._count_fn(split)


def tfds_source(
    tfds_name: str, splits=("train", "validation"), tfds_splits: Mapping[str, str] | None = None
) -> LazyCountSource:
    """A TFDS dataset read from TFDS_DATA_DIR (never downloaded at training time).

    tfds_splits: seqio split -> the TFDS split it reads, for a dataset without a split of
    that name (winogrande's training data is `train_xl`)."""
    tfds_splits = dict(tfds_splits or {})

    def builder():
        return tfds.builder(tfds_name, data_dir=os.environ.get(TFDS_DIR_ENV), try_gcs=False)

    def dataset_fn(split, shuffle_files, seed=None):
        split = tfds_splits.get(split, split)
        try:
            return builder().as_dataset(
                split=split,
                shuffle_files=shuffle_files,
                read_config=tfds.ReadConfig(shuffle_seed=seed),
            )
        except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
            raise ValueError(
                f"TFDS dataset {tfds_name!r} (split {split!r}) is not prepared in "
                f"{os.environ.get(TFDS_DIR_ENV) or '~/tensorflow_datasets'}: build it with "
                f"`tfds build {tfds_name.split(':')[0]}` and point {TFDS_DIR_ENV} at its data_dir."
            ) from e

    def count(split):
        split = tfds_splits.get(split, split)
        try:
            splits = builder().info.splits
            return splits[split].num_examples if split in splits else None
        except Exception:  # An unprepared dataset has no split info: the count is unknown.
            return None

    return LazyCountSource(dataset_fn, splits, count)


def data_dir(env: str, override: str | None = None) -> str | None:
    """`override` (from gin or a caller), else the environment variable, else None."""
    return override or os.environ.get(env) or None


# ---- chain of thought TSVs -----------------------------------------------------------------


def cot_path(directory: str, dataset: str) -> str:
    return os.path.join(directory, f"{dataset}_train.tsv")


@functools.cache
def read_cot_tsv(path: str) -> tuple[dict[str, str], ...]:
    """Rows of a FLAN cot_data TSV: `question<TAB>answer<TAB>rationale`, no header, newlines
    inside fields written as a literal backslash-n."""
    rows = []
    with files.open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) != 3 or not all(c.strip() for c in columns):
                raise ValueError(
                    f"{path}:{number}: expected 3 non-empty tab-separated columns "
                    f"(question, answer, rationale), got {len(columns)}: {line[:80]!r}. Fix or "
                    "remove the row; write newlines inside a field as \\n."
                )
            question, answer, rationale = (c.replace("\\n", "\n").strip() for c in columns)
            rows.append({"question": question, "answer": answer, "rationale": rationale})
    if not rows:
        raise ValueError(
            f"{path}: no rows; a CoT TSV needs question<TAB>answer<TAB>rationale lines."
        )
    return tuple(rows)


def cot_source(dataset: str, directory: Callable[[], str | None]) -> LazyCountSource:
    """The train split of one CoT dataset, from `<directory>/<dataset>_train.tsv`."""

    def path():
        where = directory()
        if where is None:
            raise ValueError(
                f"CoT dataset {dataset!r} needs its TSV: set {COT_DIR_ENV} (or the gin macro "
                "COT_DIR) to the directory of FLAN's cot_data/*.tsv files."
            )
        found = cot_path(where, dataset)
        if not epath.Path(found).exists():
            raise ValueError(
                f"CoT dataset {dataset!r}: {found} does not exist; put {dataset}_train.tsv "
                f"(question<TAB>answer<TAB>rationale) in {where} or point {COT_DIR_ENV} elsewhere."
            )
        return found

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed  # One file; the Task shuffles examples.
        return _rows_dataset(read_cot_tsv(path()))

    def count(split):
        try:
            return len(read_cot_tsv(path())) if split == "train" else None
        except ValueError:
            return None

    return LazyCountSource(dataset_fn, ("train",), count)


# ---- natural instructions v2 -----------------------------------------------------------------


def niv2_task_files(directory: str) -> dict[str, str]:
    """name -> path of each task file in a natural-instructions checkout (its `tasks/` folder,
    or the folder itself), minus the MMLU-derived tasks."""
    folder = epath.Path(directory) / "tasks"
    folder = folder if folder.is_dir() else folder.parent
    if not folder.is_dir():
        raise ValueError(
            f"{NIV2_DIR_ENV}={directory} is not a directory; point it at a checkout of "
            "github.com/allenai/natural-instructions (holding tasks/taskNNN_*.json)."
        )
    found = {}
    for name in sorted(child.name for child in folder.iterdir()):
        if re.fullmatch(r"task\d+_\w+\.json", name):
            path = str(folder / name)
            if not is_mmlu_task(path):
                found[name.removesuffix(".json")] = path
    if not found:
        raise ValueError(
            f"No taskNNN_*.json files in {folder}; point {NIV2_DIR_ENV} at a natural-instructions "
            "checkout."
        )
    return found


def is_mmlu_task(path: str) -> bool:
    """Whether a NIV2 task derives from MMLU: its file name or its "Source" names MMLU."""
    if _MMLU_PATTERN.search(os.path.basename(path)):
        return True
    with files.open_text(path, errors="replace") as f:
        found = _NIV2_SOURCE_PATTERN.search(f.read(_NIV2_HEAD_BYTES))
    return bool(found and _MMLU_PATTERN.search(found.group(1)))


@functools.cache
def niv2_definition(path: str) -> str:
    """A task file's "Definition" (a string, or a list of strings joined), checked."""
    where = 1
    for key, value, line in _niv2_fields(_JsonStream(path)):
        if key == "Definition":
            if isinstance(value, list):
                value = " ".join(str(d) for d in value)
            if isinstance(value, str) and value.strip():
                return value.strip()
            where = line
            break
    raise ValueError(f'{path}:{where}: "Definition" must be a non-empty string or list of strings.')


@functools.cache
def niv2_positive_examples(path: str) -> tuple[dict[str, str], ...]:
    """A task file's "Positive Examples" as {"input", "output", "explanation"} strings
    (those with an input and an output; none when the file has no such field)."""
    for key, value, _ in _niv2_fields(_JsonStream(path)):
        if key == "Positive Examples" and isinstance(value, list):
            fields = ("input", "output", "explanation")
            examples = [
                e for e in value if isinstance(e, dict) and e.get("input") and e.get("output")
            ]
            return tuple({f: str(e.get(f, "")).strip() for f in fields} for e in examples)
    return ()


def niv2_instances(path: str) -> Iterator[dict[str, str]]:
    """A task file's instances as {"input", "output"} (the first of its outputs), in file
    order, read one at a time: a task file is never held in memory."""
    return _checked_instances(_JsonStream(path))


def niv2_count(path: str) -> int:
    """The number of instances of a task file, checking each (one streaming pass, cached:
    mixture rates ask for every task's count)."""
    return _niv2_index(path)[0]


def niv2_source(path: str) -> LazyCountSource:
    """A task file's instances with its definition, read from the file a block of
    `_NIV2_BLOCK` instances at a time while the dataset is iterated (a mixture holds
    thousands of these datasets at once)."""

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        definition = niv2_definition(path)
        _, starts = _niv2_index(path)  # Checks every instance: a bad file fails here, not mid-run.
        ends = starts[1:] + (-1,)

        def read(start, end):
            rows = _niv2_block(path, int(start), int(end))
            return (
                np.array([row["input"] for row in rows], dtype=object),
                np.array([row["output"] for row in rows], dtype=object),
            )

        def block(start, end):
            inputs, outputs = tf.numpy_function(
                read, [start, end], (tf.string, tf.string), stateful=False
            )
            inputs.set_shape([None])
            outputs.set_shape([None])
            return {"input": inputs, "output": outputs}

        blocks = tf.data.Dataset.from_tensor_slices((list(starts), list(ends)))
        rows = blocks.map(block).unbatch()  # The definition joins each row, not each block.
        return rows.map(lambda row: {"definition": tf.constant(definition), **row})

    def count(split):
        return niv2_count(path) if split == "train" else None

    return LazyCountSource(dataset_fn, ("train",), count)


@functools.cache
def _niv2_index(path: str) -> tuple[int, tuple[int, ...]]:
    """The instance count of a task file and the byte offset of every `_NIV2_BLOCK`-th
    instance (where each block of the dataset starts reading), in one checking pass."""
    stream = _JsonStream(path)
    count, starts = 0, []
    for _ in _checked_instances(stream):
        if count % _NIV2_BLOCK == 0:
            starts.append(stream.last_value_byte())
        count += 1
    return count, tuple(starts)


def _niv2_block(path: str, start: int, end: int) -> list[dict[str, str]]:
    """The instances from byte `start` (where one begins) to `end` (-1: the end of the
    "Instances" list), as `niv2_instances` reads them."""
    stream = _JsonStream(path, start, end)
    rows = []
    while stream.peek() not in ("", "]"):
        rows.append(_instance_fields(path, stream.value(), len(rows), 0))
        if stream.peek() == ",":
            stream.expect(",")
    return rows


def _checked_instances(stream: _JsonStream) -> Iterator[dict[str, str]]:
    number = -1
    for key, instance, line in _niv2_fields(stream):
        if key == "Instances":
            number += 1
            yield _instance_fields(stream.path, instance, number, line)
    if number < 0:
        raise ValueError(f'{stream.path}:1: no "Instances"; a NIV2 task needs at least one.')


def _instance_fields(path: str, instance, number: int, line: int) -> dict[str, str]:
    outputs = instance.get("output") if isinstance(instance, dict) else None
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(outputs, list) or not outputs or not isinstance(instance.get("input"), str):
        raise ValueError(
            f'{path}:{line}: Instances[{number}] needs a string "input" and a non-empty '
            f'"output" list; got {str(instance)[:80]!r}. Fix or remove that instance.'
        )
    return {"input": instance["input"], "output": str(outputs[0])}


def _niv2_fields(stream: _JsonStream) -> Iterator[tuple[str, object, int]]:
    """(key, value, line) of each top-level field of a task file, in file order, except that
    "Instances" comes as one ("Instances", instance, line) per instance: only the current
    value is decoded, whatever the order of the keys."""
    path = stream.path
    if stream.peek() != "{":
        raise ValueError(f'{path}:1: expected a JSON object with "Definition" and "Instances".')
    for _ in stream.items("{", "}"):
        line = stream.line()
        key = stream.value()
        if not isinstance(key, str):
            raise stream.error("object keys must be strings")
        stream.expect(":")
        if key != "Instances":
            yield key, stream.value(), line
            continue
        if stream.peek() != "[":
            raise ValueError(f'{path}:{stream.line()}: "Instances" must be a list of objects.')
        for _ in stream.items("[", "]"):
            line = stream.line()
            yield key, stream.value(), line
    if stream.peek():
        raise stream.error("extra data after the top-level object")


class _JsonStream:
    """One JSON document read incrementally: `value()` decodes the next value from a buffer
    holding that value and at most one further read of the file.

    The file is opened for each read, so thousands of partly read streams (the tasks of a
    mixture) hold no file handles between reads.
    """

    def __init__(self, path: str, start: int = 0, end: int = -1):
        """Reads bytes `start` to `end` (-1: the end of the file) of the file at `path`."""
        self.path = path
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = start  # Bytes of the file read so far.
        self._end = end
        self._eof = False
        self._text = ""  # Decoded text from position 0 on is still unread or being decoded.
        self._pos = 0
        self._start = 0  # Where the last value decoded began.
        self._line = 1  # The line of position `_counted` in `_text`.
        self._counted = 0

    def peek(self) -> str:
        """The next character after whitespace ("" at the end of the file), not consumed."""
        while True:
            self._pos = _JSON_WHITESPACE.match(self._text, self._pos).end()
            if self._pos < len(self._text) or not self._read():
                return self._text[self._pos : self._pos + 1]

    def expect(self, choices: str) -> str:
        found = self.peek()
        if not found or found not in choices:
            raise self.error(f"expected {' or '.join(repr(c) for c in choices)}")
        self._pos += 1
        return found

    def items(self, opening: str, closing: str) -> Iterator[None]:
        """Consumes an object or array, yielding before each item for the caller to read it."""
        self.expect(opening)
        if self.peek() == closing:
            self._pos += 1
            return
        while True:
            yield
            if self.expect(f",{closing}") == closing:
                return

    def value(self):
        self.peek()
        while True:
            try:
                value, end = _JSON_DECODER.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as e:
                if self._read():  # The value may continue in the next read.
                    continue
                raise self.error(e.msg, e.pos) from None
            # A number that ends the buffer may go on in the next read: decode it again then.
            if end < len(self._text) or not self._read():
                self._start, self._pos = self._pos, end
                return value

    def last_value_byte(self) -> int:
        """The byte offset in the file where the last value decoded began."""
        unread = self._text[self._start :].encode("utf-8") + self._decoder.getstate()[0]
        return self._offset - len(unread)

    def line(self) -> int:
        """The line of the next value or delimiter."""
        self.peek()
        return self._line_at(self._pos)

    def _line_at(self, pos: int) -> int:
        """The line of position `pos` of the text; `pos` never moves back."""
        self._line += self._text.count("\n", self._counted, pos)
        self._counted = pos
        return self._line

    def error(self, message: str, pos: int | None = None) -> ValueError:
        line = self._line_at(self._pos if pos is None else pos)
        return ValueError(
            f"{self.path}:{line}: invalid JSON ({message}); re-fetch the file from the "
            "natural-instructions repository."
        )

    def _read(self) -> bool:
        """Drops the text before the current position and appends the next read (as large as
        the unread text, so a value longer than a read takes a few reads, not quadratic
        time); False, changing nothing, at the end of the file."""
        if self._eof:
            return False
        try:
            with epath.Path(self.path).open("rb") as f:
                f.seek(self._offset)
                size = max(_NIV2_READ_BYTES, len(self._text) - self._pos)
                data = f.read(size if self._end < 0 else min(size, self._end - self._offset))
            self._eof = not data
            text = self._decoder.decode(data, final=self._eof)
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{self.path}: not UTF-8 ({e.reason} near byte {self._offset + e.start}); "
                "re-fetch the file from the natural-instructions repository."
            ) from None
        if self._eof:
            return False
        self._offset += len(data)
        self._line_at(self._pos)
        self._text = self._text[self._pos :] + text
        self._start = max(self._start - self._pos, 0)
        self._pos = self._counted = 0
        return True


def _rows_dataset(rows) -> tf.data.Dataset:
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return tf.data.Dataset.from_tensor_slices(columns)
