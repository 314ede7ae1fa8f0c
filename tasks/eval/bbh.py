"""BIG-Bench Hard (Suzgun et al.): 27 subtasks, 3-shot, direct and chain of thought.

Layout under $FLAN_JAX_BBH_DIR (the BIG-Bench-Hard repository's folders):

    bbh/{task}.json           {"examples": [{"input": ..., "target": ...}, ...]}
    cot-prompts/{task}.txt    a canary header, a line "-----", then the task description and
                              three "Q: ...\nA: Let's think step by step. ... So the answer is X."
                              exemplars separated by blank lines

The direct prompt uses the same three exemplars with only their answers, as BBH's
answer-only prompts do. Answers are compared exactly after extraction.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import re
from collections.abc import Sequence

import seqio

from tasks import metrics
from tasks.eval import readers
from tasks.templates import COT_TRIGGER

DATA_DIR_ENV = "FLAN_JAX_BBH_DIR"
HEADER_SEPARATOR = "-----"
OPTIONS_HEADER = "Options:"
# An option line: "(A) 12/14/2026" or "- Yes".
_OPTION = re.compile(r"\([A-Z]\) |- ")
SPLIT = "test"

TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)  # fmt: skip


@functools.cache
def read_prompts(path: str) -> tuple[str, str]:
    """(chain-of-thought prompt, direct prompt) from a cot-prompts file.

    Each exemplar must hold "\\nA: " and "So the answer is"; one that does not is reported
    with the line it starts on.
    """
    with readers.open_text(path, "BBH prompt file") as f:
        lines = f.read().splitlines()
    if HEADER_SEPARATOR not in lines:
        raise ValueError(
            f"{path}:1: expected the canary header to end with a line {HEADER_SEPARATOR!r}"
        )
    start = lines.index(HEADER_SEPARATOR) + 1
    while start < len(lines) and not lines[start].strip():
        start += 1
    body = "\n".join(lines[start:]).rstrip()
    description, *exemplars = body.split("\n\nQ: ")
    if not exemplars:
        raise ValueError(f"{path}:{start + 1}: no 'Q: ' exemplars after the task description")
    direct, line = [description], start + 1 + description.count("\n") + 2
    for exemplar in exemplars:
        question, found, reasoning = exemplar.partition("\nA: ")
        if not found or metrics.COT_ANSWER_PREFIX not in reasoning:
            raise ValueError(
                f"{path}:{line}: exemplar has no '\\nA: ' answer ending in "
                f"'{metrics.COT_ANSWER_PREFIX} X.'"
            )
        direct.append(f"Q: {question}\nA: {metrics.cot_answer(reasoning)}")
        line += exemplar.count("\n") + 2
    return body, "\n\n".join(direct)


@functools.cache
def read_examples(path: str) -> list[dict]:
    data = readers.read_json(path, "BBH examples")
    records = readers.field(data, "examples", list, f"{path}:1")
    return [
        {
            "input": readers.field(record, "input", str, f"{path}: example {number}"),
            "target": readers.field(record, "target", str, f"{path}: example {number}"),
        }
        for number, record in enumerate(records, 1)
    ]


@functools.cache
def examples(task: str, chain_of_thought: bool, directory: str) -> list[dict]:
    cot, direct = read_prompts(os.path.join(directory, "cot-prompts", f"{task}.txt"))
    if chain_of_thought:
        render = lambda text: f"{cot}\n\nQ: {text}\nA: {COT_TRIGGER}"  # noqa: E731
    else:
        render = lambda text: f"{direct}\n\nQ: {text}\nA:"  # noqa: E731
    return [
        {"inputs": render(example["input"]), "targets": example["target"]}
        for example in read_examples(os.path.join(directory, "bbh", f"{task}.json"))
    ]


def num_options(text: str) -> int:
    """How many options an input lists after its (last) "Options:" line: "(A) ..." lines or
    "- Yes" lines; 0 for a free-form question."""
    lines = [line.strip() for line in text.splitlines()]
    if OPTIONS_HEADER not in lines:
        return 0
    start = max(i for i, line in enumerate(lines) if line == OPTIONS_HEADER) + 1
    return len(list(itertools.takewhile(_OPTION.match, lines[start:])))


# Gold answers form a closed set (the task's answer space) when each distinct one recurs, as
# the answer of at least this share of the task's examples: True/False, yes/no; not counts,
# sums or sorted word lists, whose rare or unique values show the space is open.
CLOSED_SET_SHARE = 0.1


def closed_answers(targets: Sequence[str]) -> set[str]:
    """The task's answer space read from its gold answers: the distinct ones when there are at
    least two and each is the answer of two examples or more and of CLOSED_SET_SHARE of them,
    else empty (free-form answers)."""
    counts = collections.Counter(targets)
    least = max(2.0, CLOSED_SET_SHARE * len(targets))
    if len(counts) < 2 or min(counts.values()) < least:
        return set()
    return set(counts)


def chance_rate(task: str) -> float:
    """The score (percent) of a uniform random guess, averaged over the task's examples: 100 /
    the options its input lists, or for an input that lists fewer than two, 100 / the size of
    the task's closed answer space (`closed_answers`: 50 for True/False, yes/no), or 0 for
    free-form answers."""
    path = os.path.join(readers.data_dir(DATA_DIR_ENV, "BBH"), "bbh", f"{task}.json")
    examples = read_examples(path)
    answers = closed_answers([example["target"] for example in examples])
    fallback = 100.0 / len(answers) if answers else 0.0
    rates = []
    for example in examples:
        listed = num_options(example["input"])
        rates.append(100.0 / listed if listed >= 2 else fallback)
    return sum(rates) / len(rates)


def register(vocabulary: seqio.Vocabulary, keep: Sequence[str] | None = None) -> None:
    """Tasks bbh_{direct,cot}_{task} (split "test": all examples) and the mixtures
    bbh_direct, bbh_cot over the tasks in `keep` (all by default)."""
    for mode, chain_of_thought in (("direct", False), ("cot", True)):
        readers.register_suite(
            f"bbh_{mode}",
            TASKS,
            keep,
            lambda task, split, c=chain_of_thought: examples(
                task, c, readers.data_dir(DATA_DIR_ENV, "BBH")
            ),
            benchmark="BBH",
            splits=(SPLIT,),
            vocabulary=vocabulary,
            postprocess_fn=metrics.cot_answer if chain_of_thought else metrics.first_line,
            metric_fn=metrics.accuracy,
        )
