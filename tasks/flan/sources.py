"""Data sources of the Flan collection: TFDS datasets, natural-instructions task JSON files,
and the chain-of-thought TSV files.

Registration never reads data: a source checks its files when a dataset is built, so every
task registers on a machine without the data, and one whose data is missing fails at use
with the directory or environment variable to set. Malformed files fail with `file:line`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

NIV2_DIR_ENV = "FLAN_JAX_NIV2_DIR"
COT_DIR_ENV = "FLAN_JAX_COT_DIR"
TFDS_DIR_ENV = "TFDS_DATA_DIR"

# NIV2 tasks derived from MMLU (the paper removes these 44): the natural-instructions files
# are named taskNNN_mmmlu_answer_generation_<subject>.json and list MMLU as their Source.
_MMLU_PATTERN = re.compile(r"mmlu|hendrycks", re.IGNORECASE)
_NIV2_SOURCE_PATTERN = re.compile(r'"Source"\s*:\s*\[([^\]]*)\]')
# "Source" sits near the top of a task file; reading this much finds it without the instances.
_NIV2_HEAD_BYTES = 8192


class LazyCountSource(seqio.FunctionDataSource):
    """A FunctionDataSource whose example counts are looked up on demand (None: unknown)."""

    def __init__(self, dataset_fn, splits, count_fn: Callable[[str], int | None]):
        super().__init__(dataset_fn, splits=splits)
        self._count_fn = count_fn

    def num_input_examples(self, split: str) -> int | None:
        return self._count_fn(split)


def tfds_source(tfds_name: str, splits=("train", "validation")) -> LazyCountSource:
    """A TFDS dataset read from TFDS_DATA_DIR (never downloaded at training time)."""

    def builder():
        return tfds.builder(tfds_name, data_dir=os.environ.get(TFDS_DIR_ENV), try_gcs=False)

    def dataset_fn(split, shuffle_files, seed=None):
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
    with open(path, encoding="utf-8") as f:
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
        if not os.path.exists(found):
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
    folder = os.path.join(directory, "tasks")
    folder = folder if os.path.isdir(folder) else directory
    if not os.path.isdir(folder):
        raise ValueError(
            f"{NIV2_DIR_ENV}={directory} is not a directory; point it at a checkout of "
            "github.com/allenai/natural-instructions (holding tasks/taskNNN_*.json)."
        )
    files = {}
    for name in sorted(os.listdir(folder)):
        if re.fullmatch(r"task\d+_\w+\.json", name):
            path = os.path.join(folder, name)
            if not is_mmlu_task(path):
                files[name.removesuffix(".json")] = path
    if not files:
        raise ValueError(
            f"No taskNNN_*.json files in {folder}; point {NIV2_DIR_ENV} at a natural-instructions "
            "checkout."
        )
    return files


def is_mmlu_task(path: str) -> bool:
    """Whether a NIV2 task derives from MMLU: its file name or its "Source" names MMLU."""
    if _MMLU_PATTERN.search(os.path.basename(path)):
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        found = _NIV2_SOURCE_PATTERN.search(f.read(_NIV2_HEAD_BYTES))
    return bool(found and _MMLU_PATTERN.search(found.group(1)))


@functools.cache
def read_niv2_task(path: str) -> dict:
    """A task file's definition and instances, checked: {"definition", "instances":
    [{"input", "output"}]} (the first of each instance's outputs)."""
    try:
        with open(path, encoding="utf-8") as f:
            task = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{e.lineno}: invalid JSON ({e.msg}); re-fetch the file from the "
            "natural-instructions repository."
        ) from None
    where = f"{path}:1"
    if not isinstance(task, dict):
        raise ValueError(f'{where}: expected a JSON object with "Definition" and "Instances".')
    definition = task.get("Definition")
    if isinstance(definition, list):
        definition = " ".join(str(d) for d in definition)
    if not isinstance(definition, str) or not definition.strip():
        raise ValueError(f'{where}: "Definition" must be a non-empty string or list of strings.')
    instances = []
    for number, instance in enumerate(task.get("Instances") or []):
        outputs = instance.get("output") if isinstance(instance, dict) else None
        outputs = [outputs] if isinstance(outputs, str) else outputs
        if (
            not isinstance(instance.get("input") if isinstance(instance, dict) else None, str)
            or not outputs
        ):
            raise ValueError(
                f'{where}: Instances[{number}] needs a string "input" and a non-empty '
                f'"output" list; got {str(instance)[:80]!r}. Fix or remove that instance.'
            )
        instances.append({"input": instance["input"], "output": str(outputs[0])})
    if not instances:
        raise ValueError(f'{where}: no "Instances"; a NIV2 task needs at least one.')
    return {"definition": definition.strip(), "instances": instances}


def niv2_source(path: str) -> LazyCountSource:
    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        task = read_niv2_task(path)
        rows = [{"definition": task["definition"], **i} for i in task["instances"]]
        return _rows_dataset(rows)

    def count(split):
        return len(read_niv2_task(path)["instances"]) if split == "train" else None

    return LazyCountSource(dataset_fn, ("train",), count)


def _rows_dataset(rows) -> tf.data.Dataset:
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return tf.data.Dataset.from_tensor_slices(columns)
