"""Per-task evaluation during and after training: decode-and-score through seqio's own
Evaluator, and teacher-forced loss / token accuracy."""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from flan_jax import data, partitioning, trainer

log = logging.getLogger(__name__)

TaskMetrics = dict[str, dict[str, float]]


class PredictionEvaluator:
    """Greedy-decodes a task's (or every subtask of a mixture's) split, then applies the tasks'
    own postprocessors and metric functions, so scores mean what the task author meant.
    """

    def __init__(
        self,
        mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        model,
        partitioner: partitioning.Partitioner,
        params_shardings: Any,
        *,
        batch_size: int,
        split: str = "validation",
        num_examples: int | None = None,
    ):
        partitioner.check_batch_size(batch_size)
        data.get_mixture_or_task(mixture_or_task_name)
        self.batch_size = batch_size
        self._batch_sharding = partitioner.batch_sharding()
        self._evaluator = seqio.Evaluator(
            mixture_or_task_name,
            feature_converter=data.feature_converter(model, pack=False),
            eval_split=split,
            sequence_length=dict(task_feature_lengths),
            num_examples=num_examples,
            async_compute_metrics=False,
        )
        self._predict = partitioner.partition(
            functools.partial(model.predict_batch, max_decode_length=task_feature_lengths["targets"]),
            in_shardings=(params_shardings, self._batch_sharding),
            out_shardings=partitioner.replicated_sharding(),
        )

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self._evaluator.eval_tasks]

    def _predict_fn(self, params, indexed_ds) -> list[tuple[int, list[int]]]:
        outputs = []
        for indices, features in indexed_ds.batch(self.batch_size).as_numpy_iterator():
            n = len(indices)
            # Every feature goes in (the model takes what it decodes from); the last batch
            # is padded to the compiled batch size with empty rows.
            padded = {}
            for name, value in features.items():
                padded[name] = np.zeros((self.batch_size, *value.shape[1:]), value.dtype)
                padded[name][:n] = value
            batch = data.place(padded, self._batch_sharding)
            predictions = np.asarray(self._predict(params, batch))
            outputs.extend(zip(indices.tolist(), predictions[:n].tolist()))
        return outputs

    def evaluate(self, params, step: int | None = None) -> TaskMetrics:
        """{task name: {metric name: value}} for every task with metrics."""
        metrics, _ = self._evaluator.evaluate(
            compute_metrics=True,
            step=step,
            predict_fn=functools.partial(self._predict_fn, params),
        )
        return {
            task: {name: float(getattr(value, "value", value)) for name, value in task_metrics.items()}
            for task, task_metrics in metrics.result().items()
        }


class TeacherForcedEvaluator:
    """Loss and token accuracy on each task's split, teacher-forced: no decoding, so cheap
    enough to run every few hundred steps. The batches are built once and kept in memory."""

    def __init__(
        self,
        mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        model,
        train: trainer.Trainer,
        *,
        batch_size: int,
        split: str = "validation",
        num_examples: int | None = None,
    ):
        self._eval_step = train.eval_step
        self._sharding = train.partitioner.batch_sharding()
        tasks = seqio.dataset_providers.get_subtasks(data.get_mixture_or_task(mixture_or_task_name))
        self._batches = {}
        for task in tasks:
            if split not in task.splits:
                continue
            ds = seqio.get_dataset(
                task.name,
                task_feature_lengths=dict(task_feature_lengths),
                dataset_split=split,
                shuffle=False,
                num_epochs=1,
                feature_converter=data.feature_converter(model, pack=False),
            )
            if num_examples is not None:
                ds = ds.take(num_examples)
            # Padding rows have zero loss weight, so they change no sum.
            ds = ds.batch(batch_size).map(lambda b: _pad_rows(b, batch_size))
            self._batches[task.name] = list(ds.as_numpy_iterator())

    def evaluate(self, params) -> TaskMetrics:
        results = {}
        for task, batches in self._batches.items():
            # Summed on the host: every process reads the replicated sums of each batch.
            sums = {}
            for batch in batches:
                step_sums = jax.device_get(self._eval_step(params, data.place(batch, self._sharding)))
                for name, value in step_sums.items():
                    sums[name] = sums.get(name, 0.0) + np.float64(value)
            metrics = trainer.normalize_sums(sums)
            results[task] = {
                "teacher_forced/loss": float(metrics["loss"]),
                "teacher_forced/token_accuracy": float(metrics["accuracy"]),
            }
        return results


def _pad_rows(batch, batch_size):
    return {
        name: tf.pad(value, [[0, batch_size - tf.shape(value)[0]]] + [[0, 0]] * (value.shape.rank - 1))
        for name, value in batch.items()
    }


def format_table(columns: Mapping[str, TaskMetrics]) -> str:
    """A markdown table: one row per task and metric, one column per evaluation (e.g. before,
    after), so a user sees at a glance what training changed."""
    labels = list(columns)
    rows = sorted(
        {(task, metric) for results in columns.values() for task, m in results.items() for metric in m}
    )
    lines = [
        "| task | metric | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for task, metric in rows:
        cells = [columns[label].get(task, {}).get(metric) for label in labels]
        lines.append(
            f"| {task} | {metric} | "
            + " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
            + " |"
        )
    return "\n".join(lines)
