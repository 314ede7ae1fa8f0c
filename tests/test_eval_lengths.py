"""The suites' decode lengths against the measured reference answers (gin/eval/
reference_lengths.json, written by `python -m tasks.eval.lengths`), and that measurement on
fixture data."""

import ast
import json
import os
import re

import pytest
from eval_testing import write_benchmarks

from tasks import demo
from tasks.eval import bbh, lengths, mmlu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURED = os.path.join(REPO, "gin", "eval", "reference_lengths.json")
# How much longer than the longest reference answer a decode length is (T5, evaluate.gin).
MARGIN = 1.1
PALM_CONTEXT = 2048


def _suite_lengths(gin_file: str) -> dict:
    """SUITE_FEATURE_LENGTHS of an eval gin file (a Python literal, comments and all)."""
    with open(os.path.join(REPO, "gin", "eval", gin_file)) as f:
        text = f.read()
    match = re.search(r"^SUITE_FEATURE_LENGTHS = (\{.*?^\})", text, re.MULTILINE | re.DOTALL)
    return ast.literal_eval(match.group(1))


@pytest.fixture(scope="module")
def measured():
    with open(MEASURED) as f:
        return json.load(f)["lengths"]


def test_the_table_measures_every_bbh_task_and_mmlu_subject(measured):
    tasks = set(bbh.TASKS) | {"all"}
    for source in ("bbh_cot/exemplars", "bbh_cot/code-davinci-002", "bbh_direct/answers"):
        assert set(measured[source]) == tasks, source
    assert measured["bbh_cot/exemplars"]["all"]["count"] == 3 * len(bbh.TASKS)
    assert set(measured["mmlu_cot/exemplars"]) == set(mmlu.SUBJECTS) | {"all"}
    for by_task in measured.values():
        for s in by_task.values():
            assert 0 < s["p99"] <= s["max"]


def test_t5_decode_lengths_cover_every_reference_answer_with_margin(measured):
    suites = _suite_lengths("evaluate.gin")
    bbh_cot = max(
        measured[source]["all"]["max"]
        for source in ("bbh_cot/exemplars", "bbh_cot/code-davinci-002")
    )
    assert suites["bbh_cot"]["targets"] >= MARGIN * bbh_cot
    assert suites["bbh_direct"]["targets"] >= MARGIN * measured["bbh_direct/answers"]["all"]["max"]
    assert suites["mmlu_cot"]["targets"] >= MARGIN * measured["mmlu_cot/exemplars"]["all"]["max"]
    assert suites["mgsm"]["targets"] >= MARGIN * measured["mgsm/exemplars"]["all"]["max"]


def test_palm_decode_lengths_cover_the_exemplars_within_the_context(measured):
    suites = _suite_lengths("palm.gin")
    for suite, feature_lengths in suites.items():
        assert feature_lengths["inputs"] + feature_lengths["targets"] <= PALM_CONTEXT, suite
    for suite, source in [
        ("bbh_cot", "bbh_cot/exemplars"),
        ("bbh_direct", "bbh_direct/answers"),
        ("mmlu_cot", "mmlu_cot/exemplars"),
        ("mgsm", "mgsm/exemplars"),
    ]:
        assert suites[suite]["targets"] >= MARGIN * measured[source]["all"]["max"], suite
    # BBH's own complete chains: all but the longest 1% fit.
    assert suites["bbh_cot"]["targets"] >= measured["bbh_cot/code-davinci-002"]["all"]["p99"]


def test_measurement_counts_tokens_with_eos_from_each_benchmarks_files(tmp_path):
    dirs = {name: tmp_path / name for name in ("mmlu", "bbh", "tydiqa", "mgsm")}
    write_benchmarks(tmp_path)
    reference = dirs["bbh"] / lengths.BBH_REFERENCE_OUTPUTS
    reference.mkdir(parents=True)
    complete = "We go 1 forward and 1 back. So the answer is No."
    outputs = [{"prediction": complete}, {"prediction": "We go 1 forward and 1 back, then"}]
    (reference / "navigate_few_shot_template_0-255000.json").write_text(
        json.dumps({"canary": "x", "outputs": outputs})
    )
    vocabulary = demo.vocabulary()

    def tokens(text):
        return len(vocabulary.encode(text)) + 1

    measured = lengths.measure({k: str(v) for k, v in dirs.items()}, vocabulary)
    exemplars = [f"We go {n} forward and {n} back. So the answer is Yes." for n in (1, 2, 3)]
    assert measured["bbh_cot/exemplars"]["navigate"] == {
        "count": 3,
        "max": max(map(tokens, exemplars)),
        "p99": max(map(tokens, exemplars)),
    }
    # Only the chain that reached its answer counts: the other was cut by its generator.
    assert measured["bbh_cot/code-davinci-002"]["navigate"]["count"] == 1
    assert measured["bbh_cot/code-davinci-002"]["all"]["max"] == tokens(complete)
    assert measured["mmlu_cot/exemplars"]["anatomy"]["max"] == tokens(
        "The humerus is the arm bone. The answer is (B)."
    )
    assert measured["bbh_direct/answers"]["navigate"]["max"] == tokens("Yes")
    assert measured["mgsm/exemplars"]["de"]["count"] == 8
    assert measured["mgsm/prompts"]["zh"]["count"] == 1
    assert measured["tydiqa/answers"]["swahili"]["count"] == 3
    assert measured["bbh_cot/prompts"]["all"]["count"] == 11  # 2 navigate + 9 more


def test_cli_writes_the_table_it_prints(tmp_path, capsys):
    write_benchmarks(tmp_path)
    out = tmp_path / "lengths.json"
    vocabulary = demo.vocabulary()
    lengths.main(
        [
            f"--vocabulary={vocabulary.sentencepiece_model_file}",
            f"--mmlu_dir={tmp_path / 'mmlu'}",
            f"--json={out}",
        ]
    )
    record = json.loads(out.read_text())
    assert record["vocabulary_pieces_sha256"] == lengths.pieces_fingerprint(vocabulary)
    assert list(record["lengths"]) == ["mmlu_cot/exemplars"]
    answer = len(vocabulary.encode("The humerus is the arm bone. The answer is (B).")) + 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split() == ["mmlu_cot/exemplars", "all", "1", str(answer), str(answer)]


def test_cot_reasonings_are_what_follows_the_trigger():
    prompt = (
        "Header.\n\nQ: one?\n(A) x (B) y\nA: Let's think step by step. X is right. "
        "The answer is (A).\n\nQ: two?\nA: Let's think step by step.\nY. So the answer is y."
    )
    assert lengths.cot_reasonings(prompt) == [
        "X is right. The answer is (A).",
        "Y. So the answer is y.",
    ]
    with pytest.raises(ValueError, match="has no 'A: Let's think step by step.' answer"):
        lengths.cot_reasonings("Q: three?\nA: 3")
