"""Instruction templates as seqio preprocessors.

Flan turns every dataset example into instruction text by filling a template: zero-shot or
few-shot, with or without chain of thought, answer options listed as `OPTIONS:\\n- a\\n- b`.
Everything here renders with TF string ops inside tf.data (no tf.py_function), so templating
runs in the same parallel pipeline as tokenization and seqio can cache its output like any
other preprocessor's.

Patterns use `{field}` slots (`{{` and `}}` for literal braces). A pattern is parsed once, in
Python, into literal parts and field names; rendering joins the parts with `tf.strings.join`,
so a field's value is never read as a pattern or a regex.

Answer options render in one `OptionsFormat`, or in a `RandomOptions` style drawn per example
(header, bullet and end string independently, as FLAN's zero-shot prompts do); a labelled list
rewrites the target to the answer's marker, like "(B)". Few-shot prompts follow
`FewShotVariant`s: how many exemplars (a fixed number, or FLAN's random count), and in which
templates (the query's or each exemplar's own). Exemplars stay string vectors until
`join_exemplars`, which writes them with the delimiters, drops the last ones until the prompt
fits a token budget, and drops a query that keeps none. Every preprocessor passes the
example's other features through and adds `template_index`, so per-example metadata rides
along.
"""

import dataclasses
import string
from collections.abc import Mapping, Sequence

import tensorflow as tf

# LETTERS, NUMBERS and RANDOM_OPTIONS_FORMATS are re-exported: task modules find them here.
from tasks.options import (  # noqa: F401
    LETTERS,
    NUMBERS,
    PLAIN_OPTIONS,
    RANDOM_OPTIONS_FORMATS,
    OptionsFormat,
    OptionsTable,
    RandomOptions,
)

# `{options_}` renders the string-list feature `options`.
OPTIONS_SLOT = "options_"
OPTIONS_FIELD = "options"

COT_TRIGGER = "Let's think step by step."
COT_ANSWER_PREFIX = "So the answer is"

EXEMPLAR_INPUTS = "exemplar_inputs"
EXEMPLAR_TARGETS = "exemplar_targets"
# Which template of its variant rendered each exemplar, and which variant the query follows.
EXEMPLAR_TEMPLATES = "exemplar_templates"
FEW_SHOT_VARIANT = "few_shot_variant"
# Per-example metadata: which template of the cycle rendered the example.
TEMPLATE_INDEX = "template_index"
# Per-example metadata of a few-shot prompt: how many exemplars it holds.
NUM_EXEMPLARS = "num_exemplars"

# Exemplar candidates are shuffled through a buffer of this many examples.
_EXEMPLAR_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True)
class FewShotFormat:
    """Delimiters of a few-shot prompt.

    The prompt is `header` (a pattern, rendered from the query's features: e.g. a task
    definition given once), then each exemplar as `input_prefix + inputs + target_prefix +
    targets + example_separator`, then the query as `input_prefix + inputs + target_prefix`
    less its trailing spaces, so that the model's output is the answer.
    """

    input_prefix: str = "Q: "
    target_prefix: str = "\nA: "
    example_separator: str = "\n\n"
    header: str = ""

    def __post_init__(self):
        if "{" + OPTIONS_SLOT + "}" in self.header:
            raise ValueError(
                f"FewShotFormat header {self.header!r} lists options; put '{{{OPTIONS_SLOT}}}' "
                "in the templates."
            )


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
        self, features: Mapping[str, tf.Tensor], options_format: OptionsFormat = PLAIN_OPTIONS
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The (inputs, targets) scalar strings of one example."""
        table = OptionsTable(options_format)
        inputs, targets = _render_all((self,), features, table, table.plain())
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
    options_format: OptionsFormat | RandomOptions = PLAIN_OPTIONS,
    seed: int = 0,
) -> tf.data.Dataset:
    """Sets "inputs", "targets" and "template_index"; example i uses templates[i % len].

    Cycling rather than sampling makes an example's text a function of its position in the
    split, the same on every run and restart. Positions count within the stream this
    preprocessor sees, so a split sharded by example before templating cycles per shard.
    A `RandomOptions` style draws each example's option list from (seed, position). Other
    features pass through.
    """
    templates = _as_tuple(templates, Template, "Template")
    table = OptionsTable(options_format)

    def render(index, example):
        choice = index % len(templates)
        inputs, targets = _render_all(templates, example, table, table.choose(index, seed))
        return {
            **example,
            "inputs": inputs[choice],
            "targets": targets[choice],
            TEMPLATE_INDEX: choice,
        }

    return dataset.enumerate().map(render, num_parallel_calls=tf.data.AUTOTUNE)


# Which templates a few-shot prompt's exemplars are rendered with.
QUERY_TEMPLATE = "query"  # the query's
OWN_TEMPLATE = "own"  # each exemplar its own: FLAN's mixed-template prompts
_EXEMPLAR_TEMPLATES = (QUERY_TEMPLATE, OWN_TEMPLATE)


@dataclasses.dataclass(frozen=True)
class FewShotVariant:
    """One way to build a few-shot prompt.

    templates: render the query (cycled, as `apply_templates` does) and the exemplars.
    formats: delimiters; an exemplar or query of template t uses formats[t % len].
    shots: exemplars per prompt (with `keep_rate`: at most). 0: the query's template is the
        whole prompt (an inline pattern, like NIV2's positive example).
    exemplar_templates: QUERY_TEMPLATE, every exemplar in the query's template;
        OWN_TEMPLATE, each in the template its position in the exemplar stream gives (FLAN's
        five-shot mixed-template prompts).
    candidates: exemplars drawn per query (default 2 * shots); those equal to the query are
        skipped, so an example never serves as its own exemplar.
    keep_rate: each candidate is kept with this probability, drawn per query from (seed,
        position), so the count is Binomial(candidates, keep_rate) whatever the number of
        templates. FLAN's 0-to-10-shot prompts: 25 candidates, each with a random one of the
        task's ten templates, those matching the query's kept (1 in 10, 2.5 on average).
    separator: between exemplars, whatever the template (None: each format's own).
    """

    templates: tuple[Template, ...]
    formats: tuple[FewShotFormat, ...] = (FewShotFormat(),)
    shots: int = 3
    exemplar_templates: str = QUERY_TEMPLATE
    candidates: int | None = None
    separator: str | None = None
    keep_rate: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "templates", _as_tuple(self.templates, Template, "Template"))
        formats = (self.formats,) if isinstance(self.formats, FewShotFormat) else self.formats
        object.__setattr__(self, "formats", _as_tuple(formats, FewShotFormat, "FewShotFormat"))
        if self.exemplar_templates not in _EXEMPLAR_TEMPLATES:
            raise ValueError(
                f"exemplar_templates={self.exemplar_templates!r} is not one of "
                f"{_EXEMPLAR_TEMPLATES}."
            )
        if self.shots < 0:
            raise ValueError(f"shots={self.shots} is negative; 0 means an inline pattern.")
        if self.shots and self.num_candidates < self.shots:
            raise ValueError(
                f"candidates={self.candidates} is below shots={self.shots}; draw at least "
                "as many candidates (default 2 * shots)."
            )
        if self.keep_rate is not None and not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(
                f"keep_rate={self.keep_rate} must be in (0, 1]; FLAN keeps 1 candidate in 10 (0.1)."
            )

    @property
    def num_candidates(self) -> int:
        return (self.candidates or 2 * self.shots) if self.shots else 0


def add_exemplars(
    dataset: tf.data.Dataset,
    variants: Sequence[FewShotVariant],
    options_format: OptionsFormat = PLAIN_OPTIONS,
    shuffle_seed: int = 0,
    exemplar_dataset: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Templates each example and attaches its exemplars, as string vectors under
    "exemplar_inputs" and "exemplar_targets" (their templates under "exemplar_templates").

    Example i takes template i % len(templates) of its variant, as `apply_templates` cycles
    them, and the variants take turns in blocks of the first variant's template count:
    variant (i // len(variants[0].templates)) % len(variants) (under "few_shot_variant").
    Exemplars are examples of `exemplar_dataset` (default: the same split) from a shuffled,
    repeated pass (with a fixed seed, so deterministic). Options render in one fixed
    format: the exemplars and the query list them alike (FLAN's few-shot rule).
    """
    variants = _as_tuple(variants, FewShotVariant, "FewShotVariant")
    if not isinstance(options_format, OptionsFormat):
        raise TypeError(
            f"Few-shot prompts list options in one OptionsFormat, got {options_format!r}; "
            "random option styles are for zero-shot prompts."
        )
    table = OptionsTable(options_format)
    plain = table.plain()
    # The templates that render candidates: those of the variants that draw exemplars, once
    # for variants that share them.
    columns, drawn = {}, []
    for variant in variants:
        if variant.shots and variant.templates not in columns:
            columns[variant.templates] = len(drawn)
            drawn.extend(variant.templates)
    offsets = [columns.get(variant.templates, 0) for variant in variants]
    num_candidates = max(variant.num_candidates for variant in variants)

    def render_candidate(position, example):
        return (position, *_render_all(drawn, example, table, plain))

    def attach(indexed, candidates):
        index, example = indexed
        which = (index // len(variants[0].templates)) % len(variants)

        def branch(variant, offset):
            def build():
                count = len(variant.templates)
                choice = index % count
                inputs, targets = _render_all(variant.templates, example, table, plain)
                query = inputs[choice]
                if not variant.shots:
                    none = tf.zeros([0], tf.string)
                    return query, targets[choice], choice, none, none, tf.zeros([0], tf.int64)
                positions, candidate_inputs, candidate_targets = (
                    part[: variant.num_candidates] for part in candidates
                )
                own = positions % count
                keep = tf.not_equal(candidate_inputs[:, offset + choice], query)
                if variant.exemplar_templates == OWN_TEMPLATE:
                    chosen = own
                else:
                    chosen = tf.fill(tf.shape(own), choice)
                shots = variant.shots
                if variant.keep_rate is not None:
                    shots = tf.minimum(kept_count(variant, index, shuffle_seed), shots)
                picked = tf.where(keep)[:shots, 0]
                chosen = tf.gather(chosen, picked)
                cells = tf.stack([picked, offset + chosen], axis=1)
                # A split with fewer distinct examples gives fewer exemplars; a query left
                # with none is dropped (join_exemplars), not a zero-shot prompt or an error.
                return (
                    query,
                    targets[choice],
                    choice,
                    tf.gather_nd(candidate_inputs, cells),
                    tf.gather_nd(candidate_targets, cells),
                    tf.identity(chosen),
                )

            return build

        branches = [branch(v, offset) for v, offset in zip(variants, offsets)]
        outputs = tf.switch_case(tf.cast(which, tf.int32), branches)
        keys = ("inputs", "targets", TEMPLATE_INDEX)
        keys += (EXEMPLAR_INPUTS, EXEMPLAR_TARGETS, EXEMPLAR_TEMPLATES)
        return {**example, **dict(zip(keys, outputs)), FEW_SHOT_VARIANT: which}

    indexed = dataset.enumerate()
    if not num_candidates:  # Only inline patterns: no exemplar stream to read.
        return indexed.map(lambda i, ex: attach((i, ex), None))
    candidates = (
        (dataset if exemplar_dataset is None else exemplar_dataset)
        .enumerate()
        .map(render_candidate, num_parallel_calls=tf.data.AUTOTUNE)
        .shuffle(_EXEMPLAR_SHUFFLE_BUFFER, seed=shuffle_seed)
        .repeat()
        .batch(num_candidates)
    )
    return tf.data.Dataset.zip(indexed, candidates).map(attach, num_parallel_calls=tf.data.AUTOTUNE)


def kept_count(variant: FewShotVariant, index, seed: int) -> tf.Tensor:
    """How many of its candidates query `index` keeps under `variant.keep_rate`: each one
    with that probability, from a draw that depends on (seed, index) alone."""
    draws = tf.random.stateless_uniform(
        [variant.num_candidates], seed=tf.stack([tf.cast(seed, tf.int64), index])
    )
    return tf.reduce_sum(tf.cast(draws < variant.keep_rate, tf.int64))


def join_exemplars(
    dataset: tf.data.Dataset,
    variants: Sequence[FewShotVariant],
    max_input_tokens: int | None = None,
    vocabulary=None,
) -> tf.data.Dataset:
    """Writes the exemplars and the query into one few-shot "inputs" string, with the
    delimiters of the query's variant and each one's template.

    With `max_input_tokens` (and the `vocabulary` that counts them), trailing exemplars are
    dropped until the prompt fits. A query left with no exemplar (none fit, or none drawn)
    is dropped, not kept as a zero-shot prompt; inline patterns (shots=0) are kept as
    rendered. "num_exemplars" says how many exemplars a prompt kept (0 for an inline
    pattern, whose worked example is part of its template).
    """
    variants = _as_tuple(variants, FewShotVariant, "FewShotVariant")
    if max_input_tokens is not None and vocabulary is None:
        raise ValueError(
            f"max_input_tokens={max_input_tokens} needs the vocabulary that counts the tokens."
        )
    plain_table = OptionsTable(PLAIN_OPTIONS)

    def branch(variant, example):
        def build():
            if not variant.shots:
                return example["inputs"], tf.constant(0, tf.int64)
            formats = variant.formats
            column = {
                field: tf.constant([getattr(f, field) for f in formats])
                for field in ("input_prefix", "target_prefix")
            }
            separators = [f.example_separator for f in formats]
            if variant.separator is not None:
                separators = [variant.separator] * len(formats)
            which = tf.cast(example[TEMPLATE_INDEX], tf.int64) % len(formats)
            each = tf.cast(example[EXEMPLAR_TEMPLATES], tf.int64) % len(formats)
            shots = tf.strings.join(
                [
                    tf.gather(column["input_prefix"], each),
                    example[EXEMPLAR_INPUTS],
                    tf.gather(column["target_prefix"], each),
                    example[EXEMPLAR_TARGETS],
                    tf.gather(tf.constant(separators), each),
                ]
            )
            headers = [
                _render_parts(_parse(f.header), example, plain_table, plain_table.plain())
                for f in formats
            ]
            header = tf.gather(tf.stack(headers), which)
            query_suffixes = tf.constant([f.target_prefix.rstrip(" ") for f in formats])
            query = tf.strings.join(
                [
                    tf.gather(column["input_prefix"], which),
                    example["inputs"],
                    tf.gather(query_suffixes, which),
                ]
            )

            def prompt(j):
                return tf.strings.join([header, tf.strings.reduce_join(shots[:j]), query])

            count = tf.size(shots, tf.int64)
            if max_input_tokens is None:
                kept = count
            else:
                kept = _fitting_shots(
                    shots, tf.strings.join([header, query]), prompt, max_input_tokens, vocabulary
                )
            return prompt(kept), kept

        return build

    def join(example):
        which = tf.cast(example[FEW_SHOT_VARIANT], tf.int32)
        inputs, kept = tf.switch_case(which, [branch(v, example) for v in variants])
        inline = tf.gather(tf.constant([not v.shots for v in variants]), which)
        rest = {
            key: value
            for key, value in example.items()
            if key not in (EXEMPLAR_INPUTS, EXEMPLAR_TARGETS, EXEMPLAR_TEMPLATES, FEW_SHOT_VARIANT)
        }
        return {**rest, "inputs": inputs, NUM_EXEMPLARS: kept}, inline | (kept > 0)

    return (
        dataset.map(join, num_parallel_calls=tf.data.AUTOTUNE)
        .filter(lambda example, keep: keep)
        .map(lambda example, keep: example)
    )


def _fitting_shots(shots, fixed, prompt, max_input_tokens: int, vocabulary) -> tf.Tensor:
    """How many leading exemplars fit the budget. Usually all do: one encoding of the whole
    prompt tells. Otherwise the count is estimated from each piece's tokens (FLAN counts
    them so), then checked on the whole prompt, one exemplar at a time."""
    count = tf.size(shots, tf.int64)

    def fits(j):
        return tf.size(vocabulary.encode_tf(prompt(j)), tf.int64) <= max_input_tokens

    def search():
        lengths = vocabulary.encode_tf(tf.concat([[fixed], shots], axis=0)).row_lengths()
        room = max_input_tokens - lengths[0]
        estimate = tf.reduce_sum(tf.cast(tf.cumsum(lengths[1:]) <= room, tf.int64))
        (kept,) = tf.while_loop(
            lambda j: tf.cond(j > 0, lambda: ~fits(j), lambda: False),
            lambda j: (j - 1,),
            (estimate,),
        )
        (kept,) = tf.while_loop(
            lambda j: tf.cond(j < count - 1, lambda: fits(j + 1), lambda: False),
            lambda j: (j + 1,),
            (kept,),
        )
        return kept

    return tf.cond(fits(count), lambda: count, search)


def few_shot_variants(
    dataset: tf.data.Dataset,
    variants: Sequence[FewShotVariant],
    options_format: OptionsFormat = PLAIN_OPTIONS,
    shuffle_seed: int = 0,
    max_input_tokens: int | None = None,
    vocabulary=None,
    exemplar_dataset: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Few-shot prompts, each example following one variant in turn: `add_exemplars`,
    then `join_exemplars`."""
    dataset = add_exemplars(dataset, variants, options_format, shuffle_seed, exemplar_dataset)
    return join_exemplars(dataset, variants, max_input_tokens, vocabulary)


def few_shot(
    dataset: tf.data.Dataset,
    templates: Sequence[Template],
    k: int,
    fewshot_format: FewShotFormat | Sequence[FewShotFormat] = FewShotFormat(),
    options_format: OptionsFormat = PLAIN_OPTIONS,
    num_candidates: int | None = None,
    shuffle_seed: int = 0,
    max_input_tokens: int | None = None,
    vocabulary=None,
    exemplar_dataset: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """k-shot prompts, the exemplars in the query's template."""
    if k < 1:
        raise ValueError(f"few-shot needs k >= 1 exemplars; got k={k}.")
    variant = FewShotVariant(templates, fewshot_format, k, candidates=num_candidates)
    return few_shot_variants(
        dataset,
        [variant],
        options_format,
        shuffle_seed,
        max_input_tokens,
        vocabulary,
        exemplar_dataset,
    )


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


def _render_parts(parts, features, options_table: OptionsTable, choice) -> tf.Tensor:
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


def _render_all(templates, example, options_table, choice):
    """(inputs, targets): string vectors with one rendering per template, options in the
    table's `choice`."""
    inputs, targets = [], []
    for template in templates:
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


def _as_tuple(items, kind, name: str) -> tuple:
    if isinstance(items, kind):
        raise TypeError(f"Expected a sequence of {name}, got one: {items!r}; wrap it in a list.")
    items = tuple(items)
    if not items or not all(isinstance(item, kind) for item in items):
        raise ValueError(f"Expected a non-empty sequence of {name}; got {items!r}.")
    return items
