"""Instruction templates as seqio preprocessors.

Flan turns every dataset example into instruction text by filling a template: zero-shot or
few-shot, with or without chain of thought, answer options listed as `OPTIONS:\\n- a\\n- b`.
Everything here renders with TF string ops inside tf.data (no tf.py_function), so templating
runs in the same parallel pipeline as tokenization and seqio can cache its output like any
other preprocessor's.

Patterns use `{field}` slots (`{{` and `}}` for literal braces). A pattern is parsed once, in
Python, into literal parts and field names; rendering joins the parts with `tf.strings.join`,
so a field's value is never read as a pattern or a regex.

Answer options render in one `OptionsFormat` or, per example, in one drawn from several
(headers, bullets, lettered or numbered labels; a labelled list rewrites the target to the
answer's label). Few-shot prompts keep exemplars as string vectors until `join_exemplars`,
which writes them with the template's delimiters and drops the last ones until the prompt
fits a token budget. Every preprocessor passes the example's other features through and adds
`template_index`, so per-example metadata rides along.
"""

import dataclasses
import string
from collections.abc import Mapping, Sequence

import tensorflow as tf

# `{options_}` renders the string-list feature `options`.
OPTIONS_SLOT = "options_"
OPTIONS_FIELD = "options"

COT_TRIGGER = "Let's think step by step."
COT_ANSWER_PREFIX = "So the answer is"

EXEMPLAR_INPUTS = "exemplar_inputs"
EXEMPLAR_TARGETS = "exemplar_targets"
# Per-example metadata: which template of the cycle rendered the example.
TEMPLATE_INDEX = "template_index"

# Exemplar candidates are shuffled through a buffer of this many examples.
_EXEMPLAR_SHUFFLE_BUFFER = 10_000

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
NUMBERS = tuple(str(n) for n in range(1, len(LETTERS) + 1))
_LABEL_SLOT = "{}"


@dataclasses.dataclass(frozen=True)
class OptionsFormat:
    """How `{options_}` lists answer options: a header line, then one bulleted line each.

    With `labels` (e.g. `LETTERS`), `bullet` holds a `{}` that takes each option's label,
    like `"({}) "`, and a template that shows the options answers with the label: a target
    equal to one of the options is rewritten to its label.
    """

    header: str = "OPTIONS:"
    bullet: str = "- "
    labels: tuple[str, ...] = ()

    def __post_init__(self):
        if bool(self.labels) != (_LABEL_SLOT in self.bullet):
            raise ValueError(
                f"OptionsFormat bullet {self.bullet!r} with labels {self.labels!r}: a labelled "
                "format needs '{}' in its bullet (e.g. '({}) '), an unlabelled one must not "
                "have it."
            )

    def render(self, options: tf.Tensor) -> tf.Tensor:
        return _OptionsTable((self,)).render(options, 0)


# Randomized option lists, in the spirit of Flan's: several headers and bullet styles.
RANDOM_OPTIONS_FORMATS = (
    OptionsFormat(),
    OptionsFormat("Options:", "- "),
    OptionsFormat("Choose your answer from:", "* "),
    OptionsFormat("Select from the following.", "+ "),
    OptionsFormat("Pick your answer from:", "({}) ", LETTERS),
    OptionsFormat("Answer choices:", "{}. ", LETTERS),
    OptionsFormat("Possible answers:", "{}) ", NUMBERS),
)


class _OptionsTable:
    """Several OptionsFormats as tensors, so the format can be picked per example in-graph."""

    def __init__(self, formats: Sequence[OptionsFormat]):
        formats = _as_tuple(formats, OptionsFormat, "OptionsFormat")
        self.size = len(formats)
        width = max(len(f.labels) for f in formats) or 1
        prefixes, suffixes = zip(*(f.bullet.partition(_LABEL_SLOT)[::2] for f in formats))
        self._headers = tf.constant([f.header for f in formats])
        self._prefixes = tf.constant(prefixes)
        self._suffixes = tf.constant(suffixes)
        self._labels = tf.constant(
            [list(f.labels) + [""] * (width - len(f.labels)) for f in formats]
        )
        self._max_options = tf.constant([len(f.labels) or 2**62 for f in formats], tf.int64)
        self._labelled = tf.constant([bool(f.labels) for f in formats])
        unlabelled = [i for i, f in enumerate(formats) if not f.labels]
        self._fallback = tf.constant(unlabelled[0] if unlabelled else 0, tf.int64)

    def usable(self, options, choice) -> tf.Tensor:
        """`choice`, or the first unlabelled format when the options outnumber its labels."""
        fits = tf.size(options, tf.int64) <= tf.gather(self._max_options, choice)
        return tf.where(fits, tf.cast(choice, tf.int64), self._fallback)

    def render(self, options, choice) -> tf.Tensor:
        choice = self.usable(options, choice)
        count = tf.size(options)
        tf.debugging.assert_less_equal(
            tf.cast(count, tf.int64),
            tf.gather(self._max_options, choice),
            message="An example has more answer options than its OptionsFormat has labels; "
            "add labels or use an unlabelled format.",
        )
        labels = tf.gather(self._labels, choice)[: tf.minimum(count, tf.shape(self._labels)[1])]
        labels = tf.pad(labels, [[0, count - tf.size(labels)]])
        lines = tf.strings.join(
            [tf.gather(self._prefixes, choice), labels, tf.gather(self._suffixes, choice), options]
        )
        return tf.strings.join(
            [tf.gather(self._headers, choice), "\n", tf.strings.reduce_join(lines, separator="\n")]
        )

    def relabel(self, options, target, choice) -> tf.Tensor:
        """The target's label when the format is labelled and the target is an option."""
        choice = self.usable(options, choice)
        matches = tf.equal(options, target)
        found = tf.reduce_any(matches) & tf.gather(self._labelled, choice)
        position = tf.argmax(tf.cast(matches, tf.int32))
        # Unlabelled formats have a row of one "", so clamp; their target is kept anyway.
        position = tf.minimum(position, tf.cast(tf.shape(self._labels)[1] - 1, tf.int64))
        label = tf.gather(tf.gather(self._labels, choice), position)
        return tf.where(found, label, target)

    def choose(self, index, seed: int) -> tf.Tensor:
        """A format per example: pseudo-random from (seed, position), so it is reproducible."""
        if self.size == 1:
            return tf.constant(0, tf.int64)
        return tf.random.stateless_uniform(
            [],
            seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)]),
            maxval=self.size,
            dtype=tf.int64,
        )


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

    @property
    def shows_options(self) -> bool:
        """Whether the inputs list the answer options."""
        return (OPTIONS_SLOT, True) in self._inputs_parts

    def without_options(self) -> "Template":
        """The same template with `{options_}` and the blank lines around it removed: the
        no-options variant of a Flan template."""
        if not self.shows_options:
            return self
        before, _, after = self.inputs.partition("{" + OPTIONS_SLOT + "}")
        before, after = before.rstrip(" \n"), after.lstrip(" \n")
        joiner = "\n" if before and after else ""
        return Template(before + joiner + after, self.targets)

    def render(
        self, features: Mapping[str, tf.Tensor], options_format: OptionsFormat = OptionsFormat()
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The (inputs, targets) scalar strings of one example."""
        inputs, targets = _render_all((self,), features, _OptionsTable((options_format,)), [0])
        return inputs[0], targets[0]


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
    options_format: OptionsFormat | Sequence[OptionsFormat] = OptionsFormat(),
    seed: int = 0,
) -> tf.data.Dataset:
    """Sets "inputs", "targets" and "template_index"; example i uses templates[i % len].

    Cycling rather than sampling makes an example's text a function of its position in the
    split, the same on every run and restart. Positions count within the stream this
    preprocessor sees, so a split sharded by example before templating cycles per shard.
    Several option formats: each example gets one drawn from (seed, position). Other
    features pass through.
    """
    templates = _as_tuple(templates, Template, "Template")
    table = _OptionsTable(_formats(options_format))

    def render(index, example):
        choice = index % len(templates)
        format_choice = table.choose(index, seed)
        inputs, targets = _render_all(templates, example, table, [format_choice] * len(templates))
        return {
            **example,
            "inputs": inputs[choice],
            "targets": targets[choice],
            TEMPLATE_INDEX: choice,
        }

    return dataset.enumerate().map(render, num_parallel_calls=tf.data.AUTOTUNE)


def add_exemplars(
    dataset: tf.data.Dataset,
    templates: Sequence[Template],
    k: int,
    options_format: OptionsFormat | Sequence[OptionsFormat] = OptionsFormat(),
    num_candidates: int | None = None,
    shuffle_seed: int = 0,
    exemplar_dataset: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Templates each example as `apply_templates` does, and attaches k exemplars.

    Exemplars are examples of `exemplar_dataset` (default: the same split), rendered with
    the query's template, kept as string vectors under "exemplar_inputs" and
    "exemplar_targets". They come from a shuffled, repeated pass (with a fixed seed, so
    deterministic). Of every `num_candidates` (default 2k) candidates, those whose rendered
    inputs equal the query's are dropped: an example never serves as its own exemplar, nor
    does a duplicate of it. With several option formats, template t uses format t % len, so
    the exemplars and the query list their options alike.
    """
    templates = _as_tuple(templates, Template, "Template")
    if k < 1:
        raise ValueError(f"few-shot needs k >= 1 exemplars; got k={k}.")
    num_candidates = num_candidates or 2 * k
    if num_candidates < k:
        raise ValueError(
            f"num_candidates={num_candidates} is below k={k}; pass at least k (default 2k)."
        )
    table = _OptionsTable(_formats(options_format))
    format_choices = [t % table.size for t in range(len(templates))]

    def render_all(example):
        return _render_all(templates, example, table, format_choices)

    candidates = (
        (dataset if exemplar_dataset is None else exemplar_dataset)
        .map(render_all, num_parallel_calls=tf.data.AUTOTUNE)
        .shuffle(_EXEMPLAR_SHUFFLE_BUFFER, seed=shuffle_seed)
        .repeat()
        .batch(num_candidates)
    )

    def attach(indexed, candidate_batch):
        index, example = indexed
        inputs, targets = render_all(example)
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
            TEMPLATE_INDEX: choice,
            EXEMPLAR_INPUTS: exemplar_inputs,
            EXEMPLAR_TARGETS: exemplar_targets,
        }

    return tf.data.Dataset.zip(dataset.enumerate(), candidates).map(
        attach, num_parallel_calls=tf.data.AUTOTUNE
    )


def join_exemplars(
    dataset: tf.data.Dataset,
    fewshot_format: FewShotFormat | Sequence[FewShotFormat] = FewShotFormat(),
    max_input_tokens: int | None = None,
    vocabulary=None,
) -> tf.data.Dataset:
    """Writes the exemplars and the query into one few-shot "inputs" string.

    Several formats: template t's examples use format t % len (per-template delimiters).
    With `max_input_tokens` (and the `vocabulary` that counts them), trailing exemplars are
    dropped until the prompt fits; a query too long on its own keeps no exemplars.
    """
    formats = _as_tuple(
        (fewshot_format,) if isinstance(fewshot_format, FewShotFormat) else fewshot_format,
        FewShotFormat,
        "FewShotFormat",
    )
    if max_input_tokens is not None and vocabulary is None:
        raise ValueError(
            f"max_input_tokens={max_input_tokens} needs the vocabulary that counts the tokens."
        )
    table = {
        field: tf.constant([getattr(f, field) for f in formats])
        for field in ("input_prefix", "target_prefix", "example_separator")
    }
    query_suffixes = tf.constant([f.target_prefix.rstrip(" ") for f in formats])

    def join(example):
        which = tf.cast(example[TEMPLATE_INDEX], tf.int64) % len(formats)
        input_prefix = tf.gather(table["input_prefix"], which)
        shots = tf.strings.join(
            [
                input_prefix,
                example[EXEMPLAR_INPUTS],
                tf.gather(table["target_prefix"], which),
                example[EXEMPLAR_TARGETS],
                tf.gather(table["example_separator"], which),
            ]
        )
        query = tf.strings.join([input_prefix, example["inputs"], tf.gather(query_suffixes, which)])
        k = shots.shape[0]
        prompts = tf.stack(
            [tf.strings.join([tf.strings.reduce_join(shots[:j]), query]) for j in range(k + 1)]
        )
        if max_input_tokens is None:
            inputs = prompts[-1]
        else:
            lengths = vocabulary.encode_tf(prompts).row_lengths()
            fits = lengths <= max_input_tokens
            inputs = prompts[tf.reduce_max(tf.where(fits, tf.range(k + 1, dtype=tf.int64), 0))]
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
    fewshot_format: FewShotFormat | Sequence[FewShotFormat] = FewShotFormat(),
    options_format: OptionsFormat | Sequence[OptionsFormat] = OptionsFormat(),
    num_candidates: int | None = None,
    shuffle_seed: int = 0,
    max_input_tokens: int | None = None,
    vocabulary=None,
    exemplar_dataset: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """k-shot prompts: `add_exemplars`, then `join_exemplars`."""
    dataset = add_exemplars(
        dataset, templates, k, options_format, num_candidates, shuffle_seed, exemplar_dataset
    )
    return join_exemplars(dataset, fewshot_format, max_input_tokens, vocabulary)


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


def _render_parts(parts, features, options_table: _OptionsTable, choice) -> tf.Tensor:
    pieces = [""]
    for text, is_field in parts:
        if not is_field:
            pieces.append(text)
        elif text == OPTIONS_SLOT:
            pieces.append(options_table.render(_options(features), choice))
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


def _render_all(templates, example, options_table, format_choices):
    """(inputs, targets): string vectors with one rendering per template, template t with
    options format `format_choices[t]`."""
    inputs, targets = [], []
    for template, choice in zip(templates, format_choices):
        missing = template.fields - set(example)
        if missing:
            raise KeyError(
                f"Template {template.inputs!r} -> {template.targets!r} needs features "
                f"{sorted(missing)}, but the example has only {sorted(example)}; add them in "
                "the data source or in a preprocessor that runs before templating."
            )
        inputs.append(_render_parts(template._inputs_parts, example, options_table, choice))
        target = _render_parts(template._targets_parts, example, options_table, choice)
        if template.shows_options:
            target = options_table.relabel(_options(example), target, choice)
        targets.append(target)
    return tf.stack(inputs), tf.stack(targets)


def _formats(options_format) -> tuple[OptionsFormat, ...]:
    return (options_format,) if isinstance(options_format, OptionsFormat) else options_format


def _as_tuple(items, kind, name: str) -> tuple:
    if isinstance(items, kind):
        raise TypeError(f"Expected a sequence of {name}, got one: {items!r}; wrap it in a list.")
    items = tuple(items)
    if not items or not all(isinstance(item, kind) for item in items):
        raise ValueError(f"Expected a non-empty sequence of {name}; got {items!r}.")
    return items
