"""Per-task evaluation during and after training: decode-and-score through seqio's own
Evaluator (greedy, sampled, or self-consistent), and teacher-forced loss / token accuracy."""

from __future__ import annotations

import collections
import datetime
import functools
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import seqio

from flan_jax import data, partitioning, predict, trainer
from tasks.metrics import CHOICES

log = logging.getLogger(__name__)

TaskMetrics = dict[str, dict[str, float]]


def majority_vote(answers: Sequence[str]) -> int:
    """Index of the sample self-consistency keeps: the first one whose answer is the most
    frequent. Empty answers (nothing could be extracted) get no vote unless all are empty;
    a tie goes to the answer that appeared first, so the vote is deterministic."""
    counts = collections.Counter(answer for answer in answers if answer != "")
    if not counts:
        return 0
    best = max(counts.values())
    return next(i for i, answer in enumerate(answers) if counts.get(answer) == best)


class Progress:
    """Examples done of a total, rate and ETA, printed to stderr by process 0 at most every
    `every_s` seconds (and when done)."""

    def __init__(self, name: str, total: int, *, every_s: float = 10.0):
        self.name, self.total, self.every_s = name, total, every_s
        self.done = 0
        self._start = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if jax.process_index() != 0 or (now - self._last < self.every_s and self.done < self.total):
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        eta = datetime.timedelta(seconds=round((self.total - self.done) / max(rate, 1e-9)))
        print(
            f"eval {self.name}: {self.done}/{self.total} examples "
            f"({100 * self.done / max(self.total, 1):.0f}%)  {rate:.2f} examples/s  ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


class PredictionEvaluator:
    """Decodes a task's (or every subtask of a mixture's) split, then applies the tasks' own
    postprocessors and metric functions, so scores mean what the task author meant. Tasks with
    score metrics (MMLU direct) are rank-classified instead: each of an example's CHOICES is
    scored as its target (`_score_fn`).

    Greedy by default; `temperature` > 0 samples, `num_beams` runs beam search. `num_samples`
    = k > 1 is self-consistency:
    k sampled outputs per example, each reduced to its answer by the task's postprocessor, and
    the sample with the majority answer (`majority_vote`) is the one scored.
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
        temperature: float = 0.0,
        num_samples: int = 1,
        num_beams: int | None = None,
        seed: int = 0,
        show_progress: bool = False,
    ):
        partitioner.check_batch_size(batch_size)
        model.check_feature_lengths(
            task_feature_lengths, f"feature lengths of {mixture_or_task_name}"
        )
        data.get_mixture_or_task(mixture_or_task_name)
        if num_samples > 1 and temperature <= 0:
            raise ValueError(
                f"self-consistency over num_samples={num_samples} needs temperature > 0 (got "
                f"{temperature}): greedy samples are all the same"
            )
        self.name = mixture_or_task_name
        self.batch_size = batch_size
        self.num_samples = num_samples
        self._show_progress = show_progress
        self._batch_sharding = partitioner.batch_sharding()
        self._evaluator = seqio.Evaluator(
            mixture_or_task_name,
            feature_converter=data.feature_converter(model, pack=False),
            eval_split=split,
            sequence_length=dict(task_feature_lengths),
            num_examples=num_examples,
            async_compute_metrics=False,
        )
        # seqio calls predict_fn once per task with that task's cached dataset: knowing which
        # task it is gives self-consistency the task's postprocessor.
        tasks = {task.name: task for task in self._evaluator.eval_tasks}
        self._task_of_dataset = {
            id(ds): tasks[name] for name, ds in self._evaluator.cached_model_datasets.items()
        }
        self.num_eval_examples = sum(
            int(ds.reduce(0, lambda count, _: count + 1))
            for ds in self._evaluator.cached_task_datasets.values()
        )
        settings = predict.DecodeSettings(
            max_decode_length=task_feature_lengths["targets"],
            temperature=temperature,
            num_decodes=num_samples,
            num_beams=num_beams,
            seed=seed,
        )
        self._predict = predict.predict_function(model, partitioner, params_shardings, settings)
        # Replicated, so that every host reads every row's score.
        self._score = partitioner.partition(
            model.score_batch,
            in_shardings=(params_shardings, self._batch_sharding),
            out_shardings=partitioner.replicated_sharding(),
        )
        self._model = model
        self._lengths = dict(task_feature_lengths)
        self._progress: Progress | None = None
        self._batch_index = 0
        self._outputs = {}
        self._truncated: dict[str, dict[str, int]] = {}

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self._evaluator.eval_tasks]

    def _predict_fn(self, params, indexed_ds) -> list[tuple[int, list[int]]]:
        task = self._task_of_dataset[id(indexed_ds)]
        outputs = []
        for indices, features in indexed_ds.batch(self.batch_size).as_numpy_iterator():
            n = len(indices)
            # Every feature goes in (the model takes what it decodes from).
            batch = data.place(data.pad_rows(features, self.batch_size), self._batch_sharding)
            predictions = np.asarray(self._predict(params, batch, np.int32(self._batch_index)))
            self._batch_index += 1
            if self.num_samples > 1:
                predictions = np.stack([self._vote(task, samples) for samples in predictions[:n]])
            self._count_truncated(task, predictions[:n])
            outputs.extend(zip(indices.tolist(), predictions[:n].tolist()))
            if self._progress is not None:
                self._progress.update(n)
        return outputs

    def _score_fn(self, params, indexed_ds) -> list[tuple[int, list[float]]]:
        """Rank classification, as hendrycks/test's evaluate.py scores MMLU: every choice of an
        example is scored as the answer to its inputs by the model's `score_batch` (the summed
        log-likelihood of the choice's tokens, without EOS: for a one-token letter its
        log-softmax at the answer position), one row per choice. Returns each example's
        scores, which the task's metric ranks."""
        task = self._task_of_dataset[id(indexed_ds)]
        vocabulary = task.output_features["targets"].vocabulary
        examples = list(self._evaluator.cached_task_datasets[task.name].as_numpy_iterator())
        rows = [
            {"inputs": example["inputs"], "targets": vocabulary.encode(choice.decode("utf-8"))}
            for example in examples
            for choice in example[CHOICES]
        ]
        # Row index where each example's choices end.
        ends = np.cumsum([len(example[CHOICES]) for example in examples])
        scores, done = [], 0
        for batch in data.model_batches(self._model, rows, self._lengths, self.batch_size):
            n = min(self.batch_size, len(rows) - len(scores))
            placed = data.place(batch, self._batch_sharding)
            scores.extend(np.asarray(self._score(params, placed))[:n])
            if self._progress is not None:
                now = int(np.searchsorted(ends, len(scores), side="right"))
                self._progress.update(now - done)
                done = now
        return [
            (index, example_scores.tolist())
            for index, example_scores in enumerate(np.split(np.asarray(scores), ends[:-1]))
        ]

    def _count_truncated(self, task: seqio.Task, predictions: np.ndarray) -> None:
        """Counts the scored predictions [n, length] that reached the decode length without
        EOS: a chain of thought cut there has no answer."""
        eos_id = task.output_features["targets"].vocabulary.eos_id
        counts = self._truncated.setdefault(
            task.name,
            {"truncated": 0, "predictions": 0, "decode_length": self._lengths["targets"]},
        )
        counts["truncated"] += int(np.sum(~np.any(predictions == eos_id, axis=-1)))
        counts["predictions"] += len(predictions)

    def truncated(self) -> dict[str, dict[str, int]]:
        """The last evaluation's {task: {"truncated", "predictions", "decode_length"}} for
        every generated task: how many of its scored predictions reached `decode_length`
        tokens without EOS (rank-classified tasks generate nothing and are not listed)."""
        return {name: dict(counts) for name, counts in self._truncated.items()}

    @staticmethod
    def _vote(task: seqio.Task, samples: np.ndarray) -> np.ndarray:
        """The tokens of the sample self-consistency keeps among [num_samples, length]."""
        vocabulary = task.output_features["targets"].vocabulary
        texts = [vocabulary.decode(sample.tolist()) for sample in samples]
        answers = [str(task.postprocess_fn(text, example=None, is_target=False)) for text in texts]
        return samples[majority_vote(answers)]

    def evaluate(self, params, step: int | None = None) -> TaskMetrics:
        """{task name: {metric name: value}} for every task with metrics."""
        self._batch_index = 0  # The same samples every time for the same params.
        self._truncated = {}
        if self._show_progress:
            self._progress = Progress(self.name, self.num_eval_examples)
        metrics, self._outputs = self._evaluator.evaluate(
            compute_metrics=True,
            step=step,
            predict_fn=functools.partial(self._predict_fn, params),
            score_fn=functools.partial(self._score_fn, params),
        )
        return {
            task: {
                name: float(getattr(value, "value", value)) for name, value in task_metrics.items()
            }
            for task, task_metrics in metrics.result().items()
        }

    def predictions(self) -> dict[str, list[dict]]:
        """The last evaluation's outputs, decoded: {task: [{"inputs", "targets", "prediction"}]}
        in split order, for reading what the model wrote and what the metric compared. A
        rank-classified example's prediction is its highest-scored choice, beside "scores"."""
        results = {}
        for task in self._evaluator.eval_tasks:
            vocabulary = task.output_features["targets"].vocabulary
            outputs = self._outputs[task.name]
            examples = self._evaluator.cached_task_datasets[task.name].as_numpy_iterator()
            results[task.name] = []
            for i, example in enumerate(examples):
                result = {
                    "inputs": example["inputs_pretokenized"].decode("utf-8"),
                    "targets": example["targets_pretokenized"].decode("utf-8"),
                }
                if seqio.metrics.ModelOutputType.SCORE in outputs:
                    scores = list(outputs[seqio.metrics.ModelOutputType.SCORE][i])
                    choice = example[CHOICES][int(np.argmax(scores))]
                    result.update(prediction=choice.decode("utf-8"), scores=scores)
                else:
                    tokens = outputs[seqio.metrics.ModelOutputType.PREDICTION][i]
                    result["prediction"] = vocabulary.decode(list(tokens))
                results[task.name].append(result)
        return results


class SuiteEvaluator:
    """Decode-and-score over several mixtures, e.g. the paper's six benchmark suites, each
    with its own feature lengths; self-consistency for the chosen ones (the CoT suites)."""

    def __init__(
        self,
        suites: Sequence[str],
        feature_lengths: Mapping[str, Mapping[str, int]],
        model,
        partitioner: partitioning.Partitioner,
        params_shardings: Any,
        *,
        batch_size: int,
        split: str,
        num_examples: int | None = None,
        self_consistency_suites: Sequence[str] = (),
        num_samples: int = 1,
        temperature: float = 0.0,
        num_beams: int | None = None,
        seed: int = 0,
        show_progress: bool = False,
    ):
        """`num_beams` beam-searches the suites that self-consistency does not sample."""
        missing = [suite for suite in suites if suite not in feature_lengths]
        if missing:
            raise ValueError(
                f"no feature lengths for suites {missing}; add them to the suite feature "
                f"lengths (has {sorted(feature_lengths)})"
            )
        self._evaluators = {}
        for suite in suites:
            sampled = suite in self_consistency_suites and num_samples > 1
            self._evaluators[suite] = PredictionEvaluator(
                suite,
                feature_lengths[suite],
                model,
                partitioner,
                params_shardings,
                batch_size=batch_size,
                split=split,
                num_examples=num_examples,
                temperature=temperature if sampled else 0.0,
                num_samples=num_samples if sampled else 1,
                num_beams=None if sampled else num_beams,
                seed=seed,
                show_progress=show_progress,
            )

    def evaluate(self, params, step: int | None = None) -> dict[str, TaskMetrics]:
        """{suite: {task: {metric: value}}}."""
        return {
            suite: evaluator.evaluate(params, step=step)
            for suite, evaluator in self._evaluators.items()
        }

    def predictions(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        """{suite: PredictionEvaluator.predictions()} of the last evaluation."""
        return {suite: evaluator.predictions() for suite, evaluator in self._evaluators.items()}

    def truncated(self) -> dict[str, dict[str, dict[str, int]]]:
        """{suite: PredictionEvaluator.truncated()} of the last evaluation."""
        return {suite: evaluator.truncated() for suite, evaluator in self._evaluators.items()}


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
            self._batches[task.name] = [
                data.pad_rows(batch, batch_size)
                for batch in ds.batch(batch_size).as_numpy_iterator()
            ]

    def evaluate(self, params) -> TaskMetrics:
        results = {}
        for task, batches in self._batches.items():
            # Summed on the host: every process reads the replicated sums of each batch.
            sums = {}
            for batch in batches:
                step_sums = jax.device_get(
                    self._eval_step(params, data.place(batch, self._sharding))
                )
                for name, value in step_sums.items():
                    sums[name] = sums.get(name, 0.0) + np.float64(value)
            metrics = trainer.normalize_sums(sums)
            results[task] = {
                "teacher_forced/loss": float(metrics["loss"]),
                "teacher_forced/token_accuracy": float(metrics["accuracy"]),
            }
        return results


def format_table(columns: Mapping[str, TaskMetrics]) -> str:
    """A markdown table: one row per task and metric, one column per evaluation (e.g. before,
    after), so a user sees at a glance what training changed."""
    labels = list(columns)
    rows = sorted(
        {
            (task, metric)
            for results in columns.values()
            for task, m in results.items()
            for metric in m
        }
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
