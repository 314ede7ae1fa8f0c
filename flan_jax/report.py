"""Benchmark results as the paper reports them: the six suite scores, their normalized
average (see `tasks.suites`), a markdown table and a chart beside the paper's rows, and a JSON
record."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from etils import epath

import tasks.eval
from tasks.metrics import NUM_QUESTIONS
from tasks.suites import COLUMNS, PAPER_ROWS, PER_QUESTION_SUITES

TaskMetrics = Mapping[str, Mapping[str, float]]

NORMALIZED_AVERAGE = "norm. avg"


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """A suite task's one score (its metric besides the question count)."""
    scores = [value for name, value in metrics.items() if name != NUM_QUESTIONS]
    if len(scores) != 1:
        raise ValueError(
            f"task {task} reports {sorted(metrics)}; a suite task must report one score"
        )
    return float(scores[0])


def _suite_mean(suite: str, task_metrics: TaskMetrics, values: Mapping[str, float]) -> float:
    """The mean of per-task `values` as the suite averages: over questions (each task weighted
    by its question count) for the PER_QUESTION_SUITES, else over tasks."""
    if not task_metrics:
        raise ValueError(f"suite {suite} has no tasks: it evaluated nothing")
    weights = [
        task_metrics[task][NUM_QUESTIONS] if suite in PER_QUESTION_SUITES else 1.0
        for task in task_metrics
    ]
    return float(np.average([values[task] for task in task_metrics], weights=weights))


def suite_score(suite: str, task_metrics: TaskMetrics) -> float:
    """A suite's score, in percent: MMLU's the mean over all its questions (what
    hendrycks/test's evaluate.py prints), the others' the mean of their tasks' scores."""
    scores = {task: task_score(task, metrics) for task, metrics in task_metrics.items()}
    return _suite_mean(suite, task_metrics, scores)


def task_mean(task_metrics: TaskMetrics) -> float:
    """The mean of a suite's task scores (for MMLU the per-subject mean, beside its score)."""
    return float(np.mean([task_score(task, metrics) for task, metrics in task_metrics.items()]))


def normalized_score(score: float, chance_rate: float) -> float:
    """0 at the chance rate, 100 at a perfect score."""
    return 100.0 * (score - chance_rate) / (100.0 - chance_rate)


def normalized_suite_score(
    suite: str, task_metrics: TaskMetrics, chance_rates: Mapping[str, float]
) -> float:
    """Each task normalized against its own chance rate, averaged as the suite's score is."""
    normalized = {
        task: normalized_score(task_score(task, metrics), chance_rates[task])
        for task, metrics in task_metrics.items()
    }
    return _suite_mean(suite, task_metrics, normalized)


def normalized_average(normalized_scores: Mapping[str, float]) -> float | None:
    """The paper's summary number: the mean of the six normalized suite scores, or None unless
    all six suites were evaluated."""
    if set(normalized_scores) != set(COLUMNS):
        return None
    return float(np.mean([normalized_scores[suite] for suite in COLUMNS]))


def summarize(
    results: Mapping[str, TaskMetrics], chance_rates: Mapping[str, float] | None = None
) -> dict:
    """Scores, per-task means, chance rates, normalized scores and their average of
    {suite: {task: metrics}}. `chance_rates` ({task: percent}) default to the tasks' own
    (`tasks.eval.chance_rate`)."""
    if chance_rates is None:
        chance_rates = {task: tasks.eval.chance_rate(task) for r in results.values() for task in r}
    normalized = {
        suite: normalized_suite_score(suite, task_metrics, chance_rates)
        for suite, task_metrics in results.items()
    }
    return {
        "scores": {suite: suite_score(suite, metrics) for suite, metrics in results.items()},
        "task_means": {suite: task_mean(metrics) for suite, metrics in results.items()},
        "chance_rates": {task: chance_rates[task] for r in results.values() for task in r},
        "normalized_scores": normalized,
        "normalized_average": normalized_average(normalized),
    }


def markdown_table(label: str, summary: Mapping) -> str:
    """The paper's six columns and the normalized average: this model's row (a `summarize`
    result) under the paper's, after a line with MMLU's per-subject means."""
    header = ["model", *COLUMNS.values(), NORMALIZED_AVERAGE]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]

    def cells(values: Mapping[str, float], average: float | None) -> str:
        shown = [values.get(suite) for suite in COLUMNS] + [average]
        return " | ".join("-" if v is None else f"{v:.1f}" for v in shown)

    for name, (values, average) in PAPER_ROWS.items():
        lines.append(f"| {name} (paper) | {cells(values, average)} |")
    scores = summary["scores"]
    lines.append(f"| **{label}** | {cells(scores, summary['normalized_average'])} |")
    means = [
        f"{COLUMNS[suite]} {summary['task_means'][suite]:.1f}"
        for suite in PER_QUESTION_SUITES
        if suite in scores
    ]
    if means:
        lines.insert(
            0, f"Per-subject means (the MMLU columns average over questions): {', '.join(means)}.\n"
        )
    return "\n".join(lines)


# {suite: {task: {"truncated", "predictions", "decode_length"}}}, as SuiteEvaluator.truncated().
Truncation = Mapping[str, Mapping[str, Mapping[str, int]]]


def truncation_notes(truncated: Truncation) -> list[str]:
    """One line per task with predictions that reached their decode length without EOS (a
    chain of thought cut there has no answer and scores as wrong); none when no task has."""
    return [
        f"{task}: {c['truncated']} of {c['predictions']} predictions reached the "
        f"{c['decode_length']}-token decode length without EOS (raise "
        f"SUITE_FEATURE_LENGTHS['{suite}']['targets'] if they were still reasoning)"
        for suite, by_task in truncated.items()
        for task, c in by_task.items()
        if c["truncated"]
    ]


def plot_chart(path: str, label: str, summary: Mapping) -> None:
    """Grouped bars per column: the paper's Flan-T5 sizes, then this model (a `summarize`
    result)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = {name: (values, avg) for name, (values, avg) in PAPER_ROWS.items() if "T5" in name}
    rows[label] = (summary["scores"], summary["normalized_average"])
    columns = [*COLUMNS.values(), NORMALIZED_AVERAGE]
    width = 0.8 / len(rows)
    figure, axes = plt.subplots(figsize=(12, 4.5))
    for i, (name, (values, average)) in enumerate(rows.items()):
        heights = [values.get(suite, np.nan) for suite in COLUMNS] + [
            np.nan if average is None else average
        ]
        axes.bar(
            np.arange(len(columns)) + (i - (len(rows) - 1) / 2) * width,
            heights,
            width,
            label=name,
            hatch="//" if name == label else None,
        )
    axes.set_xticks(np.arange(len(columns)), columns)
    axes.set_ylabel("score (%)")
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_title(f"{label} against the paper's Flan-T5 models")
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    with epath.Path(path).open("wb") as f:  # local or gs://
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def write_report(
    output_dir: str,
    label: str,
    results: Mapping[str, TaskMetrics],
    details: Mapping | None = None,
    chance_rates: Mapping[str, float] | None = None,
    truncated: Truncation | None = None,
) -> dict[str, str]:
    """results.json, results.md and results.png in output_dir; returns their paths.
    `chance_rates` as for `summarize`; `truncated` (per task, the predictions cut at the decode
    length) goes into results.json and, where not zero, under the table."""
    directory = epath.Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, chance_rates)
    record = {"model": label, **summary, "tasks": results, "truncated": truncated or {}}
    record.update(details or {})
    table = markdown_table(label, summary)
    notes = truncation_notes(truncated or {})
    if notes:
        table += "\n\n" + "\n".join(f"- {note}" for note in notes)
    paths = {name: os.fspath(directory / f"results.{name}") for name in ("json", "md", "png")}
    epath.Path(paths["json"]).write_text(json.dumps(record, indent=2))
    epath.Path(paths["md"]).write_text(table + "\n")
    plot_chart(paths["png"], label, summary)
    return paths


def write_predictions(output_dir: str, predictions: Mapping[str, Mapping[str, list]]) -> str:
    """OUTPUT_DIR/predictions/{suite}.jsonl: one line per example, with its task; returns the
    directory."""
    directory = epath.Path(output_dir) / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    for suite, by_task in predictions.items():
        with (directory / f"{suite}.jsonl").open("w", encoding="utf-8") as f:
            for task, examples in by_task.items():
                for example in examples:
                    f.write(json.dumps({"task": task, **example}, ensure_ascii=False) + "\n")
    return os.fspath(directory)


def summary_scalars(
    results: Mapping[str, TaskMetrics], chance_rates: Mapping[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """TensorBoard scalars by writer name: per suite its score and each task's metric, and the
    normalized average when all six suites are there. `chance_rates` as for `summarize`."""
    scalars = {
        f"benchmarks/{suite}": {
            "score": suite_score(suite, task_metrics),
            **{
                f"{task}/{metric}": value
                for task, metrics in task_metrics.items()
                for metric, value in metrics.items()
                if metric != NUM_QUESTIONS
            },
        }
        for suite, task_metrics in results.items()
    }
    if set(results) == set(COLUMNS):
        average = summarize(results, chance_rates)["normalized_average"]
        scalars["benchmarks"] = {"normalized_average": average}
    return scalars
