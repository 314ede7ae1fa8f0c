"""The nine chain-of-thought datasets of the paper, from FLAN's cot_data TSV files.

`$FLAN_JAX_COT_DIR/<dataset>_train.tsv` holds `question<TAB>answer<TAB>rationale` lines
(the format and file names of github.com/google-research/FLAN, flan/v2/cot_data). Each
dataset is a CoT task in zero-shot and few-shot CoT formats: the trigger phrase after the
question; the rationale, then "So the answer is ...", as target. Importing registers them.
"""

from __future__ import annotations

from tasks import templates
from tasks.flan import registry, sources
from tasks.flan.registry import FlanTask

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

TEMPLATES = (
    templates.cot_template("{question}"),
    templates.cot_template("Answer the following question.\n{question}"),
    templates.cot_template("{question}", trigger="Let's reason step by step to the answer."),
    templates.cot_template("Question: {question}", trigger="Think it through, then answer."),
    templates.cot_template("{question}\nGive the rationale before the answer."),
)

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
        task = FlanTask(dataset, FAMILY, sources.cot_source(dataset, directory), TEMPLATES)
        names += registry.register(task)
    return names


TASK_NAMES = register()
