"""The results report: normalized average against the paper, table and chart."""

import json
import os
import re

import gin
import pytest
from matplotlib import image

from flan_jax import report
from tasks import suites


@pytest.mark.parametrize("model", list(suites.PAPER_ROWS))
def test_normalized_average_reproduces_every_paper_row(model):
    scores, published = suites.PAPER_ROWS[model]
    assert round(report.normalized_average(scores), 1) == published


def test_normalized_average_needs_all_six_suites():
    scores, _ = suites.PAPER_ROWS["Flan-T5-XXL"]
    assert report.normalized_average({k: v for k, v in scores.items() if k != "mgsm"}) is None
    # At a suite's random baseline its normalized score is 0; at 100 it is 100.
    assert report.normalized_score("mmlu_cot", 25.0) == 0.0
    assert report.normalized_score("bbh_cot", 100.0) == 100.0


def test_suite_score_is_the_mean_over_tasks():
    assert report.suite_score({"a": {"accuracy": 50.0}, "b": {"accuracy": 100.0}}) == 75.0
    with pytest.raises(ValueError, match="must report one score"):
        report.suite_score({"a": {"accuracy": 1.0, "f1": 2.0}})


def test_report_files(tmp_path):
    results = {
        suite: {f"{suite}_x": {"accuracy": 40.0}, f"{suite}_y": {"accuracy": 60.0}}
        for suite in suites.SUITES
    }
    paths = report.write_report(str(tmp_path), "mine", results, {"checkpoint": "c"})
    record = json.loads(open(paths["json"]).read())
    assert record["scores"] == {suite: 50.0 for suite in suites.SUITES}
    assert record["normalized_average"] == pytest.approx(
        report.normalized_average(record["scores"])
    )
    assert record["checkpoint"] == "c" and record["tasks"] == results
    table = open(paths["md"]).read().splitlines()
    assert (
        table[0]
        == "| model | MMLU direct | MMLU CoT | BBH direct | BBH CoT | TyDiQA | MGSM | norm. avg |"
    )
    assert table[6] == "| Flan-T5-XXL (paper) | 55.1 | 48.6 | 45.3 | 41.4 | 19.0 | 4.9 | 23.7 |"
    assert table[-1].startswith("| **mine** | 50.0 | 50.0 |")
    assert image.imread(paths["png"]).shape[:2] == (450, 1200)


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
