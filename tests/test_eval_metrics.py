"""Answer extraction and scoring of the benchmark suites (tasks.metrics)."""

import pytest

from tasks import metrics


@pytest.mark.parametrize(
    "output, letter",
    [
        ("Let's think step by step. The heart pumps blood. The answer is (B).", "B"),
        ("the answer is: C", "C"),
        ("So the answer is D. The answer is (A).", "D"),  # the first one counts
        ("(B)", "B"),  # a bare letter is the whole answer
        ("A", "A"),
        (b" C.", "C"),
        # A lowercase letter after the phrase is a word, not an option.
        ("The organ is a muscle, so the answer is a heart.", ""),
        ("the answer is c.", ""),
        # A letter in parentheses elsewhere is reasoning, not the answer.
        ("(A) is a bone and (D) is an organ.", ""),
        ("(D) liver", ""),
        ("B. heart", ""),
        ("The answer is Bone.", ""),
        ("I am not sure.", ""),
        ("", ""),
    ],
)
def test_chain_of_thought_answer_letter(output, letter):
    assert metrics.answer_letter(output) == letter


def test_rank_accuracy_picks_the_highest_score_and_counts_questions():
    scores = [[-1.0, -0.5, -3.0, -2.0], [-0.1, -0.1, -5.0, -5.0], [-4.0, -3.0, -2.0, -1.0]]
    # Choices 1, 0 (the first of a tie, as numpy's argmax) and 3; targets 1, 1, 3.
    assert metrics.rank_accuracy([1, 1, 3], scores) == {
        "accuracy": pytest.approx(200 / 3),
        metrics.NUM_QUESTIONS: 3.0,
    }
    example = {metrics.CHOICES: [b"A", b"B", b"C", b"D"]}
    assert metrics.choice_index(b"C", example=example, is_target=True) == 2


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
        # Thousands grouped by "." (de, es) or a space (fr: plain, no-break, narrow no-break).
        ("500 + 500 = 1.000. Die Antwort lautet 1.000.", "1000"),
        ("La respuesta es 12.500.", "12500"),
        ("La réponse est 1 000.", "1000"),
        ("La réponse est 2\u00a0500.", "2500"),
        ("La réponse est 1\u202f000.", "1000"),
        ("Ответ: 1 000 000.", "1000000"),
        ("1.234,5 €", "1234.5"),
        # A separator before other than three digits is a decimal point.
        ("Die Antwort lautet 3.5.", "3.5"),
        ("Die Antwort lautet 3,5.", "3.5"),
        ("The answer is 3.14159", "3.14159"),
        # A leading 0 is never a thousands group: a fraction, in either notation.
        ("The answer is 0.125.", "0.125"),
        ("Die Antwort lautet 0,125.", "0.125"),
        ("The change is -0.5 dollars. The answer is -0.75.", "-0.75"),
        ("1,000.5 - 1,000 = 0.5", "0.5"),
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
        # ASCII symbols SQuAD's script removes (string.punctuation), Unicode category S*, not P*.
        ("$1000", ["1000"]),
        ("x=5", ["x5"]),
        ("<Dodoma>", ["Dodoma"]),
        ("C++ | ~ ^ `", ["C"]),
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
