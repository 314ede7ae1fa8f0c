"""TyDiQA GoldP (Clark et al.): extractive questions on a gold passage in eight typologically
diverse languages (English excluded, as in the paper), 1-shot, exact match.

Layout under $FLAN_JAX_TYDIQA_DIR (the official GoldP v1.1 files, SQuAD format):

    tydiqa-goldp-v1.1-dev.json     the evaluated split ("test" here)
    tydiqa-goldp-v1.1-train.json   the one exemplar per language (its first question)

Question ids start with the language's name ("arabic-...", "swahili-..."), which is how
examples are split by language. A prediction counts when it equals any gold answer after
`tasks.metrics.normalize_answer`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import seqio

from tasks import metrics
from tasks.eval import readers

DATA_DIR_ENV = "FLAN_JAX_TYDIQA_DIR"
SPLIT_FILES = {"test": "tydiqa-goldp-v1.1-dev.json", "train": "tydiqa-goldp-v1.1-train.json"}
LANGUAGES = (
    "arabic", "bengali", "finnish", "indonesian", "korean", "russian", "swahili", "telugu",
)  # fmt: skip
ANSWERS = "answers"


@functools.cache
def read_questions(path: str) -> dict[str, list[dict]]:
    """{language: [{"context", "question", "answers"}]} in file order; a malformed entry raises
    ValueError naming the file and its JSON position."""
    data = readers.read_json(path, "TyDiQA GoldP file")
    by_language: dict[str, list[dict]] = {}
    for i, article in enumerate(readers.field(data, "data", list, f"{path}:1")):
        paragraphs = readers.field(article, "paragraphs", list, f"{path}: data[{i}]")
        for j, paragraph in enumerate(paragraphs):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = readers.field(paragraph, "context", str, where)
            for k, qa in enumerate(readers.field(paragraph, "qas", list, where)):
                at = f"{where}.qas[{k}]"
                qa_id = readers.field(qa, "id", str, at)
                answers = [
                    readers.field(answer, "text", str, f"{at}.answers[{n}]")
                    for n, answer in enumerate(readers.field(qa, "answers", list, at))
                ]
                if not answers:
                    raise ValueError(f"{at}: question {qa_id!r} has no gold answers")
                language = qa_id.split("-", 1)[0]
                question = readers.field(qa, "question", str, at)
                by_language.setdefault(language, []).append(
                    {"context": context, "question": question, ANSWERS: answers}
                )
    return by_language


def _block(question: dict) -> str:
    return f"{question['context']}\n\nQ: {question['question']}\n\nA:"


@functools.cache
def examples(language: str, directory: str) -> list[dict]:
    train_path = os.path.join(directory, SPLIT_FILES["train"])
    exemplars = read_questions(train_path).get(language)
    if not exemplars:
        raise ValueError(
            f"{train_path}: no '{language}-' questions to take the 1-shot exemplar from"
        )
    shot = f"{_block(exemplars[0])} {exemplars[0][ANSWERS][0]}\n\n"
    queries = read_questions(os.path.join(directory, SPLIT_FILES["test"])).get(language, [])
    return [
        {"inputs": shot + _block(query), "targets": query[ANSWERS][0], ANSWERS: query[ANSWERS]}
        for query in queries
    ]


def gold_answers(output_or_target, example=None, is_target=False):
    """Targets: every gold answer of the example (exact match takes the best); predictions:
    the first line of the output."""
    if is_target:
        return [metrics.first_line(answer) for answer in example[ANSWERS]]
    return metrics.first_line(output_or_target)


def chance_rate(subtask: str) -> float:
    """Answers are free text (spans of the passage): a random guess is never right."""
    del subtask
    return 0.0


def register(vocabulary: seqio.Vocabulary, keep: Sequence[str] | None = None) -> None:
    """Tasks tydiqa_{language} and the mixture tydiqa over the languages in `keep` (all by
    default)."""
    readers.register_suite(
        "tydiqa",
        LANGUAGES,
        keep,
        lambda language, split: examples(language, readers.data_dir(DATA_DIR_ENV, "TyDiQA")),
        benchmark="TyDiQA",
        splits=("test",),
        vocabulary=vocabulary,
        postprocess_fn=gold_answers,
        metric_fn=metrics.exact_match,
        list_features=(ANSWERS,),
    )
