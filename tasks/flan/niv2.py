"""Natural Instructions v2 tasks from a local checkout of allenai/natural-instructions.

Every `tasks/taskNNN_*.json` becomes a task, except the MMLU-derived ones (the paper
removes them; see `sources.is_mmlu_task`). The zero-shot prompt is the task's definition
followed by the instance input; few-shot prompts add other instances of the task as
exemplars. Tasks are enumerated when this module is imported with $FLAN_JAX_NIV2_DIR set, or
by `register(directory)` (gin: NIV2_DIR); a task's instances are counted when a mixture's
rates are first needed and streamed from its file while its dataset is iterated, never held
in memory (`sources.niv2_source`).
"""

from __future__ import annotations

from tasks.flan import registry, sources
from tasks.flan.registry import FlanTask, templates_from_pairs

FAMILY = "niv2"

TEMPLATES = templates_from_pairs(
    [
        ("Definition: {definition}\n\nInput: {input}\nOutput:", "{output}"),
        ("{definition}\n\n{input}", "{output}"),
        ("Instructions: {definition}\n\n{input}\n\nAnswer:", "{output}"),
        ("Task: {definition}\nInput: {input}\nWhat is the output?", "{output}"),
    ]
)


def register(directory: str) -> tuple[str, ...]:
    """Registers one task per task file in `directory` (replacing earlier NIV2 tasks);
    returns the seqio task names."""
    files = sources.niv2_task_files(directory)
    registry.unregister_family(FAMILY)
    names = ()
    for name, path in files.items():
        names += registry.register(FlanTask(name, FAMILY, sources.niv2_source(path), TEMPLATES))
    return names


_from_env = sources.data_dir(sources.NIV2_DIR_ENV)
TASK_NAMES = register(_from_env) if _from_env else ()
