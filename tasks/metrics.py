"""Metrics and postprocessors for text targets, in seqio's signatures.

A postprocessor maps decoded model output (and, with is_target=True, the
target text) to the string a metric compares; a metric maps the lists of
postprocessed targets and predictions to named scores.
"""

import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np

from tasks.templates import COT_ANSWER_PREFIX


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target, after postprocessing."""
    _check_lengths("accuracy", targets, predictions)
    correct = sum(target == prediction for target, prediction in zip(targets, predictions))
    return {"accuracy": 100.0 * correct / len(targets)}


def _check_lengths(metric: str, targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(
            f"{metric} got {len(targets)} targets but {len(predictions)} predictions; "
            "pass one prediction per target."
        )
    if not targets:
        raise ValueError(f"{metric} got no examples; evaluate on a non-empty split.")


# A rank-classified example's candidate answers (a string-list feature), and the count a
# per-question average weights each task by.
CHOICES = "choices"
NUM_QUESTIONS = "num_questions"


def question_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """`accuracy` and the number of questions, for suites averaged over questions (MMLU)."""
    return {**accuracy(targets, predictions), NUM_QUESTIONS: float(len(targets))}


def choice_index(output_or_target, example=None, is_target=False) -> int:
    """A rank-classified target as the index of its choice among the example's CHOICES."""
    del is_target
    choices = [_text(choice) for choice in example[CHOICES]]
    return choices.index(_text(output_or_target))


def rank_accuracy(targets: Sequence[int], scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Rank classification: the percentage of questions whose highest-scored choice (the first
    of equal ones, as numpy's argmax) is the target's index, and the number of questions.
    `scores` holds each question's log-likelihood of every choice."""
    _check_lengths("rank_accuracy", targets, scores)
    chosen = [int(np.argmax(row)) for row in scores]
    correct = sum(choice == target for choice, target in zip(chosen, targets))
    return {"accuracy": 100.0 * correct / len(targets), NUM_QUESTIONS: float(len(targets))}


def cot_answer(output_or_target, example=None, is_target=False) -> str:
    """The answer of a chain-of-thought text: what follows "So the answer is", up to the
    end of that sentence.

    Model output can be malformed: without the phrase the whole stripped text is the
    answer (a direct answer still counts); with it repeated, the first one counts.
    """
    del example, is_target  # Targets and predictions are parsed the same way.
    output_or_target = _text(output_or_target)
    _, found, rest = output_or_target.partition(COT_ANSWER_PREFIX)
    if not found:
        return output_or_target.strip()
    answer = rest.strip().split("\n", 1)[0].split(". ", 1)[0]
    return answer.strip().removesuffix(".").strip()


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


# The phrase in any case, then a capital letter, in parentheses or not: "The answer is (B).",
# "answer is: C". A lowercase letter after it is a word ("the answer is a bone").
_LETTER_AFTER_PHRASE = re.compile(r"(?i:answer is):?\s*\(?([A-D])\)?(?!\w)")
# Output that is nothing but a letter: "B", "(B)", "B.".
_ONLY_LETTER = re.compile(r"\s*\(?([A-D])\)?\.?\s*")


def answer_letter(output_or_target, example=None, is_target=False) -> str:
    """The option letter a chain-of-thought answer picks ("" if it names none).

    The letter is the one after the first "the answer is", or the whole output when that is a
    bare letter. A letter in parentheses elsewhere ("(B) is wrong because ...") is reasoning,
    not the answer, and a lowercase "a" after the phrase is an article: neither counts.
    """
    del example, is_target
    text = _text(output_or_target)
    match = _LETTER_AFTER_PHRASE.search(text) or _ONLY_LETTER.fullmatch(text)
    return match.group(1) if match else ""


def first_line(output_or_target, example=None, is_target=False) -> str:
    """A direct answer: the first line, stripped, without a closing period (models trained
    on full sentences often add one)."""
    del example, is_target
    return _text(output_or_target).strip().split("\n", 1)[0].strip().removesuffix(".").strip()


# Digits grouped by three after one separator: "1,000" (English, Chinese, ...), "1.000" (German,
# Spanish), "1 000" (French and Russian, also with a no-break or narrow no-break space). The
# leading group never starts with 0: "0.125" and "0,125" are fractions.
_GROUPED = r"[1-9]\d{0,2}(?P<sep>[,. \u00a0\u202f])\d{3}(?:(?P=sep)\d{3})*(?!\d)"
# A number: grouped or plain digits, then a decimal part after the other separator ("3.5",
# "3,5", "1.000,5"); or a bare decimal (".5"). "1.000" is one thousand, "3.5" three and a half.
_NUMBER = re.compile(
    rf"(?P<sign>-)?(?:(?P<whole>{_GROUPED}|\d+)(?:(?!(?P=sep))[.,](?P<fraction>\d+))?"
    r"|\.(?P<bare_fraction>\d+))"
)


def _canonical_number(match: re.Match) -> str:
    """One spelling per value, so strings compare: "1.000" -> "1000", "7,50" -> "7.5"."""
    whole = re.sub(r"\D", "", match["whole"] or "").lstrip("0") or "0"
    fraction = (match["fraction"] or match["bare_fraction"] or "").rstrip("0")
    number = f"{whole}.{fraction}" if fraction else whole
    return f"-{number}" if match["sign"] and number != "0" else number


def final_number(output_or_target, example=None, is_target=False) -> str:
    """The last number of a (chain-of-thought) answer, canonicalized; "" if it has none.

    MGSM rationales end with "The answer is N." in the target language, so the last number
    is the answer whatever the language's words are; it is read with the language's digit
    grouping ("1.000" in German, "1 000" in French are one thousand). Only the first paragraph
    counts: a model that goes on to write the next few-shot question after a blank line is not
    scored on that question's numbers.
    """
    del example, is_target
    text = _text(output_or_target).strip().split("\n\n", 1)[0]
    numbers = list(_NUMBER.finditer(text))
    return _canonical_number(numbers[-1]) if numbers else ""


_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


# What SQuAD's evaluate-v1.1.py removes (ASCII punctuation and symbols such as $ + < = > ^ ` | ~);
# every Unicode punctuation character (category P*) is removed too.
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization, made multilingual as MLQA's and TyDiQA's scripts do:
    lowercase, drop `string.punctuation` and every Unicode punctuation character, drop English
    articles, collapse whitespace."""
    text = _text(text).lower()
    text = "".join(
        ch
        for ch in text
        if ch not in _ASCII_PUNCTUATION and not unicodedata.category(ch).startswith("P")
    )
    text = _ENGLISH_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal, after `normalize_answer`, to any of their gold answers."""
    _check_lengths("exact_match", targets, predictions)
    correct = sum(
        normalize_answer(prediction) in {normalize_answer(answer) for answer in answers}
        for answers, prediction in zip(targets, predictions)
    )
    return {"exact_match": 100.0 * correct / len(targets)}
