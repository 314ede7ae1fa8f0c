"""Flan tasks: one data source and template set, registered as a seqio task per format.

A `FlanTask` is a dataset with its Flan templates. `register` turns it into seqio tasks,
one per format: zero-shot or few-shot (`zs`/`fs`), with answer options or without
(`opt`/`noopt`, when a template lists options), or chain of thought (`cot`, the CoT
datasets). Each example carries metadata: the task, the format and the template index.
How prompts render (exemplar count, token budget, option styles) is read from gin when a
dataset is built, so a run's gin file sets it for every task.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import gin
import seqio
import tensorflow as tf

from tasks import templates, vocab
from tasks.templates import FewShotFormat, Template

FAMILIES = ("muffin", "t0sf", "niv2", "cot")
TASK_FEATURE = "task"
FORMAT_FEATURE = "format"

# Few-shot delimiters, one per template in turn (per-template prefixes, as in Flan).
FEW_SHOT_FORMATS = (
    FewShotFormat(),
    FewShotFormat("Input: ", "\nOutput: "),
    FewShotFormat("Question: ", "\nAnswer: "),
    FewShotFormat("Problem: ", "\n\nAnswer: ", "\n\n\n"),
)


def format_settings(
    few_shot_k: int = 3,
    max_input_tokens: int | None = 1920,
    randomize_options: bool = True,
    seed: int = 0,
) -> dict:
    """How Flan prompts render; bind in gin (`registry.format_settings.max_input_tokens`).

    max_input_tokens: few-shot prompts drop trailing exemplars until they fit (1920 leaves
    room in the paper's 2048-token inputs); None: no pruning.
    randomize_options: option lists in randomized headers and bullets (else `OPTIONS:`/`- `).
    """
    return dict(
        few_shot_k=few_shot_k,
        max_input_tokens=max_input_tokens,
        randomize_options=randomize_options,
        seed=seed,
    )


def current_settings() -> dict:
    """`format_settings` with the gin bindings of this process, if gin registered it."""
    try:
        return gin.get_configurable(format_settings)()
    except ValueError:  # No gin file mentioned it: the defaults.
        return format_settings()


@dataclasses.dataclass(frozen=True)
class FlanTask:
    """One dataset of the collection: its source, how raw examples become template fields,
    and its templates (those with `{options_}` also give the no-options variant)."""

    name: str
    family: str
    source: seqio.DataSource
    templates: tuple[Template, ...]
    to_fields: Callable[[dict], dict] | None = None
    train_split: str = "train"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(
                f"FlanTask {self.name!r}: family {self.family!r} is not one of {FAMILIES}."
            )

    @property
    def formats(self) -> tuple[str, ...]:
        if self.family == "cot":
            return ("zs_cot", "fs_cot")
        if any(t.shows_options for t in self.templates):
            return ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
        return ("zs_noopt", "fs_noopt")

    def variant(self, fmt: str) -> str:
        return f"{self.family}_{self.name}_{fmt}"

    def templates_for(self, fmt: str) -> tuple[Template, ...]:
        if fmt.endswith("noopt"):
            return tuple(t.without_options() for t in self.templates)
        return self.templates


# family -> {name: FlanTask}, in registration order.
REGISTERED: dict[str, dict[str, FlanTask]] = {family: {} for family in FAMILIES}


def output_features() -> dict[str, seqio.Feature]:
    vocabulary = vocab.flan_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def register(task: FlanTask) -> tuple[str, ...]:
    """Registers (or replaces) the task's seqio tasks, one per format; returns their names."""
    names = []
    for fmt in task.formats:
        name = task.variant(fmt)
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=task.source,
            preprocessors=[
                functools.partial(_fields, task=task),
                functools.partial(_render, task=task, fmt=fmt),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features(),
        )
        names.append(name)
    REGISTERED[task.family][task.name] = task
    return tuple(names)


def unregister_family(family: str) -> None:
    """Removes a family's tasks (before registering them again from another directory)."""
    for task in REGISTERED[family].values():
        for fmt in task.formats:
            seqio.TaskRegistry.remove(task.variant(fmt))
    REGISTERED[family].clear()


def variants(family: str, fmt: str | None = None) -> list[tuple[FlanTask, str]]:
    """(task, seqio task name) of a family's registered variants, optionally one format."""
    return [
        (task, task.variant(f))
        for task in REGISTERED[family].values()
        for f in task.formats
        if fmt is None or f == fmt
    ]


def _fields(dataset: tf.data.Dataset, task: FlanTask) -> tf.data.Dataset:
    if task.to_fields is not None:
        dataset = dataset.map(task.to_fields, num_parallel_calls=tf.data.AUTOTUNE)
        if templates.OPTIONS_FIELD in dataset.element_spec:  # Options need an answer among them.
            dataset = dataset.filter(lambda ex: tf.size(ex[templates.OPTIONS_FIELD]) > 0)
    return dataset


def _render(dataset: tf.data.Dataset, task: FlanTask, fmt: str) -> tf.data.Dataset:
    settings = current_settings()
    chosen = task.templates_for(fmt)
    options = (
        templates.RANDOM_OPTIONS_FORMATS
        if settings["randomize_options"]
        else templates.OptionsFormat()
    )
    if fmt.startswith("zs"):
        dataset = templates.apply_templates(dataset, chosen, options, seed=settings["seed"])
    else:
        exemplars = _fields(task.source.get_dataset(task.train_split, shuffle=False), task)
        dataset = templates.few_shot(
            dataset,
            chosen,
            k=settings["few_shot_k"],
            fewshot_format=FEW_SHOT_FORMATS,
            options_format=options,
            shuffle_seed=settings["seed"],
            max_input_tokens=settings["max_input_tokens"],
            vocabulary=vocab.flan_vocabulary() if settings["max_input_tokens"] else None,
            exemplar_dataset=exemplars,
        )

    def tag(example):
        return {**example, TASK_FEATURE: tf.constant(task.name), FORMAT_FEATURE: tf.constant(fmt)}

    return dataset.map(tag, num_parallel_calls=tf.data.AUTOTUNE)


_render.cache_fingerprint = current_settings  # read at run time: part of a task cache's identity


def templates_from_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[Template, ...]:
    return tuple(Template(inputs, targets) for inputs, targets in pairs)
