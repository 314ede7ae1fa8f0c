"""Answer extraction and scoring of the benchmark suites (tasks.metrics)."""

import pytest

from tasks import metrics


@pytest.mark.parametrize(
    "output, letter",
    [
        ("Let's think step by step. The heart pumps blood. The answer is (B).", "B"),
        ("the answer is c.", "C"),
        ("(D) liver", "D"),
        ("A", "A"),
        ("B. heart", "B"),
        (b" C", "C"),
        # Malformed: no letter anywhere, or only a word starting with a capital letter.
        ("I am not sure.", ""),
        ("Because the heart pumps blood", ""),
        ("", ""),
    ],
)
def test_answer_letter(output, letter):
    assert metrics.answer_letter(output) == letter


@pytest.mark.parametrize(
    "output, answer",
    [
        ("We go forward and back. So the answer is Yes.", "Yes"),
        ("Sort them. So the answer is apple banana cherry.", "apple banana cherry"),
        ("So the answer is (A). So the answer is (B).", "(A)"),  # the first one counts
        ("  No.\n", "No."),  # malformed (no phrase): the whole stripped text
    ],
)
def test_so_the_answer_is_extraction(output, answer):
    assert metrics.cot_answer(output) == answer


def test_direct_answer_is_the_first_line_without_a_closing_period():
    assert metrics.first_line(" Yes.\nQ: next question") == "Yes"
    assert metrics.first_line("") == ""


@pytest.mark.parametrize(
    "output, number",
    [
        ("5 + 6 = 11. Die Antwort lautet 11.", "11"),
        ("答案是 18。", "18"),
        ("It costs $1,234.50 in total.", "1234.5"),
        ("The answer is 7.0", "7"),
        ("10 - 17 = -7. The answer is -7.", "-7"),
        ("The answer is 3, 5", "5"),
        ("3 + 2 = 5. The answer is 5.\n\nQuestion: Tom has 12 apples", "5"),
        ("no number here", ""),
    ],
)
def test_final_number(output, number):
    assert metrics.final_number(output) == number


@pytest.mark.parametrize(
    "prediction, answers",
    [
        ("«Nairobi».", ["Nairobi"]),  # Unicode quotes and the period are punctuation
        ("МОСКВА", ["Москва"]),  # Cyrillic case
        ("the  Dodoma", ["Dodoma"]),  # English article, whitespace
        ("القاهرة،", ["القاهرة"]),  # Arabic comma
        ("東京。", ["東京"]),  # ideographic full stop
        ("mji wa Nairobi", ["Nairobi", "mji wa Nairobi"]),  # any gold answer
    ],
)
def test_multilingual_exact_match_normalizes_both_sides(prediction, answers):
    assert metrics.exact_match([answers], [prediction]) == {"exact_match": 100.0}


def test_exact_match_scores_misses_and_checks_lengths():
    assert metrics.exact_match([["Kenya"], ["Uganda"]], ["Kenya", "Tanzania"]) == {
        "exact_match": 50.0
    }
    assert metrics.normalize_answer("Dar es Salaam") != metrics.normalize_answer("Dar-es-Salaam")
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.exact_match([["a"], ["b"]], ["a"])
