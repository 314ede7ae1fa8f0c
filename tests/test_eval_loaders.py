"""The benchmark readers on fixture files written in each benchmark's real layout."""

import json

import pytest
import seqio
from eval_testing import BBH_CANARY, SUBTASKS, write_benchmarks

import tasks.eval
from tasks import demo, suites
from tasks.eval import bbh, mgsm, mmlu, tydiqa


@pytest.fixture
def benchmarks(tmp_path, monkeypatch):
    dirs = write_benchmarks(tmp_path)
    for env, path in dirs.items():
        monkeypatch.setenv(env, path)
    return {name: tmp_path / name for name in tasks.eval.BENCHMARKS}


def test_mmlu_direct_prompt_has_five_dev_shots_and_ends_with_the_query(benchmarks):
    direct = mmlu.examples("anatomy", False, "test", str(benchmarks["mmlu"]))
    assert [e["targets"] for e in direct] == ["B", "C"]
    prompt = direct[1]["inputs"]
    # Two spaces before the subject, as hendrycks/test's format_subject makes it.
    assert prompt.startswith(
        "The following are multiple choice questions (with answers) about  anatomy.\n\n"
    )
    query = {"question": "Q?", "options": ["a", "b", "c", "d"], "answer": "A"}
    assert mmlu.direct_prompt("abstract_algebra", [], query).startswith(
        "The following are multiple choice questions (with answers) about  abstract algebra."
    )
    assert prompt.count("\nAnswer: ") == 5 and "Dev question 5?" not in prompt  # 5 of 6 dev rows
    assert prompt.endswith(
        'How many chambers, e.g. "four", has the heart?\n'
        "A. two\nB. three\nC. four\nD. five\nAnswer:"
    )
    assert (
        mmlu.examples("anatomy", False, "validation", str(benchmarks["mmlu"]))[0]["targets"] == "A"
    )


def test_mmlu_cot_prompt_appends_the_query_to_flans_prompt(benchmarks):
    (example, _) = mmlu.examples("anatomy", True, "test", str(benchmarks["mmlu"]))
    assert example["inputs"].startswith("The following are multiple choice questions")
    assert example["inputs"].endswith(
        "The answer is (B).\n\nQ: Which organ pumps blood?\n(A) lung (B) heart (C) skin (D) bone\n"
        "A: Let's think step by step."
    )


@pytest.mark.parametrize(
    "row, error",
    [("Q?,a,b,c,d,E", "must be one of A, B, C, D, got 'E'"), ("Q?,a,b,B", "expected 6")],
)
def test_mmlu_malformed_row_names_file_and_row(tmp_path, row, error):
    path = tmp_path / "x_test.csv"
    path.write_text(f"Q?,a,b,c,d,A\n{row}\n")
    with pytest.raises(ValueError, match=f"{path}:2: .*{error}"):
        mmlu.read_questions(str(path))


def test_bbh_direct_prompt_keeps_the_exemplars_answers_only(benchmarks):
    cot, direct = bbh.read_prompts(str(benchmarks["bbh"] / "cot-prompts" / "navigate.txt"))
    assert BBH_CANARY not in cot and cot.startswith("Given a series of navigation instructions")
    assert cot.count("So the answer is Yes.") == 3
    assert "Let's think" not in direct and direct.count("\nA: Yes") == 3
    cot_examples = bbh.examples("navigate", True, str(benchmarks["bbh"]))
    assert cot_examples[0]["inputs"].endswith("Take 1 step.\nA: Let's think step by step.")
    direct_examples = bbh.examples("navigate", False, str(benchmarks["bbh"]))
    assert direct_examples[1]["inputs"].endswith("Turn around.\nA:")
    assert [e["targets"] for e in direct_examples] == ["No", "Yes"]


def test_bbh_malformed_prompt_names_file_and_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(
        "canary\n-----\nDescription.\n\nQ: one\nA: So the answer is x.\n\nQ: two\nA: no phrase\n"
    )
    with pytest.raises(ValueError, match=f"{path}:8: exemplar has no"):
        bbh.read_prompts(str(path))
    missing = tmp_path / "bbh.json"
    missing.write_text(json.dumps({"examples": [{"input": "i"}]}))
    with pytest.raises(ValueError, match=f"{missing}: example 1: expected a str 'target'"):
        bbh.read_examples(str(missing))


def test_tydiqa_takes_one_shot_from_train_and_skips_english(benchmarks):
    examples = tydiqa.examples("swahili", str(benchmarks["tydiqa"]))
    assert len(examples) == 2
    assert examples[0]["inputs"] == (
        "Dodoma ni mji mkuu wa Tanzania.\n\nQ: Mji mkuu wa Tanzania ni upi?\n\nA: Dodoma\n\n"
        "Nairobi ni mji mkuu wa Kenya.\n\nQ: Mji mkuu wa Kenya ni upi?\n\nA:"
    )
    assert examples[0]["answers"] == ["Nairobi", "mji wa Nairobi"]
    assert "english" not in tydiqa.LANGUAGES and len(tydiqa.LANGUAGES) == 8


def test_tydiqa_malformed_entry_names_its_position(tmp_path):
    path = tmp_path / "dev.json"
    qa = {"id": "swahili-1", "question": "q"}
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [qa]}]}]}))
    where = r"dev.json: data\[0\].paragraphs\[0\].qas\[0\]"
    with pytest.raises(ValueError, match=f"{where}: expected a list 'answers'"):
        tydiqa.read_questions(str(path))


def test_mgsm_prompts_are_in_the_target_language(benchmarks):
    german = mgsm.examples("de", str(benchmarks["mgsm"]))
    assert [e["targets"] for e in german] == ["2", "1234"]
    assert german[0]["inputs"].count("Die Antwort lautet") == 8
    assert german[0]["inputs"].endswith(
        "Frage: Anna hat 3 Äpfel und isst 1. Wie viele bleiben?\nSchritt-für-Schritt-Antwort:"
    )
    chinese = mgsm.examples("zh", str(benchmarks["mgsm"]))[0]["inputs"]
    assert chinese.endswith("问题：汤姆有 5 个苹果，吃了 2 个。还剩几个？\n逐步解答：")


def test_mgsm_malformed_files_name_file_and_row(tmp_path):
    (tmp_path / "exemplars.py").write_text(
        "MGSM_EXEMPLARS = {'de': {'1': {'q': 'Frage: x', 'a': 'A: 1'}}}\n"
    )
    (tmp_path / "mgsm_de.tsv").write_text("ok\t3\nno answer\tzwei\n")
    with pytest.raises(
        ValueError, match="mgsm_de.tsv:2: the answer field must be a number, got 'zwei'"
    ):
        mgsm.examples("de", str(tmp_path))
    code = tmp_path / "code" / "exemplars.py"  # read as data: code is refused, not run
    code.parent.mkdir()
    code.write_text("import os\nMGSM_EXEMPLARS = dict(os.environ)\n")
    with pytest.raises(ValueError, match="exemplars.py:2: MGSM_EXEMPLARS must be a literal dict"):
        mgsm.read_exemplars(str(code))


def test_registered_tasks_tokenize_and_keep_the_query_when_trimming(benchmarks):
    vocabulary = demo.vocabulary()
    tasks.eval.register_suites(subtasks=SUBTASKS, vocabulary=vocabulary)
    try:
        mixture = seqio.get_mixture_or_task("mgsm")
        assert [t.name for t in mixture.tasks] == ["mgsm_de", "mgsm_zh"]
        ds = seqio.get_mixture_or_task("mgsm_de").get_dataset(
            {"inputs": 24, "targets": 8}, split="test", shuffle=False
        )
        first = next(ds.as_numpy_iterator())
        assert len(first["inputs"]) == 24 and first["inputs"][-1] == 1  # trimmed, EOS kept
        assert vocabulary.decode(first["inputs"][:-1].tolist()).endswith("Antwort:")
        (example,) = (
            seqio.get_mixture_or_task("tydiqa_swahili")
            .get_dataset({"inputs": 512, "targets": 16}, split="test", shuffle=False)
            .take(1)
            .as_numpy_iterator()
        )
        assert list(example["answers"]) == [b"Nairobi", b"mji wa Nairobi"]
    finally:
        tasks.eval.register_suites()


def test_missing_data_directory_names_its_variable(monkeypatch):
    monkeypatch.delenv(mmlu.DATA_DIR_ENV, raising=False)
    task = seqio.get_mixture_or_task("mmlu_cot_anatomy")  # registered without any data
    with pytest.raises(FileNotFoundError, match="export FLAN_JAX_MMLU_DIR="):
        task.get_dataset({"inputs": 64, "targets": 8}, split="test")
    monkeypatch.setenv(mmlu.DATA_DIR_ENV, "/nonexistent/mmlu")
    with pytest.raises(
        FileNotFoundError, match="FLAN_JAX_MMLU_DIR='/nonexistent/mmlu' does not exist"
    ):
        task.get_dataset({"inputs": 64, "targets": 8}, split="test")


def test_every_suite_named_in_tasks_suites_is_a_registered_mixture():
    for suite in suites.SUITES:
        assert isinstance(seqio.get_mixture_or_task(suite), seqio.Mixture), suite
    assert set(suites.CHAIN_OF_THOUGHT_SUITES) <= set(suites.SUITES)
