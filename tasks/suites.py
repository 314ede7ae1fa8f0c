"""The paper's six evaluation suites, in one place: their names (each a seqio mixture that
`tasks.eval` registers), column titles, how each averages its tasks, and the published
Flan-T5 / Flan-PaLM rows (Chung et al. 2022). Plain data: importing it registers no task and
reads nothing, so reports and gin files can use it without loading the suites.

In gin, once `tasks.suites` is imported (`import tasks.eval` does): `%PAPER_SUITES` and
`%PAPER_CHAIN_OF_THOUGHT_SUITES`. A gin constant shadows every macro of the same last name,
so these are named apart from the SUITES macros the gin files let users override.

The normalized average is the paper's: each task's score s is normalized against that task's
own chance rate r (`tasks.eval.chance_rate`, taken from its data) as 100 * (s - r) / (100 - r),
averaged within each suite as the suite's score is, then over the six suites. A random guesser
scores 0, a perfect model 100. The paper's published averages (PAPER_ROWS) come from its
per-task scores, which it does not list, so they cannot be recomputed from its six columns.
"""

import gin

# Suite name -> the paper's column title, in the paper's order.
COLUMNS = {
    "mmlu_direct": "MMLU direct",
    "mmlu_cot": "MMLU CoT",
    "bbh_direct": "BBH direct",
    "bbh_cot": "BBH CoT",
    "tydiqa": "TyDiQA",
    "mgsm": "MGSM",
}
SUITES = tuple(COLUMNS)
# The suites answered with a reasoning chain: the ones self-consistency samples.
CHAIN_OF_THOUGHT_SUITES = ("mmlu_cot", "bbh_cot", "mgsm")

# Suites scored over their questions (each task weighted by its number of questions), as
# hendrycks/test's evaluate.py prints MMLU's average; the others average their tasks.
PER_QUESTION_SUITES = ("mmlu_direct", "mmlu_cot")


def _row(*scores: float) -> dict[str, float]:
    return dict(zip(SUITES, scores))


# Model -> (the six scores, the published normalized average).
PAPER_ROWS = {
    "Flan-T5-small": (_row(28.7, 12.1, 29.1, 19.2, 1.1, 0.2), -3.1),
    "Flan-T5-base": (_row(35.9, 33.7, 31.3, 27.9, 4.1, 0.4), 6.5),
    "Flan-T5-large": (_row(45.1, 40.5, 37.5, 31.5, 12.3, 0.7), 13.8),
    "Flan-T5-XL": (_row(52.4, 45.5, 41.0, 35.2, 16.6, 1.9), 19.1),
    "Flan-T5-XXL": (_row(55.1, 48.6, 45.3, 41.4, 19.0, 4.9), 23.7),
    "Flan-PaLM 540B": (_row(73.5, 70.9, 57.9, 66.3, 67.8, 57.0), 58.4),
}

GIN_CONSTANTS = {
    "tasks.suites.PAPER_SUITES": SUITES,
    "tasks.suites.PAPER_CHAIN_OF_THOUGHT_SUITES": CHAIN_OF_THOUGHT_SUITES,
}
for _name, _value in GIN_CONSTANTS.items():
    gin.constant(_name, _value)
