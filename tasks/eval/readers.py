"""What every benchmark module shares: where its data lives, strict file readers that name
`file:row` on malformed input, and the seqio registration of a generation task.

Registration reads no file: the data is read the first time a task's split is asked for, so
importing the suites works without any benchmark on disk, and a missing directory fails then,
naming the environment variable that sets it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf
from etils import epath

from tasks import files

Example = dict[str, str | list[str]]


def data_dir(env_var: str, benchmark: str) -> str:
    """$`env_var` (`python -m flan_jax.evaluate` sets it from gin), local or gs://; an error
    naming it when it is unset or not a directory."""
    path = os.environ.get(env_var)
    if not path:
        raise FileNotFoundError(
            f"{benchmark}: no data directory set; export {env_var}=/path/to/{benchmark.lower()} "
            f"(or pass --gin.{benchmark.upper()}_DIR to flan_jax.evaluate); the layout is in "
            "README.md, 'Evaluating on the paper's benchmarks'."
        )
    if not epath.Path(path).is_dir():
        raise FileNotFoundError(f"{benchmark}: data directory {env_var}={path!r} does not exist.")
    return path


def open_text(path: str, what: str, newline: str | None = None):
    """The UTF-8 file `path` (local or gs://), or FileNotFoundError naming `what`."""
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"{what}: {path} not found.")
    return files.open_text(path, newline=newline)


def read_csv(path: str, num_fields: int) -> list[list[str]]:
    """Rows of a headerless CSV that must each have `num_fields` fields."""
    rows = []
    with open_text(path, "CSV file", newline="") as f:
        for number, row in enumerate(csv.reader(f), 1):
            rows.append(_check_fields(row, num_fields, "comma", f"{path}:{number}"))
    return rows


def read_tsv(path: str, num_fields: int) -> list[list[str]]:
    """Rows of a headerless TSV, split on tabs only (questions hold quotes and commas)."""
    rows = []
    with open_text(path, "TSV file") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            rows.append(_check_fields(line.split("\t"), num_fields, "tab", f"{path}:{number}"))
    return rows


def _check_fields(row: list[str], num_fields: int, separator: str, where: str) -> list[str]:
    if len(row) != num_fields:
        raise ValueError(
            f"{where}: expected {num_fields} {separator}-separated fields, got {len(row)}: "
            f"{row!r:.80}"
        )
    return row


def read_json(path: str, what: str = "JSON file"):
    with open_text(path, what) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def field(record, key: str, kind: type, where: str):
    """record[key], which must be a `kind`; else ValueError naming `where` (file:row)."""
    if not isinstance(record, dict) or not isinstance(record.get(key), kind):
        raise ValueError(f"{where}: expected a {kind.__name__} {key!r} field, got {record!r:.80}")
    return record[key]


def trim_inputs_left(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
    """Keeps the last tokens of an over-long few-shot prompt: the query is at the end, and the
    feature converter would otherwise cut it off (EOS is appended after this)."""
    del output_features
    limit = sequence_length["inputs"] - 1

    def trim(example):
        return {**example, "inputs": example["inputs"][-limit:]}

    return dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


# A few-shot example's prompts, with all of its exemplars first and one fewer each after.
PROMPTS = "prompts"


def fit_prompts(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
    """Makes each example's inputs its first PROMPTS entry that fits `inputs` (with the EOS
    appended after this): whole exemplars are dropped, never the header or the question, as
    hendrycks/test's evaluate.py does for MMLU. When even the last does not fit, it stays for
    `trim_inputs_left`."""
    vocabulary = output_features["inputs"].vocabulary
    limit = sequence_length["inputs"] - 1

    def fit(example):
        prompts = example[PROMPTS]
        lengths = tf.map_fn(
            lambda prompt: tf.size(vocabulary.encode_tf(prompt)),
            prompts,
            fn_output_signature=tf.int32,
        )
        fits = tf.cast(tf.where(lengths <= limit)[:, 0], tf.int32)
        fitting = tf.concat([fits, [tf.size(lengths) - 1]], 0)
        prompt = prompts[fitting[0]]
        return {**example, "inputs": vocabulary.encode_tf(prompt), "inputs_pretokenized": prompt}

    return dataset.map(fit, num_parallel_calls=tf.data.AUTOTUNE)


def register_task(
    name: str,
    examples: Callable[[str], list[Example]],
    *,
    splits: Sequence[str],
    vocabulary: seqio.Vocabulary,
    postprocess_fn: Callable[..., object],
    metric_fn: Callable[..., Mapping[str, float]],
    list_features: Sequence[str] = (),
) -> None:
    """(Re)registers a task whose examples carry rendered "inputs" and "targets" strings (plus
    string-list `list_features`, e.g. the gold answers a metric needs). Examples with PROMPTS
    among their list features get the longest prompt that fits (`fit_prompts`)."""
    signature = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)}
    signature.update({key: tf.TensorSpec([None], tf.string) for key in list_features})

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # Evaluation reads every example in file order.
        rows = examples(split)
        return tf.data.Dataset.from_generator(
            lambda: ({key: row[key] for key in signature} for row in rows),
            output_signature=signature,
        )

    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
        preprocessors=[
            seqio.preprocessors.tokenize,
            *([fit_prompts] if PROMPTS in list_features else []),
            trim_inputs_left,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=features,
        postprocess_fn=postprocess_fn,
        metric_fns=[metric_fn],
    )


def register_suite(
    mixture: str,
    subtasks: Sequence[str],
    keep: Sequence[str] | None,
    examples: Callable[[str, str], list[Example]],
    *,
    benchmark: str,
    **task_kwargs,
) -> None:
    """Registers task `{mixture}_{subtask}` for every subtask (its examples are
    `examples(subtask, split)`) and the mixture over those in `keep` (all when None).
    `task_kwargs` go to `register_task`."""
    kept = select(keep, subtasks, benchmark)
    for subtask in subtasks:
        register_task(
            f"{mixture}_{subtask}",
            lambda split, subtask=subtask: examples(subtask, split),
            **task_kwargs,
        )
    register_mixture(mixture, [f"{mixture}_{subtask}" for subtask in kept])


def select(keep: Sequence[str] | None, known: Sequence[str], benchmark: str) -> Sequence[str]:
    """The subtasks to put in a suite's mixture: `keep` (validated) or all of them."""
    if keep is None:
        return known
    unknown = sorted(set(keep) - set(known))
    if unknown or not keep:
        raise ValueError(
            f"{benchmark} subtasks {unknown or list(keep)} are not among its {len(known)} "
            f"subtasks: {', '.join(known)}"
        )
    return [name for name in known if name in keep]


def register_mixture(name: str, task_names: Sequence[str]) -> None:
    """Every task weighted equally: a suite's score is the mean of its tasks' scores."""
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(task, 1.0) for task in task_names])
