"""CoT rendering, FLAN's rules: ten zero-shot templates a dataset with varied answer
phrasings, few-shot patterns of their own, and the input-inversion tasks."""

import re

import gin
import pytest
import seqio
from flan_testing import LENGTHS, texts

from tasks import metrics
from tasks.flan import cot, registry

# The fixture's gsm8k rows: row i has "(variant i)" after the question (i > 0) and
# " Variant i changes nothing." after the rationale.
QUESTION = "Mia has 3 apples and buys 4 more. How many apples does she have?"
RATIONALE = "Mia starts with 3 apples. 3 + 4 = 7."


def _question(i):
    return QUESTION + (f" (variant {i})" if i else "")


def _rationale(i):
    return RATIONALE + (f" Variant {i} changes nothing." if i else "")


@pytest.fixture
def one_shot():
    """One exemplar, no token budget: prompts short enough to compare whole."""
    gin.clear_config()
    with gin.unlock_config():
        gin.parse_config(
            "from __gin__ import dynamic_registration\nfrom tasks.flan import registry\n"
            "registry.format_settings.few_shot_k = 1\n"
            "registry.format_settings.max_input_tokens = None"
        )
    yield
    gin.clear_config()


def _texts(name, limit=None):
    dataset = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train", shuffle=False)
    return texts(dataset, limit)


def test_each_dataset_has_ten_zero_shot_templates_with_varied_answer_phrasings(flan_env):
    for dataset in cot.DATASETS:
        zero_shot = registry.REGISTERED["cot"][dataset].templates_for("zs_cot")
        assert len(zero_shot) == 10, dataset
        endings = [t.targets.removeprefix("{rationale}")[1:] for t in zero_shot]
        assert len(set(endings)) == 10, endings
        assert {
            "So the answer is {answer}.",
            "Therefore, the answer is {answer}.",
            "The answer: {answer}.",
            "So the final answer is {answer}.",
        } <= set(endings)
    # AQuA and QED (FLAN's "stream" datasets) are asked for loose thoughts, not steps.
    stream = registry.REGISTERED["cot"]["aqua"].templates
    assert stream == registry.REGISTERED["cot"]["qed"].templates
    assert set(stream).isdisjoint(registry.REGISTERED["cot"]["gsm8k"].templates)


def test_zero_shot_targets_state_the_answer_in_turn_in_each_phrasing(flan_env, one_shot):
    rendered = _texts("cot_gsm8k_zs_cot")
    assert len(rendered) == 6
    phrasings = [
        " So the answer is",
        "\nTherefore, the answer is",
        " The answer:",
        "\nSo the final answer is",
        " Final answer:",
        "\nThus, the answer is",
    ]
    for i, ((inputs, target), phrasing) in enumerate(zip(rendered, phrasings)):
        assert _question(i) in inputs
        assert target == f"{_rationale(i)}{phrasing} 7."
    assert rendered[0][0] == f"{QUESTION}\nLet's think step by step."


def test_few_shot_prompts_use_their_own_patterns_the_first_the_eval_suites(flan_env, one_shot):
    for dataset in cot.DATASETS:
        task = registry.REGISTERED["cot"][dataset]
        assert set(task.templates_for("fs_cot")).isdisjoint(task.templates_for("zs_cot"))
    rendered = _texts("cot_gsm8k_fs_cot", 6)
    # Example 5 takes the matching-template variant with template 0: its exemplars (row 0)
    # are in BBH's and MMLU's CoT exemplar form ("Q: ...\nA: Let's think step by step. ...
    # So the answer is X."); the query carries no instruction, only the exemplar's delimiter.
    inputs, target = rendered[5]
    assert target == f"Let's think step by step. {_rationale(5)} So the answer is 7."
    assert metrics.cot_answer(target) == "7"
    exemplar = inputs[: inputs.rindex(_question(5))]  # and the query's input delimiter
    assert "Let's think step by step. Mia starts with 3 apples. 3 + 4 = 7. So the" in exemplar
    assert re.fullmatch(r"\n\w+:", inputs[len(exemplar) + len(_question(5)) :]), inputs
    assert rendered[1][1] == f"{_rationale(1)}\nThe answer is 7."


def test_every_dataset_has_an_input_inversion_task(flan_env, one_shot):
    for dataset in cot.DATASETS:
        task = registry.REGISTERED["cot"][f"{dataset}_ii"]
        assert cot.is_inversion(task) and task.source is registry.REGISTERED["cot"][dataset].source
        assert len(task.templates) == 10
    names = set(seqio.TaskRegistry.names())
    assert {"cot_gsm8k_ii_zs_cot", "cot_gsm8k_ii_fs_cot"} <= names
    rendered = _texts("cot_gsm8k_ii_zs_cot")
    # Template 0 asks the question back from the rationale and the answer.
    assert rendered[0] == (
        "Here is some reasoning and the answer it reaches. What was the question?\n"
        f"{RATIONALE}\nAnswer: 7",
        QUESTION,
    )
    # Template 3 asks for the rationale of a question and its answer.
    assert rendered[3] == (
        f"Question: {_question(3)}\nAnswer: 7\nExplain step by step how to get to this answer.",
        _rationale(3),
    )
    ((few_shot, target),) = _texts("cot_gsm8k_ii_fs_cot", 1)
    assert f"{RATIONALE}\nThe answer: 7\nWhat was the question?" in few_shot
    assert target == QUESTION
