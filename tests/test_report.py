"""The results report: per-task normalization, per-question averages, table and chart."""

import json
import math
import os
import re

import gin
import numpy as np
import pytest
import seqio
from eval_testing import write_benchmarks
from matplotlib import image

from flan_jax import report
from tasks import suites
from tasks.eval import bbh
from tasks.metrics import NUM_QUESTIONS


def test_each_task_is_normalized_against_its_own_chance_rate():
    results = {
        "bbh_direct": {"bbh_direct_a": {"accuracy": 75.0}, "bbh_direct_b": {"accuracy": 10.0}},
        "mmlu_direct": {
            "mmlu_direct_x": {"accuracy": 50.0, NUM_QUESTIONS: 2.0},
            "mmlu_direct_y": {"accuracy": 100.0, NUM_QUESTIONS: 6.0},
        },
    }
    rates = {
        "bbh_direct_a": 50.0,
        "bbh_direct_b": 0.0,
        "mmlu_direct_x": 25.0,
        "mmlu_direct_y": 25.0,
    }
    summary = report.summarize(results, rates)
    # BBH: (75 - 50) / 50 = 50 and 10 / 100 = 10, averaged over tasks; the raw mean is 42.5.
    assert summary["scores"]["bbh_direct"] == 42.5
    assert summary["normalized_scores"]["bbh_direct"] == pytest.approx(30.0)
    # MMLU: over questions (1 + 6 of 8 right), as evaluate.py prints it; per subject 75.
    assert summary["scores"]["mmlu_direct"] == 87.5
    assert summary["task_means"]["mmlu_direct"] == 75.0
    assert summary["normalized_scores"]["mmlu_direct"] == pytest.approx((87.5 - 25) / 75 * 100)
    assert summary["normalized_average"] is None  # not all six suites
    assert summary["chance_rates"] == rates


def test_normalized_average_is_the_mean_of_the_six_suites():
    normalized = dict(zip(suites.SUITES, [10.0, 20.0, 30.0, 40.0, 50.0, -30.0]))
    assert report.normalized_average(normalized) == 20.0
    assert report.normalized_average({k: v for k, v in normalized.items() if k != "mgsm"}) is None
    assert report.normalized_score(25.0, 25.0) == 0.0
    assert report.normalized_score(100.0, 100 / 3) == 100.0


def test_a_suite_task_reports_one_score():
    with pytest.raises(ValueError, match="must report one score"):
        report.suite_score("bbh_cot", {"a": {"accuracy": 1.0, "f1": 2.0}})


# What the fixture suites hold, beside each benchmark's real layout.
FIXTURE_TASKS = {
    "mmlu_direct": ["mmlu_direct_anatomy"],
    "mmlu_cot": ["mmlu_cot_anatomy"],
    "bbh_direct": [
        f"bbh_direct_{t}"
        for t in ("logical_deduction_three_objects", "causal_judgement", "object_counting")
    ],
    "bbh_cot": [
        f"bbh_cot_{t}"
        for t in ("logical_deduction_three_objects", "causal_judgement", "object_counting")
    ],
    "tydiqa": ["tydiqa_swahili"],
    "mgsm": ["mgsm_de", "mgsm_zh"],
}


def _answers(task: str, example: dict, perfect: bool) -> list:
    """What a predictor outputs for the example: the right answer, or every answer a uniform
    random guesser may give (equally likely). Written from each benchmark's format, not from
    the readers."""
    text = example["inputs"].decode()
    target = example["targets"].decode()
    if task.startswith("mmlu_direct"):  # rank classification: scores of A, B, C, D
        picks = ["ABCD".index(target)] if perfect else range(4)
        return [np.eye(4)[pick] for pick in picks]
    if task.startswith("mmlu_cot"):
        return [f"The answer is ({letter})." for letter in ([target] if perfect else "ABCD")]
    if task.startswith("bbh"):
        options = re.findall(r"^(\([A-Z]\)) ", text, re.MULTILINE) or re.findall(
            r"^- (.*)$", text, re.MULTILINE
        )
        guesses = [target] if perfect else options or ["a guess"]
        if task.startswith("bbh_cot"):
            return [f"Step by step. So the answer is {guess}." for guess in guesses]
        return guesses
    if task.startswith("tydiqa"):
        return [example["answers"][0].decode() if perfect else "a guess"]
    return [f"The answer is {target if perfect else 987654321}."]  # mgsm


def _expected_metrics(task_name: str, perfect: bool) -> dict[str, float]:
    """The task's own postprocessor and metric over its test split, averaged over every way the
    predictor can answer (each example's answers cycled over their least common multiple),
    which is the expected score of a uniform random guesser."""
    task = seqio.get_mixture_or_task(task_name)
    examples = list(task.source.get_dataset("test").as_numpy_iterator())
    answers = [_answers(task_name, example, perfect) for example in examples]
    targets = [task.postprocess_fn(e["targets"], example=e, is_target=True) for e in examples]
    (metric,) = task.metric_fns
    runs = []
    for j in range(math.lcm(*map(len, answers))):
        outputs = [a[j % len(a)] for a in answers]
        if task.score_metric_fns:
            runs.append(metric(targets, outputs))
        else:
            predictions = [
                task.postprocess_fn(o, example=e, is_target=False)
                for o, e in zip(outputs, examples)
            ]
            runs.append(metric(targets, predictions))
    return {name: float(np.mean([run[name] for run in runs])) for name in runs[0]}


@pytest.mark.parametrize("perfect, expected", [(False, 0.0), (True, 100.0)])
def test_random_guessing_scores_0_and_a_perfect_model_100_on_every_suite(
    tmp_path, monkeypatch, perfect, expected
):
    for env, path in write_benchmarks(tmp_path).items():
        monkeypatch.setenv(env, path)
    results = {
        suite: {task: _expected_metrics(task, perfect) for task in task_names}
        for suite, task_names in FIXTURE_TASKS.items()
    }
    summary = report.summarize(results)  # chance rates from the tasks' data
    assert summary["chance_rates"]["bbh_cot_logical_deduction_three_objects"] == 100 / 3
    assert summary["chance_rates"]["bbh_direct_causal_judgement"] == 50.0
    assert summary["chance_rates"]["bbh_direct_object_counting"] == 0.0
    for suite in suites.SUITES:
        assert summary["normalized_scores"][suite] == pytest.approx(expected, abs=1.0), suite
    assert summary["normalized_average"] == pytest.approx(expected, abs=1.0)


def test_bbh_counts_the_options_its_inputs_list():
    assert bbh.num_options("Which?\nOptions:\n(A) x\n(B) y\n(C) z") == 3
    assert bbh.num_options("Valid?\nOptions:\n- valid \n- invalid") == 2
    assert bbh.num_options("not ( True ) and ( False ) is") == 0


def test_report_files(tmp_path):
    results = {
        suite: {f"{suite}_x": {"accuracy": 40.0}, f"{suite}_y": {"accuracy": 60.0}}
        for suite in suites.SUITES
    }
    for suite in suites.PER_QUESTION_SUITES:
        results[suite] = {
            f"{suite}_x": {"accuracy": 40.0, NUM_QUESTIONS: 3.0},
            f"{suite}_y": {"accuracy": 60.0, NUM_QUESTIONS: 1.0},
        }
    rates = {task: 20.0 for tasks in results.values() for task in tasks}
    paths = report.write_report(str(tmp_path), "mine", results, {"checkpoint": "c"}, rates)
    record = json.loads(open(paths["json"]).read())
    assert record["scores"] == {suite: 50.0 for suite in suites.SUITES} | {
        "mmlu_direct": 45.0,
        "mmlu_cot": 45.0,
    }
    assert record["task_means"]["mmlu_direct"] == 50.0
    assert record["normalized_scores"]["tydiqa"] == pytest.approx(37.5)  # (50 - 20) / 80
    assert record["normalized_average"] == pytest.approx((4 * 37.5 + 2 * 31.25) / 6)
    assert record["checkpoint"] == "c" and record["tasks"] == results
    assert record["chance_rates"] == rates
    table = open(paths["md"]).read().splitlines()
    assert table[0] == (
        "Per-subject means (the MMLU columns average over questions): MMLU direct 50.0, "
        "MMLU CoT 50.0."
    )
    assert (
        table[2]
        == "| model | MMLU direct | MMLU CoT | BBH direct | BBH CoT | TyDiQA | MGSM | norm. avg |"
    )
    assert table[8] == "| Flan-T5-XXL (paper) | 55.1 | 48.6 | 45.3 | 41.4 | 19.0 | 4.9 | 23.7 |"
    assert table[-1] == "| **mine** | 45.0 | 45.0 | 50.0 | 50.0 | 50.0 | 50.0 | 35.4 |"
    assert image.imread(paths["png"]).shape[:2] == (450, 1200)
    scalars = report.summary_scalars(results, rates)
    assert scalars["benchmarks/mmlu_direct"] == {
        "score": 45.0,
        "mmlu_direct_x/accuracy": 40.0,
        "mmlu_direct_y/accuracy": 60.0,
    }
    assert scalars["benchmarks"]["normalized_average"] == pytest.approx(
        record["normalized_average"]
    )


def test_gin_files_reach_the_suite_names_as_constants_beside_their_own_macros():
    @gin.configurable
    def evaluate_suites(names=(), sampled=(), chosen=()):
        return names, sampled, chosen

    try:
        gin.parse_config(
            "SUITES = ['mgsm']\n"
            "evaluate_suites.names = %PAPER_SUITES\n"
            "evaluate_suites.sampled = %tasks.suites.PAPER_CHAIN_OF_THOUGHT_SUITES\n"
            "evaluate_suites.chosen = %SUITES"
        )
        assert evaluate_suites() == (suites.SUITES, suites.CHAIN_OF_THOUGHT_SUITES, ["mgsm"])
    finally:
        gin.clear_config()


def test_no_gin_file_binds_a_macro_that_a_suites_constant_would_shadow():
    gin_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
    macros = set()
    for root, _, files in os.walk(gin_dir):
        for name in files:
            with open(os.path.join(root, name)) as f:
                macros |= set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", f.read(), re.MULTILINE))
    assert "SUITES" in macros  # the files were read
    shadowed = {name.rsplit(".", 1)[-1] for name in suites.GIN_CONSTANTS} & macros
    assert not shadowed, f"gin constants {shadowed} would replace the gin files' macros"
