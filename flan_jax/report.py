"""Benchmark results as the paper reports them: the six suite scores, their normalized
average (see `tasks.suites`), a markdown table and a chart beside the paper's rows, and a JSON
record."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from tasks.suites import COLUMNS, PAPER_ROWS, RANDOM_BASELINES

TaskMetrics = Mapping[str, Mapping[str, float]]

NORMALIZED_AVERAGE = "norm. avg"


def suite_score(task_metrics: TaskMetrics) -> float:
    """A suite's score: the mean over its tasks of each task's (single) metric, in percent."""
    values = []
    for task, metrics in task_metrics.items():
        if len(metrics) != 1:
            raise ValueError(
                f"task {task} reports {sorted(metrics)}; a suite task must report one score"
            )
        values.extend(metrics.values())
    if not values:
        raise ValueError("suite_score got no tasks: the suite evaluated nothing")
    return float(np.mean(values))


def normalized_score(suite: str, score: float) -> float:
    baseline = RANDOM_BASELINES[suite]
    return 100.0 * (score - baseline) / (100.0 - baseline)


def normalized_average(scores: Mapping[str, float]) -> float | None:
    """The paper's summary number, or None unless all six suites were evaluated."""
    if set(scores) != set(COLUMNS):
        return None
    return float(np.mean([normalized_score(suite, scores[suite]) for suite in COLUMNS]))


def markdown_table(label: str, scores: Mapping[str, float]) -> str:
    """The paper's six columns and the normalized average: this model's row under the paper's."""
    header = ["model", *COLUMNS.values(), NORMALIZED_AVERAGE]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]

    def cells(values: Mapping[str, float], average: float | None) -> str:
        shown = [values.get(suite) for suite in COLUMNS] + [average]
        return " | ".join("-" if v is None else f"{v:.1f}" for v in shown)

    for name, (values, average) in PAPER_ROWS.items():
        lines.append(f"| {name} (paper) | {cells(values, average)} |")
    lines.append(f"| **{label}** | {cells(scores, normalized_average(scores))} |")
    return "\n".join(lines)


def plot_chart(path: str, label: str, scores: Mapping[str, float]) -> None:
    """Grouped bars per column: the paper's Flan-T5 sizes, then this model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = {name: (values, avg) for name, (values, avg) in PAPER_ROWS.items() if "T5" in name}
    rows[label] = (scores, normalized_average(scores))
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
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(
    output_dir: str, label: str, results: Mapping[str, TaskMetrics], details: Mapping | None = None
) -> dict[str, str]:
    """results.json, results.md and results.png in output_dir; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    scores = {suite: suite_score(tasks) for suite, tasks in results.items()}
    record = {
        "model": label,
        "scores": scores,
        "normalized_scores": {suite: normalized_score(suite, s) for suite, s in scores.items()},
        "normalized_average": normalized_average(scores),
        "random_baselines": RANDOM_BASELINES,
        "tasks": results,
        **(details or {}),
    }
    paths = {name: os.path.join(output_dir, f"results.{name}") for name in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(record, f, indent=2)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(label, scores) + "\n")
    plot_chart(paths["png"], label, scores)
    return paths


def write_predictions(output_dir: str, predictions: Mapping[str, Mapping[str, list]]) -> str:
    """OUTPUT_DIR/predictions/{suite}.jsonl: one line per example, with its task; returns the
    directory."""
    directory = os.path.join(output_dir, "predictions")
    os.makedirs(directory, exist_ok=True)
    for suite, by_task in predictions.items():
        with open(os.path.join(directory, f"{suite}.jsonl"), "w", encoding="utf-8") as f:
            for task, examples in by_task.items():
                for example in examples:
                    f.write(json.dumps({"task": task, **example}, ensure_ascii=False) + "\n")
    return directory


def summary_scalars(results: Mapping[str, TaskMetrics]) -> dict[str, dict[str, float]]:
    """TensorBoard scalars by writer name: per suite its score and each task's metric, and the
    normalized average when all six suites are there."""
    scalars = {}
    scores = {}
    for suite, task_metrics in results.items():
        scores[suite] = suite_score(task_metrics)
        scalars[f"benchmarks/{suite}"] = {
            "score": scores[suite],
            **{
                f"{task}/{metric}": value
                for task, metrics in task_metrics.items()
                for metric, value in metrics.items()
            },
        }
    average = normalized_average(scores)
    if average is not None:
        scalars["benchmarks"] = {"normalized_average": average}
    return scalars
