"""MMLU (Hendrycks et al.): 57 subjects of four-option exam questions, 5-shot, direct and
chain of thought, as the paper evaluates it.

Layout under $FLAN_JAX_MMLU_DIR (the official data.tar extracted, plus Flan's CoT prompts):

    data/dev/{subject}_dev.csv     five exemplars per subject (the direct prompt's shots)
    data/val/{subject}_val.csv     the "validation" split
    data/test/{subject}_test.csv   the "test" split
    mmlu-cot.json                  {subject: 5-shot chain-of-thought prompt}, only for CoT

CSV rows are headerless: question, A, B, C, D, answer letter.

Direct is scored as hendrycks/test's evaluate.py scores it: rank classification of the four
letters (the evaluator scores each as the answer), with exemplars dropped from the end, whole,
until the prompt fits. Chain of thought is generated and its letter extracted.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import seqio

from tasks import metrics
from tasks.eval import readers
from tasks.templates import COT_TRIGGER

DATA_DIR_ENV = "FLAN_JAX_MMLU_DIR"
COT_PROMPTS_FILE = "mmlu-cot.json"
LETTERS = ("A", "B", "C", "D")
NUM_SHOTS = 5
SPLIT_FILES = {"validation": "val", "test": "test"}

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip


def read_questions(path: str) -> list[dict]:
    """{"question", "options", "answer"} per CSV row; a bad answer letter names path:row."""
    questions = []
    for number, row in enumerate(readers.read_csv(path, 2 + len(LETTERS)), 1):
        answer = row[-1].strip()
        if answer not in LETTERS:
            raise ValueError(
                f"{path}:{number}: the answer field must be one of {', '.join(LETTERS)}, "
                f"got {answer!r}"
            )
        questions.append({"question": row[0], "options": row[1:-1], "answer": answer})
    return questions


def _csv_path(directory: str, subject: str, split_file: str) -> str:
    return os.path.join(directory, "data", split_file, f"{subject}_{split_file}.csv")


def direct_prompt(subject: str, shots: list[dict], query: dict) -> str:
    """Hendrycks' format: a header, then "Answer: X" after each question's lettered options."""

    def block(question: dict) -> str:
        options = "".join(f"\n{letter}. {o}" for letter, o in zip(LETTERS, question["options"]))
        return f"{question['question']}{options}\nAnswer:"

    # evaluate.py's format_subject puts a space before each word, after the format string's
    # own: "about  abstract algebra."
    topic = "".join(f" {word}" for word in subject.split("_"))
    header = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    exemplars = "".join(f"{block(shot)} {shot['answer']}\n\n" for shot in shots)
    return header + exemplars + block(query)


def direct_example(subject: str, shots: list[dict], query: dict) -> dict:
    """A rank-classified question: its prompts with k = len(shots), ..., 0 exemplars (the
    first k dev rows: evaluate.py lowers k until the prompt fits) and the four letters."""
    prompts = [direct_prompt(subject, shots[:k], query) for k in range(len(shots), -1, -1)]
    return {
        "inputs": prompts[0],
        "targets": query["answer"],
        readers.PROMPTS: prompts,
        metrics.CHOICES: list(LETTERS),
    }


def cot_prompt(cot_exemplars: str, query: dict) -> str:
    """Flan's CoT prompt for the subject, then the query in its "Q: ... (A) x (B) y" format."""
    options = " ".join(f"({letter}) {o}" for letter, o in zip(LETTERS, query["options"]))
    return f"{cot_exemplars.rstrip()}\n\nQ: {query['question']}\n{options}\nA: {COT_TRIGGER}"


@functools.cache
def _cot_prompts(directory: str) -> dict[str, str]:
    path = os.path.join(directory, COT_PROMPTS_FILE)
    prompts = readers.read_json(path, "MMLU chain-of-thought prompts (Flan's mmlu-cot.json)")
    if not isinstance(prompts, dict):
        raise ValueError(f"{path}:1: expected a JSON object {{subject: prompt text}}")
    return prompts


@functools.cache
def examples(subject: str, chain_of_thought: bool, split: str, directory: str) -> list[dict]:
    queries = read_questions(_csv_path(directory, subject, SPLIT_FILES[split]))
    if chain_of_thought:
        prompts = _cot_prompts(directory)
        path = os.path.join(directory, COT_PROMPTS_FILE)
        exemplars = readers.field(prompts, subject, str, f"{path}:1")
        return [
            {"inputs": cot_prompt(exemplars, query), "targets": query["answer"]}
            for query in queries
        ]
    shots = read_questions(_csv_path(directory, subject, "dev"))[:NUM_SHOTS]
    return [direct_example(subject, shots, query) for query in queries]


def chance_rate(subject: str) -> float:
    """Every question has four options."""
    del subject
    return 100.0 / len(LETTERS)


def register(vocabulary: seqio.Vocabulary, keep: Sequence[str] | None = None) -> None:
    """Tasks mmlu_{direct,cot}_{subject} and the mixtures mmlu_direct, mmlu_cot over the
    subjects in `keep` (all by default). Both count questions, so that a suite can average
    over them."""
    for mode, chain_of_thought in (("direct", False), ("cot", True)):
        scoring = (
            dict(postprocess_fn=metrics.answer_letter, metric_fn=metrics.question_accuracy)
            if chain_of_thought
            else dict(
                postprocess_fn=metrics.choice_index,
                metric_fn=metrics.rank_accuracy,
                list_features=(readers.PROMPTS, metrics.CHOICES),
            )
        )
        readers.register_suite(
            f"mmlu_{mode}",
            SUBJECTS,
            keep,
            lambda subject, split, c=chain_of_thought: examples(
                subject, c, split, readers.data_dir(DATA_DIR_ENV, "MMLU")
            ),
            benchmark="MMLU",
            splits=tuple(SPLIT_FILES),
            vocabulary=vocabulary,
            **scoring,
        )
