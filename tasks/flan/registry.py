"""Flan tasks: one data source and template set, registered as a seqio task per format.

A `FlanTask` is a dataset with its Flan templates. `register` turns it into seqio tasks,
one per format: zero-shot or few-shot (`zs`/`fs`), with answer options or without
(`opt`/`noopt`, when a template lists options), or chain of thought (`cot`, the CoT
datasets). Each example carries metadata: the task, the format and the template index.
How prompts render (exemplar counts, token budget, option styles) is read from gin when a
dataset is built, so a run's gin file sets it for every task.

FLAN's rendering rules: zero-shot prompts with options list them half in the plain
`OPTIONS:` form and half in a header, bullet and end string drawn per example; few-shot
prompts always use the plain form. Few-shot prompts with options (and CoT) alternate between
FLAN's two variants: `few_shot_k` (5) exemplars each in its own template, joined by one
separator chosen per task, and FLAN's "x-shot" prompts in the query's template: of
`matching_candidates` (25) drawn exemplars each is kept with probability `matching_rate`
(0.1: FLAN gives each candidate a random one of the task's ten templates and keeps those
matching the query's), so the count is Binomial(25, 0.1), 2.5 on average, whatever the
number of templates a task here has. Few-shot prompts without options use the second only.
A query left without exemplars is dropped (FLAN drops it too: 7.2% of x-shot queries).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Sequence

import gin
import seqio
import tensorflow as tf

from tasks import templates, vocab
from tasks.templates import FewShotFormat, FewShotVariant, Template

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
# The mixed-template variant joins its exemplars with one of these, chosen per task.
MIXED_SEPARATORS = ("\n", "\n\n", "\n\n\n")
# Bump when a change here or in tasks.templates changes the rendered text: task caches made
# before are then refused instead of mixed with new prompts.
RENDERING_VERSION = 3


def format_settings(
    few_shot_k: int = 5,
    matching_rate: float = 0.1,
    matching_candidates: int = 25,
    max_input_tokens: int | None = 1920,
    randomize_options: bool = True,
    seed: int = 0,
) -> dict:
    """How Flan prompts render; bind in gin (`registry.format_settings.max_input_tokens`).

    few_shot_k: exemplars of the mixed-template few-shot variant (FLAN: 5).
    matching_candidates, matching_rate: the x-shot variant keeps each of that many drawn
    exemplars with that probability (FLAN: 25 and 1 in 10, its ten templates a task).
    max_input_tokens: few-shot prompts drop trailing exemplars until they fit (1920 leaves
    room in the paper's 2048-token inputs), and are dropped if none fits; None: no pruning.
    randomize_options: zero-shot option lists half in randomized headers, bullets and end
    strings (else all `OPTIONS:`/`- `).
    """
    return dict(
        few_shot_k=few_shot_k,
        matching_rate=matching_rate,
        matching_candidates=matching_candidates,
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
    and its templates (those with `{options_}` also give the no-options variant).

    few_shot_variants(task, fmt, settings) gives the variants of its few-shot prompts
    (default: `flan_few_shot_variants`, FLAN's rule over the task's templates)."""

    name: str
    family: str
    source: seqio.DataSource
    templates: tuple[Template, ...]
    to_fields: Callable[[dict], dict] | None = None
    train_split: str = "train"
    few_shot_variants: Callable[[FlanTask, str, dict], tuple[FewShotVariant, ...]] | None = None

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


def flan_few_shot_variants(task: FlanTask, fmt: str, settings: dict) -> tuple[FewShotVariant, ...]:
    """FLAN's few-shot variants: with options (and for CoT) the mixed-template five-shot
    prompts and the x-shot ones (Binomial(25, 0.1) exemplars in the query's template) in
    turn; without options only the latter (FLAN's fs_noopt submix holds only its x_shot
    tasks)."""
    chosen = task.templates_for(fmt)
    matching = FewShotVariant(
        chosen,
        FEW_SHOT_FORMATS,
        shots=settings["matching_candidates"],
        candidates=settings["matching_candidates"],
        keep_rate=settings["matching_rate"],
    )
    if fmt == "fs_noopt":
        return (matching,)
    mixed = FewShotVariant(
        chosen,
        FEW_SHOT_FORMATS,
        shots=settings["few_shot_k"],
        exemplar_templates=templates.OWN_TEMPLATE,
        separator=mixed_separator(task, settings["seed"]),
    )
    return (mixed, matching)


def mixed_separator(task: FlanTask, seed: int) -> str:
    """The task's separator between mixed-template exemplars: one per task, as FLAN draws
    it when registering a task, here a function of (seed, task) so it is reproducible."""
    key = f"{seed}/{task.family}/{task.name}".encode()
    return MIXED_SEPARATORS[zlib.crc32(key) % len(MIXED_SEPARATORS)]


def _render(dataset: tf.data.Dataset, task: FlanTask, fmt: str) -> tf.data.Dataset:
    settings = current_settings()
    if fmt.startswith("zs"):
        options = (
            templates.RANDOM_OPTIONS_FORMATS
            if settings["randomize_options"]
            else templates.OptionsFormat()
        )
        chosen = task.templates_for(fmt)
        dataset = templates.apply_templates(dataset, chosen, options, seed=settings["seed"])
    else:
        variants = (task.few_shot_variants or flan_few_shot_variants)(task, fmt, settings)
        exemplars = _fields(task.source.get_dataset(task.train_split, shuffle=False), task)
        dataset = templates.few_shot_variants(
            dataset,
            variants,
            shuffle_seed=settings["seed"],
            max_input_tokens=settings["max_input_tokens"],
            vocabulary=vocab.flan_vocabulary() if settings["max_input_tokens"] else None,
            exemplar_dataset=exemplars,
        )

    def tag(example):
        return {**example, TASK_FEATURE: tf.constant(task.name), FORMAT_FEATURE: tf.constant(fmt)}

    return dataset.map(tag, num_parallel_calls=tf.data.AUTOTUNE)


def _fingerprint() -> dict:
    """What `_render` reads at run time: part of a task cache's identity."""
    return {"rendering": RENDERING_VERSION, **current_settings()}


_render.cache_fingerprint = _fingerprint


def templates_from_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[Template, ...]:
    return tuple(Template(inputs, targets) for inputs, targets in pairs)
