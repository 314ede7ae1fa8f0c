"""The paper's six evaluation suites, in one place: their names (each a seqio mixture that
`tasks.eval` registers), column titles, chance rates and the published Flan-T5 / Flan-PaLM
rows (Chung et al. 2022). Plain data: importing it registers no task and reads nothing, so
reports and gin files can use it without loading the suites.

In gin, once `tasks.suites` is imported (`import tasks.eval` does): `%PAPER_SUITES` and
`%PAPER_CHAIN_OF_THOUGHT_SUITES`. A gin constant shadows every macro of the same last name,
so these are named apart from the SUITES macros the gin files let users override.

The normalized average normalizes each score s against its suite's random-guess baseline r as
100 * (s - r) / (100 - r) and averages the six. The paper normalizes per task before
aggregating and does not list its baselines, so no single true chance rate per column
reproduces its table (with MMLU at 25, BBH's rate would have to be 26.9 for Flan-T5-small but
24.4 for Flan-PaLM). RANDOM_BASELINES are therefore effective per-column baselines, fitted so
that every paper row's normalized average comes out within 0.05 of the published one, with
MMLU-CoT at its chance rate of 25 and the generative TyDiQA and MGSM at 0.
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

RANDOM_BASELINES = {
    "mmlu_direct": 32.0,
    "mmlu_cot": 25.0,
    "bbh_direct": 13.0,
    "bbh_cot": 30.5,
    "tydiqa": 0.0,
    "mgsm": 0.0,
}


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
