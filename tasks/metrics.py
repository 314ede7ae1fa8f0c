"""Metrics and postprocessors for text targets, in seqio's signatures.

A postprocessor maps decoded model output (and, with is_target=True, the
target text) to the string a metric compares; a metric maps the lists of
postprocessed targets and predictions to named scores.
"""

import re
import unicodedata
from collections.abc import Sequence

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


# "The answer is (B)", "answer is B.", then a bare "(B)", then a leading "B" / "B." / "B)".
_LETTER_AFTER_PHRASE = re.compile(r"answer is:?\s*\(?([A-D])\b\)?", re.IGNORECASE)
_LETTER_IN_PARENS = re.compile(r"\(([A-D])\)")
_LEADING_LETTER = re.compile(r"^\s*([A-D])(?:[.):]|\s|$)")


def answer_letter(output_or_target, example=None, is_target=False) -> str:
    """The option letter a multiple-choice answer picks ("" if none can be found).

    Chain-of-thought output names it after "the answer is"; direct output starts with it, in
    parentheses or not. Malformed output (no letter anywhere) yields "", which matches no
    target.
    """
    del example, is_target
    text = _text(output_or_target)
    for pattern in (_LETTER_AFTER_PHRASE, _LETTER_IN_PARENS, _LEADING_LETTER):
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return ""


def first_line(output_or_target, example=None, is_target=False) -> str:
    """A direct answer: the first line, stripped, without a closing period (models trained
    on full sentences often add one)."""
    del example, is_target
    return _text(output_or_target).strip().split("\n", 1)[0].strip().removesuffix(".").strip()


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def canonical_number(text: str) -> str:
    """ "1,000.50" -> "1000.5", "7.0" -> "7": one spelling per value, so strings compare."""
    text = text.replace(",", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.lstrip("+") if text not in ("", "-") else "0"


def final_number(output_or_target, example=None, is_target=False) -> str:
    """The last number of a (chain-of-thought) answer, canonicalized; "" if it has none.

    MGSM rationales end with "The answer is N." in the target language, so the last number
    is the answer whatever the language's words are. Only the first paragraph counts: a
    model that goes on to write the next few-shot question after a blank line is not scored
    on that question's numbers.
    """
    del example, is_target
    numbers = _NUMBER.findall(_text(output_or_target).strip().split("\n\n", 1)[0])
    return canonical_number(numbers[-1]) if numbers else ""


_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization, made multilingual as MLQA's and TyDiQA's scripts do:
    lowercase, drop every Unicode punctuation character (not only ASCII), drop English
    articles, collapse whitespace."""
    text = _text(text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
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
