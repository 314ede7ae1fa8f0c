"""Metrics and postprocessors for text targets, in seqio's signatures.

A postprocessor maps decoded model output (and, with is_target=True, the
target text) to the string a metric compares; a metric maps the lists of
postprocessed targets and predictions to named scores.
"""

from typing import Sequence

from tasks.templates import COT_ANSWER_PREFIX


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target, after postprocessing."""
    if len(targets) != len(predictions):
        raise ValueError(
            f"accuracy got {len(targets)} targets but {len(predictions)} predictions; "
            "pass one prediction per target."
        )
    if not targets:
        raise ValueError("accuracy got no examples; evaluate on a non-empty split.")
    correct = sum(target == prediction for target, prediction in zip(targets, predictions))
    return {"accuracy": 100.0 * correct / len(targets)}


def cot_answer(output_or_target, example=None, is_target=False) -> str:
    """The answer of a chain-of-thought text: what follows "So the answer is", up to the
    end of that sentence.

    Model output can be malformed: without the phrase the whole stripped text is the
    answer (a direct answer still counts); with it repeated, the first one counts.
    """
    del example, is_target  # Targets and predictions are parsed the same way.
    if isinstance(output_or_target, bytes):
        output_or_target = output_or_target.decode("utf-8", errors="replace")
    _, found, rest = output_or_target.partition(COT_ANSWER_PREFIX)
    if not found:
        return output_or_target.strip()
    answer = rest.strip().split("\n", 1)[0].split(". ", 1)[0]
    return answer.strip().removesuffix(".").strip()
