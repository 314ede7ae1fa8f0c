"""The nine chain-of-thought datasets of the paper, from FLAN's cot_data TSV files.

`$FLAN_JAX_COT_DIR/<dataset>_train.tsv` holds `question<TAB>answer<TAB>rationale` lines
(the format and file names of github.com/google-research/FLAN, flan/v2/cot_data). Each
dataset gives two tasks, each in the zero-shot and few-shot CoT formats, following the
rules of FLAN's flan/v2 templates (the text is our own):

- `<dataset>`: the question with an instruction to reason, ten templates a dataset; the
  target is the rationale, then the answer in one of ten phrasings ("So the answer is",
  "Therefore, the answer is", "The answer:", ...). AQuA and QED, whose rationales FLAN
  calls stream of consciousness, ask for loose thoughts instead of step-by-step reasoning.
  Few-shot prompts use their own patterns, without the zero-shot instructions (the
  exemplars show the reasoning); the first is the eval suites' exemplar form (`Q: ...`,
  then `A: Let's think step by step. ... So the answer is X.`).
- `<dataset>_ii`, FLAN's input inversion: the question asked back from the rationale and
  answer, the rationale from the question and answer, or a question with its answer or
  reasoning made up for the rest; mixed at `INVERSION_RATE` of the CoT tasks' rate (see
  `mixtures`).

Importing registers them.
"""

from __future__ import annotations

import dataclasses

from tasks.flan import registry, sources
from tasks.flan.registry import FlanTask
from tasks.templates import Template

FAMILY = "cot"

# Dataset -> train examples in FLAN's files (the paper's CoT mixture: 74,730 examples).
DATASETS = {
    "aqua": 2728,
    "creak": 6915,
    "ecqa": 7112,
    "esnli": 36174,
    "gsm8k": 7473,
    "qasc": 1084,
    "qed": 5154,
    "sensemaking": 6070,
    "strategyqa": 2061,
}
# FLAN's "stream" datasets (its stream_aqua, stream_qed): rationales of lower quality,
# prompted as stream of consciousness.
STREAM_DATASETS = ("aqua", "qed")

INVERSION_SUFFIX = "_ii"
# FLAN's CoT-II submix: the input inversions together at 0.3 of the CoT tasks' rate.
INVERSION_RATE = 0.3

# How a target states the answer after the rationale, one phrasing a template. "So the
# answer is" is the phrase the eval suites' exemplars use and their extraction reads.
ANSWER_PHRASES = (
    "So the answer is",
    "Therefore, the answer is",
    "The answer:",
    "So the final answer is",
    "Final answer:",
    "Thus, the answer is",
    "The final answer:",
    "So, the answer is",
    "Therefore, the final answer is",
    "The answer is",
)

# Zero-shot instructions, one a template (paired in order with ANSWER_PHRASES).
_REASONING_PROMPTS = (
    "{question}\nLet's think step by step.",
    "{question} Reason it through before answering.",
    "Answer the question below and show your reasoning first.\n{question}",
    "Question: {question}\nWork it out step by step:",
    "{question}\nExplain your thinking, then give the answer.",
    "Think carefully before you answer. {question}",
    "Q: {question}\nStep-by-step reasoning:",
    "Solve this by reasoning one step at a time.\n{question}",
    "{question} Give the rationale, then the answer.",
    "Here is a question for you: {question}\nWhat is your reasoning, and what is the answer?",
)
_STREAM_PROMPTS = (
    "{question}\nThink out loud first, then answer.",
    "Some quick thoughts before the answer. {question}",
    "{question} Thinking aloud:",
    "Question: {question}\nLet your thoughts run for a bit, then decide.",
    "Before answering, jot down whatever comes to mind. {question}",
    "{question}\nA stream of consciousness first:",
    "Q: {question}\nLoose thoughts, then the answer:",
    "Answer after mulling it over informally.\n{question}",
    "{question} Let's muse on it a little first.",
    "I have a question: {question}\nWhat are your thoughts, and your answer?",
)

# Few-shot patterns: no instruction (the exemplars show the format). The first is the
# eval suites' exemplar format, so Q:/A: prompts train the way BBH and MMLU CoT prompt.
FEW_SHOT_TEMPLATES = (
    Template("{question}", "Let's think step by step. {rationale} So the answer is {answer}."),
    Template("{question}", "{rationale}\nThe answer is {answer}."),
    Template(
        "{question}\nGive your reasoning first.", "{rationale} Therefore, the answer is {answer}."
    ),
    Template("{question}", "Reasoning: {rationale}\nThe answer: {answer}."),
    Template("{question}", "{rationale} So the final answer is {answer}."),
)

# Input inversion, in FLAN's four directions.
INVERSION_TEMPLATES = (
    # rationale and answer -> question
    Template(
        "Here is some reasoning and the answer it reaches. What was the question?\n"
        "{rationale}\nAnswer: {answer}",
        "{question}",
    ),
    Template(
        "{rationale}\nSo the answer is {answer}.\n\nWhich question does this reasoning answer?",
        "Question: {question}",
    ),
    Template("Reasoning: {rationale}\nAnswer: {answer}\nWrite the question.", "{question}"),
    # question and answer -> rationale
    Template(
        "Question: {question}\nAnswer: {answer}\nExplain step by step how to get to this answer.",
        "{rationale}",
    ),
    Template('Why is "{answer}" the answer to the question below?\n{question}', "{rationale}"),
    Template(
        "{question}\nThe answer is {answer}. What reasoning leads there?",
        "Reasoning: {rationale}",
    ),
    # rationale -> question and answer
    Template(
        "Make up a question and its answer that this reasoning supports.\n{rationale}",
        "Question: {question}\nAnswer: {answer}",
    ),
    Template(
        "{rationale}\nWhat question and answer does this explanation fit?",
        "Q: {question}\nA: {answer}",
    ),
    # answer -> question and rationale
    Template(
        'Write a question whose answer is "{answer}", with the reasoning behind it.',
        "Question: {question}\nReasoning: {rationale}",
    ),
    Template(
        "Answer: {answer}\nInvent a question with this answer and explain how one reaches it.",
        "{question}\n{rationale}",
    ),
)
INVERSION_FEW_SHOT_TEMPLATES = (
    Template("{rationale}\nThe answer: {answer}\nWhat was the question?", "{question}"),
    Template("{question}\nThe answer is {answer}. Why?", "{rationale}"),
    Template("{rationale}", "{question}\nThe answer is {answer}."),
    Template(
        "The answer is {answer}. Make up a question and reasoning for it.",
        "{question}\n{rationale}",
    ),
)


def _zero_shot(prompts: tuple[str, ...]) -> tuple[Template, ...]:
    """Each prompt with the rationale and then its answer phrasing (on the same line or the
    next, alternately)."""
    joiners = (" ", "\n")
    return tuple(
        Template(prompt, "{rationale}" + joiners[i % 2] + phrase + " {answer}.")
        for i, (prompt, phrase) in enumerate(zip(prompts, ANSWER_PHRASES))
    )


REASONING_TEMPLATES = _zero_shot(_REASONING_PROMPTS)
STREAM_TEMPLATES = _zero_shot(_STREAM_PROMPTS)


@dataclasses.dataclass(frozen=True)
class CotTask(FlanTask):
    """A CoT task: few-shot prompts render with `few_shot_templates` (when given), not the
    zero-shot templates, as FLAN's few-shot CoT patterns leave the instruction to the
    exemplars; `inverts`: an input-inversion task."""

    few_shot_templates: tuple[Template, ...] = ()
    inverts: bool = False

    def templates_for(self, fmt: str) -> tuple[Template, ...]:
        if fmt.startswith("fs") and self.few_shot_templates:
            return self.few_shot_templates
        return self.templates


def is_inversion(task: FlanTask) -> bool:
    return isinstance(task, CotTask) and task.inverts


# The directory the sources read; `use_directory` (gin COT_DIR) overrides the
# environment variable.
_directory_override: list[str | None] = [None]


def directory() -> str | None:
    return sources.data_dir(sources.COT_DIR_ENV, _directory_override[0])


def use_directory(path: str | None) -> None:
    _directory_override[0] = path
    sources.read_cot_tsv.cache_clear()


def register() -> tuple[str, ...]:
    names = ()
    for dataset in DATASETS:
        source = sources.cot_source(dataset, directory)
        zero_shot = STREAM_TEMPLATES if dataset in STREAM_DATASETS else REASONING_TEMPLATES
        for task in (
            CotTask(dataset, FAMILY, source, zero_shot, few_shot_templates=FEW_SHOT_TEMPLATES),
            CotTask(
                dataset + INVERSION_SUFFIX,
                FAMILY,
                source,
                INVERSION_TEMPLATES,
                few_shot_templates=INVERSION_FEW_SHOT_TEMPLATES,
                inverts=True,
            ),
        ):
            names += registry.register(task)
    return names


TASK_NAMES = register()
