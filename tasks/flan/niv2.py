"""Natural Instructions v2 tasks from a local checkout of allenai/natural-instructions.

Every `tasks/taskNNN_*.json` becomes a task, except the MMLU-derived ones (the paper
removes them; see `sources.is_mmlu_task`). The zero-shot prompt is the task's definition
followed by the instance input. Few-shot prompts follow FLAN's two NIV2 rules in turn: the
definition once, then two other instances of the task as exemplars, then the query; or an
inline pattern, the definition, one of the task's positive examples with its explanation,
then the query (tasks without positive examples use the first rule only). Tasks are
enumerated when this module is imported with $FLAN_JAX_NIV2_DIR set, or by
`register(directory)` (gin: NIV2_DIR); a task's instances are counted when a mixture's rates
are first needed and streamed from its file while its dataset is iterated, never held in
memory (`sources.niv2_source`).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from tasks.flan import registry, sources
from tasks.flan.registry import FlanTask, templates_from_pairs
from tasks.templates import FewShotFormat, FewShotVariant, Template

FAMILY = "niv2"

TEMPLATES = templates_from_pairs(
    [
        ("Definition: {definition}\n\nInput: {input}\nOutput:", "{output}"),
        ("{definition}\n\n{input}", "{output}"),
        ("Instructions: {definition}\n\n{input}\n\nAnswer:", "{output}"),
        ("Task: {definition}\nInput: {input}\nWhat is the output?", "{output}"),
    ]
)

# Few-shot: the definition once (the header), then exemplars and the query, each prompt in
# one of these in turn.
FEW_SHOT_FORMATS = (
    FewShotFormat("Input: ", "\nOutput: ", "\n\n", header="Definition: {definition}\n\n"),
    FewShotFormat("", "\n", "\n\n", header="{definition}\n\n"),
    FewShotFormat("Q: ", "\nA: ", "\n\n\n", header="Instructions: {definition}\n\n"),
    FewShotFormat("Problem: ", "\nSolution: ", "\n\n", header="Task: {definition}\n"),
    FewShotFormat("Example input: ", "\nExample output: ", "\n\n", header="{definition}\n---\n"),
)
# FLAN's NIV2 few-shot prompts hold two other instances of the task.
EXEMPLAR_SHOTS = 2
EXEMPLAR_TEMPLATES = (Template("{input}", "{output}"),) * len(FEW_SHOT_FORMATS)

# The inline rule: one positive example (`example_*` fields) with its explanation.
INLINE_TEMPLATES = templates_from_pairs(
    [
        (
            "{definition}\n\nExample input: {example_input}\nExample output: {example_output}\n"
            "Why: {example_explanation}\n\nNow this input: {input}\nOutput:",
            "{output}",
        ),
        (
            "Task: {definition}\nHere is a solved example.\nInput: {example_input}\n"
            "Output: {example_output}\nExplanation: {example_explanation}\n\n"
            "Input: {input}\nOutput:",
            "{output}",
        ),
        (
            "Instructions: {definition}\n\nFor instance:\n{example_input}\nAnswer: "
            "{example_output}\nBecause: {example_explanation}\n\nYour turn:\n{input}\nAnswer:",
            "{output}",
        ),
        (
            "Read the task and the worked example, then solve the new case.\n{definition}\n"
            "Problem: {example_input}\nSolution: {example_output}\n"
            "Reasoning: {example_explanation}\n\nNew problem: {input}\nSolution:",
            "{output}",
        ),
    ]
)
_POSITIVE_FIELDS = ("input", "output", "explanation")


def few_shot_variants(task: FlanTask, fmt: str, settings: dict, path: str):
    """The two NIV2 rules in turn (the exemplar rule alone without positive examples)."""
    del task, fmt, settings  # One rule set for every NIV2 task and few-shot format.
    exemplars = FewShotVariant(EXEMPLAR_TEMPLATES, FEW_SHOT_FORMATS, shots=EXEMPLAR_SHOTS)
    if not sources.niv2_positive_examples(path):
        return (exemplars,)
    return (FewShotVariant(INLINE_TEMPLATES, shots=0), exemplars)


def positive_example_fields(row: dict, path: str) -> dict:
    """The row with one of its task's positive examples as `example_input`,
    `example_output` and `example_explanation`, picked by a hash of the row's input (so a
    given instance always gets the same one)."""
    positives = sources.niv2_positive_examples(path)
    if not positives:
        return row
    pick = tf.strings.to_hash_bucket_fast(row["input"], len(positives))
    return {
        **row,
        **{
            f"example_{field}": tf.gather(tf.constant([p[field] for p in positives]), pick)
            for field in _POSITIVE_FIELDS
        },
    }


def register(directory: str) -> tuple[str, ...]:
    """Registers one task per task file in `directory` (replacing earlier NIV2 tasks);
    returns the seqio task names."""
    files = sources.niv2_task_files(directory)
    registry.unregister_family(FAMILY)
    names = ()
    for name, path in files.items():
        task = FlanTask(
            name,
            FAMILY,
            sources.niv2_source(path),
            TEMPLATES,
            to_fields=functools.partial(positive_example_fields, path=path),
            few_shot_variants=functools.partial(few_shot_variants, path=path),
        )
        names += registry.register(task)
    return names


_from_env = sources.data_dir(sources.NIV2_DIR_ENV)
TASK_NAMES = register(_from_env) if _from_env else ()
