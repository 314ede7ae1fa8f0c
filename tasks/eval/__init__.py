"""The paper's evaluation suites as seqio tasks and mixtures: MMLU and BBH (direct and chain of
thought), TyDiQA GoldP and MGSM. Each suite is a mixture of equally weighted tasks (subjects,
subtasks, languages) named as the paper's columns; its score is the mean of theirs.

Importing registers everything with the Flan vocabulary (`tasks.vocab.flan_vocabulary`);
`register_suites` registers again with another vocabulary (e.g. a Hugging Face directory's
spiece.model) or with the suites narrowed to some subtasks. No data is read until a task's
split is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio

from tasks import vocab
from tasks.eval import bbh, mgsm, mmlu, tydiqa
from tasks.suites import SUITES

BENCHMARKS = {"mmlu": mmlu, "bbh": bbh, "tydiqa": tydiqa, "mgsm": mgsm}
DATA_DIR_ENVS = {name: module.DATA_DIR_ENV for name, module in BENCHMARKS.items()}


def register_suites(
    suites: Sequence[str] = SUITES,
    subtasks: Mapping[str, Sequence[str]] | None = None,
    vocabulary: seqio.Vocabulary | None = None,
) -> tuple[str, ...]:
    """Registers every task and the suites' mixtures, and returns the suite names (so gin can
    pass them on: `EVAL_SUITES = @tasks.eval.register_suites()`).

    `subtasks` narrows a benchmark's mixtures, e.g. {"mmlu": ["anatomy"], "mgsm": ["de"]};
    `vocabulary` defaults to the Flan vocabulary.
    """
    unknown_suites = sorted(set(suites) - set(SUITES))
    unknown_benchmarks = sorted(set(subtasks or {}) - set(BENCHMARKS))
    if unknown_suites or unknown_benchmarks:
        raise ValueError(
            f"unknown suites {unknown_suites} / benchmarks {unknown_benchmarks}: suites are "
            f"{', '.join(SUITES)}; subtasks are keyed by {', '.join(BENCHMARKS)}"
        )
    vocabulary = vocabulary or vocab.flan_vocabulary()
    for name, module in BENCHMARKS.items():
        module.register(vocabulary, (subtasks or {}).get(name))
    return tuple(suites)


def chance_rate(task: str) -> float:
    """The score (percent) of a uniform random guess among a suite task's answers, from its
    data: 25 for MMLU; for BBH 100 / the options an input lists, else / the task's closed set of
    gold answers (50 for True/False or yes/no), else 0 (free-form); 0 for TyDiQA and MGSM,
    whose answers are free text. The normalized average is measured against it."""
    for suite in SUITES:
        if task.startswith(f"{suite}_"):
            return BENCHMARKS[suite.split("_")[0]].chance_rate(task.removeprefix(f"{suite}_"))
    raise ValueError(f"{task!r} is not a task of the suites {', '.join(SUITES)}")


register_suites()
