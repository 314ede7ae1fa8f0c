"""The results report: per-task normalization, per-question averages, table and chart."""

import json
import math
import os
import re

import gin
import numpy as np
import pytest
import seqio
from eval_testing import BBH_MORE, write_benchmarks
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
    "bbh_direct": [f"bbh_direct_{t}" for t in BBH_MORE],
    "bbh_cot": [f"bbh_cot_{t}" for t in BBH_MORE],
    "tydiqa": ["tydiqa_swahili"],
    "mgsm": ["mgsm_de", "mgsm_zh"],
}


def _answers(task: str, example: dict, perfect: bool, answer_space: list[str]) -> list:
    """What a predictor outputs for the example: the right answer, or every answer a uniform
    random guesser may give (equally likely): the options the input lists, else the task's
    `answer_space`. Written from each benchmark's format, not from the readers."""
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
        guesses = [target] if perfect else options or answer_space
        if task.startswith("bbh_cot"):
            return [f"Step by step. So the answer is {guess}." for guess in guesses]
        return guesses
    if task.startswith("tydiqa"):
        return [example["answers"][0].decode() if perfect else "a guess"]
    return [f"The answer is {target if perfect else 987654321}."]  # mgsm


def _answer_space(task_name: str) -> list[str]:
    """What a guesser picks from where a BBH input lists no options: True/False-like answers
    (every fixture task with two distinct answers), else a free-form guess."""
    subtask = task_name.split("_", 2)[-1]
    targets = sorted({e["target"] for e in BBH_MORE.get(subtask, [])})
    return targets if len(targets) == 2 else ["a guess"]


def _expected_metrics(task_name: str, perfect: bool) -> dict[str, float]:
    """The task's own postprocessor and metric over its test split, averaged over every way the
    predictor can answer (each example's answers cycled over their least common multiple),
    which is the expected score of a uniform random guesser."""
    task = seqio.get_mixture_or_task(task_name)
    examples = list(task.source.get_dataset("test").as_numpy_iterator())
    answer_space = _answer_space(task_name)
    answers = [_answers(task_name, example, perfect, answer_space) for example in examples]
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
    assert summary["chance_rates"]["bbh_cot_web_of_lies"] == 50.0  # Yes/No, none listed
    for suite in suites.SUITES:
        assert summary["normalized_scores"][suite] == pytest.approx(expected, abs=1.0), suite
    assert summary["normalized_average"] == pytest.approx(expected, abs=1.0)


def _bbh_task(root, task, examples):
    (root / "bbh").mkdir(exist_ok=True)
    (root / "bbh" / f"{task}.json").write_text(json.dumps({"examples": examples}))


def test_bbh_chance_rate_comes_from_the_answer_space(tmp_path, monkeypatch):
    """Options listed in the input; else the task's closed set of gold answers; else 0."""
    monkeypatch.setenv(bbh.DATA_DIR_ENV, str(tmp_path))
    binary = {
        "boolean_expressions": ("True", "False"),
        "sports_understanding": ("yes", "no"),
        "web_of_lies": ("Yes", "No"),
    }
    for task, (a, b) in binary.items():
        _bbh_task(
            tmp_path, task, [{"input": f"q{i}", "target": [a, b][i % 3 == 0]} for i in range(9)]
        )
    # Counts: eleven values, the rarest the answer of one example in 22 (< 10%): open.
    counts = [{"input": f"How many? {i}", "target": str(i % 11 + (i == 0))} for i in range(22)]
    _bbh_task(tmp_path, "object_counting", counts)
    _bbh_task(tmp_path, "word_sorting", [{"input": f"Sort {w}", "target": w} for w in "abcd"])
    # One input whose options were cut off in the data: the task's two answers stand in.
    snarks = [{"input": "Which?\nOptions:\n(A) x\n(B) y", "target": t} for t in ["(A)", "(B)"] * 2]
    snarks.append({"input": "Which?\nOptions:\n(A) The NB", "target": "(B)"})
    _bbh_task(tmp_path, "snarks", snarks)
    rates = {task: bbh.chance_rate(task) for task in [*binary, "object_counting", "snarks"]}
    assert rates == {**dict.fromkeys(binary, 50.0), "object_counting": 0.0, "snarks": 50.0}
    assert bbh.chance_rate("word_sorting") == 0.0
    assert bbh.closed_answers(["True", "False"] * 2) == {"True", "False"}
    assert bbh.closed_answers(["4"] * 5) == set()  # one answer is no choice
    assert bbh.closed_answers(["a", "b", "a"]) == set()  # "b" never recurs


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
    truncated = {
        "bbh_cot": {
            "bbh_cot_x": {"truncated": 3, "predictions": 8, "decode_length": 1024},
            "bbh_cot_y": {"truncated": 0, "predictions": 8, "decode_length": 1024},
        },
        "tydiqa": {"tydiqa_x": {"truncated": 0, "predictions": 5, "decode_length": 64}},
    }
    paths = report.write_report(
        str(tmp_path), "mine", results, {"checkpoint": "c"}, rates, truncated=truncated
    )
    record = json.loads(open(paths["json"]).read())
    assert record["truncated"] == truncated
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
    assert table[-3] == "| **mine** | 45.0 | 45.0 | 50.0 | 50.0 | 50.0 | 50.0 | 35.4 |"
    # Only the task with cut predictions is named.
    assert table[-2:] == [
        "",
        "- bbh_cot_x: 3 of 8 predictions reached the 1024-token decode length without EOS "
        "(raise SUITE_FEATURE_LENGTHS['bbh_cot']['targets'] if they were still reasoning)",
    ]
    assert report.truncation_notes({"tydiqa": truncated["tydiqa"]}) == []
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


def test_readme_lists_every_bbh_subtasks_chance_rate():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme) as f:
        rows = dict(re.findall(r"^\| ([a-z_]+) \| [^|]+ \| (\d+\.\d\d) \|$", f.read(), re.M))
    assert set(bbh.TASKS) <= set(rows)
    binary = ("boolean_expressions", "sports_understanding", "web_of_lies", "navigate", "snarks")
    assert {task: rows[task] for task in binary} == dict.fromkeys(binary, "50.00")
    free_form = ("dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting")
    assert {task: rows[task] for task in free_form} == dict.fromkeys(free_form, "0.00")
