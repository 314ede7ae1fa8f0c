"""Instruction templates as seqio preprocessors.

Flan turns every dataset example into instruction text by filling a template: zero-shot or
few-shot, with or without chain of thought, answer options listed as `OPTIONS:\\n- a\\n- b`.
Everything here renders with TF string ops inside tf.data (no tf.py_function), so templating
runs in the same parallel pipeline as tokenization and seqio can cache its output like any
other preprocessor's.

Patterns use `{field}` slots (`{{` and `}}` for literal braces). A pattern is parsed once, in
Python, into literal parts and field names; rendering joins the parts with `tf.strings.join`,
so a field's value is never read as a pattern or a regex.

Room to grow without rewriting: another `OptionsFormat` gives other option headers and
bullets; a preprocessor between `add_exemplars` and `join_exemplars`, which keep exemplars
as string vectors, can prune them to a token budget; every preprocessor here passes the
example's other features through, so per-example metadata rides along.
"""

import dataclasses
import string
from typing import Mapping, Sequence

import tensorflow as tf

# `{options_}` renders the string-list feature `options`.
OPTIONS_SLOT = "options_"
OPTIONS_FIELD = "options"

COT_TRIGGER = "Let's think step by step."
COT_ANSWER_PREFIX = "So the answer is"

EXEMPLAR_INPUTS = "exemplar_inputs"
EXEMPLAR_TARGETS = "exemplar_targets"

# Exemplar candidates are shuffled through a buffer of this many examples.
_EXEMPLAR_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True)
class OptionsFormat:
    """How `{options_}` lists answer options: a header line, then one bulleted line each."""

    header: str = "OPTIONS:"
    bullet: str = "- "

    def render(self, options: tf.Tensor) -> tf.Tensor:
        lines = tf.strings.join([self.bullet, options])
        return tf.strings.join([self.header, "\n", tf.strings.reduce_join(lines, separator="\n")])


@dataclasses.dataclass(frozen=True)
class FewShotFormat:
    """Delimiters of a few-shot prompt.

    Each exemplar is `input_prefix + inputs + target_prefix + targets + example_separator`;
    the query follows as `input_prefix + inputs + target_prefix` less its trailing spaces,
    so that the model's output is the answer.
    """

    input_prefix: str = "Q: "
    target_prefix: str = "\nA: "
    example_separator: str = "\n\n"


@dataclasses.dataclass(frozen=True)
class Template:
    """An inputs pattern and a targets pattern with `{field}` slots."""

    inputs: str
    targets: str
    _inputs_parts: tuple[tuple[str, bool], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    _targets_parts: tuple[tuple[str, bool], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self):
        object.__setattr__(self, "_inputs_parts", _parse(self.inputs))
        object.__setattr__(self, "_targets_parts", _parse(self.targets))

    @property
    def fields(self) -> frozenset[str]:
        """The example features the template reads."""
        parts = self._inputs_parts + self._targets_parts
        names = {text for text, is_field in parts if is_field}
        if OPTIONS_SLOT in names:
            names = (names - {OPTIONS_SLOT}) | {OPTIONS_FIELD}
        return frozenset(names)

    @property
    def literals(self) -> tuple[str, ...]:
        """The fixed text of both patterns, in order."""
        parts = self._inputs_parts + self._targets_parts
        return tuple(text for text, is_field in parts if not is_field)

    def render(
        self, features: Mapping[str, tf.Tensor], options_format: OptionsFormat = OptionsFormat()
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The (inputs, targets) scalar strings of one example."""
        missing = self.fields - set(features)
        if missing:
            raise KeyError(
                f"Template {self.inputs!r} -> {self.targets!r} needs features {sorted(missing)}, "
                f"but the example has only {sorted(features)}; add them in the data source or "
                "in a preprocessor that runs before templating."
            )
        return (
            _render_parts(self._inputs_parts, features, options_format),
            _render_parts(self._targets_parts, features, options_format),
        )


def cot_template(inputs: str, trigger: str = COT_TRIGGER) -> Template:
    """A chain-of-thought template: the trigger phrase after `inputs`; as target, the
    `rationale` feature, then "So the answer is {answer}."."""
    escaped_trigger = trigger.replace("{", "{{").replace("}", "}}")
    return Template(
        inputs=f"{inputs}\n{escaped_trigger}",
        targets=f"{{rationale}} {COT_ANSWER_PREFIX} {{answer}}.",
    )


def apply_templates(
    dataset: tf.data.Dataset,
    templates: Sequence[Template],
    options_format: OptionsFormat = OptionsFormat(),
) -> tf.data.Dataset:
    """Sets "inputs" and "targets"; example i uses templates[i % len(templates)].

    Cycling rather than sampling makes an example's text a function of its position in the
    split, the same on every run and restart. Positions count within the stream this
    preprocessor sees, so a split sharded by example before templating cycles per shard.
    Other features pass through.
    """
    templates = _check_templates(templates)

    def render(index, example):
        inputs, targets = _render_all(templates, example, options_format)
        choice = index % len(templates)
        return {**example, "inputs": inputs[choice], "targets": targets[choice]}

    return dataset.enumerate().map(render, num_parallel_calls=tf.data.AUTOTUNE)


def add_exemplars(
    dataset: tf.data.Dataset,
    templates: Sequence[Template],
    k: int,
    options_format: OptionsFormat = OptionsFormat(),
    num_candidates: int | None = None,
    shuffle_seed: int = 0,
) -> tf.data.Dataset:
    """Templates each example as `apply_templates` does, and attaches k exemplars.

    Exemplars are other examples of the same split, rendered with the query's template, kept
    as string vectors under "exemplar_inputs" and "exemplar_targets". They come from a
    shuffled, repeated pass over the split (with a fixed seed, so deterministic). Of every
    `num_candidates` (default 2k) candidates, those whose rendered inputs equal the query's
    are dropped: an example never serves as its own exemplar, nor does a duplicate of it.
    """
    templates = _check_templates(templates)
    if k < 1:
        raise ValueError(f"few-shot needs k >= 1 exemplars; got k={k}.")
    num_candidates = num_candidates or 2 * k
    if num_candidates < k:
        raise ValueError(
            f"num_candidates={num_candidates} is below k={k}; pass at least k (default 2k)."
        )

    def render_all(example):
        return _render_all(templates, example, options_format)

    candidates = (
        dataset.map(render_all, num_parallel_calls=tf.data.AUTOTUNE)
        .shuffle(_EXEMPLAR_SHUFFLE_BUFFER, seed=shuffle_seed)
        .repeat()
        .batch(num_candidates)
    )

    def attach(indexed, candidate_batch):
        index, example = indexed
        inputs, targets = _render_all(templates, example, options_format)
        choice = index % len(templates)
        query = inputs[choice]
        candidate_inputs = candidate_batch[0][:, choice]
        candidate_targets = candidate_batch[1][:, choice]
        distinct = tf.not_equal(candidate_inputs, query)
        exemplar_inputs = tf.boolean_mask(candidate_inputs, distinct)[:k]
        exemplar_targets = tf.boolean_mask(candidate_targets, distinct)[:k]
        tf.debugging.assert_equal(
            tf.size(exemplar_inputs),
            k,
            message=(
                f"Fewer than k={k} of {num_candidates} exemplar candidates differ from the "
                "example: the split has too few distinct examples. Raise num_candidates or "
                "lower k."
            ),
        )
        exemplar_inputs.set_shape([k])
        exemplar_targets.set_shape([k])
        return {
            **example,
            "inputs": query,
            "targets": targets[choice],
            EXEMPLAR_INPUTS: exemplar_inputs,
            EXEMPLAR_TARGETS: exemplar_targets,
        }

    return tf.data.Dataset.zip(dataset.enumerate(), candidates).map(
        attach, num_parallel_calls=tf.data.AUTOTUNE
    )


def join_exemplars(
    dataset: tf.data.Dataset, fewshot_format: FewShotFormat = FewShotFormat()
) -> tf.data.Dataset:
    """Writes the exemplars and the query into one few-shot "inputs" string."""
    fmt = fewshot_format

    def join(example):
        shots = tf.strings.join(
            [
                fmt.input_prefix,
                example[EXEMPLAR_INPUTS],
                fmt.target_prefix,
                example[EXEMPLAR_TARGETS],
                fmt.example_separator,
            ]
        )
        inputs = tf.strings.join(
            [
                tf.strings.reduce_join(shots),
                fmt.input_prefix,
                example["inputs"],
                fmt.target_prefix.rstrip(" "),
            ]
        )
        rest = {
            key: value
            for key, value in example.items()
            if key not in (EXEMPLAR_INPUTS, EXEMPLAR_TARGETS)
        }
        return {**rest, "inputs": inputs}

    return dataset.map(join, num_parallel_calls=tf.data.AUTOTUNE)


def few_shot(
    dataset: tf.data.Dataset,
    templates: Sequence[Template],
    k: int,
    fewshot_format: FewShotFormat = FewShotFormat(),
    options_format: OptionsFormat = OptionsFormat(),
    num_candidates: int | None = None,
    shuffle_seed: int = 0,
) -> tf.data.Dataset:
    """k-shot prompts: `add_exemplars`, then `join_exemplars`."""
    dataset = add_exemplars(
        dataset, templates, k, options_format, num_candidates, shuffle_seed
    )
    return join_exemplars(dataset, fewshot_format)


def _parse(pattern: str) -> tuple[tuple[str, bool], ...]:
    """Splits a pattern into (literal text, False) and (field name, True) parts."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as e:
        raise ValueError(
            f"Template pattern {pattern!r} is malformed ({e}); write a literal brace as "
            "'{{' or '}}'."
        ) from None
    parts = []
    for literal, field, format_spec, conversion in parsed:
        if literal:
            parts.append((literal, False))
        if field is None:
            continue
        if not field.isidentifier() or format_spec or conversion:
            raise ValueError(
                f"Template pattern {pattern!r} has a slot {field!r} with a conversion, a "
                "format spec or a name that is not an identifier; a slot is a plain feature "
                "name, like '{answer}'."
            )
        parts.append((field, True))
    return tuple(parts)


def _render_parts(parts, features, options_format: OptionsFormat) -> tf.Tensor:
    pieces = [""]
    for text, is_field in parts:
        if not is_field:
            pieces.append(text)
        elif text == OPTIONS_SLOT:
            pieces.append(options_format.render(_options(features)))
        else:
            pieces.append(_field_text(features, text))
    return tf.strings.join(pieces)


def _field_text(features, name: str) -> tf.Tensor:
    value = tf.convert_to_tensor(features[name])
    if value.shape.rank not in (None, 0):
        raise ValueError(
            f"Feature {name!r} has shape {value.shape}, but a slot takes a single value; "
            f"put a list of answers in the {OPTIONS_FIELD!r} feature and render it with "
            f"'{{{OPTIONS_SLOT}}}'."
        )
    if value.dtype == tf.string:
        return value
    if value.dtype.is_integer:
        return tf.strings.as_string(value)
    raise TypeError(
        f"Feature {name!r} has dtype {value.dtype.name}; slots take strings or integers, so "
        "format it as a string in the data source."
    )


def _options(features) -> tf.Tensor:
    options = tf.convert_to_tensor(features[OPTIONS_FIELD])
    if options.dtype != tf.string or options.shape.rank not in (None, 1):
        raise ValueError(
            f"Feature {OPTIONS_FIELD!r} is {options.dtype.name} of shape {options.shape}; "
            f"'{{{OPTIONS_SLOT}}}' needs a vector of strings."
        )
    return options


def _render_all(templates, example, options_format):
    """(inputs, targets): string vectors with one rendering per template."""
    rendered = [template.render(example, options_format) for template in templates]
    return (
        tf.stack([inputs for inputs, _ in rendered]),
        tf.stack([targets for _, targets in rendered]),
    )


def _check_templates(templates: Sequence[Template]) -> tuple[Template, ...]:
    if isinstance(templates, Template):
        raise TypeError(
            f"Expected a sequence of Template, got one: {templates!r}; wrap it in a list."
        )
    templates = tuple(templates)
    if not templates or not all(isinstance(t, Template) for t in templates):
        raise ValueError(f"Expected a non-empty sequence of Template; got {templates!r}.")
    return templates
