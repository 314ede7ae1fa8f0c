"""Answer options as Flan lists them: a header, a bullet before each option, an end string.

`OptionsFormat` is one fixed format (FLAN's few-shot prompts use `OPTIONS:\n- a\n- b`);
`RandomOptions` draws header, bullet and end string per example (FLAN's zero-shot prompts
with options). A labelled bullet ("(A) ", "ii. ") makes the answer its marker, "(B)".
`OptionsTable` holds either as tensors, so the choice is made in-graph.
"""

import dataclasses

import tensorflow as tf

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
LOWER_LETTERS = tuple(letter.lower() for letter in LETTERS)
NUMBERS = tuple(str(n) for n in range(1, len(LETTERS) + 1))


def _roman(n: int) -> str:
    values = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
    out = ""
    for value, numeral in values:
        while n >= value:
            out, n = out + numeral, n - value
    return out


ROMAN = tuple(_roman(n) for n in range(1, len(LETTERS) + 1))
LOWER_ROMAN = tuple(numeral.lower() for numeral in ROMAN)
_LABEL_SLOT = "{}"


@dataclasses.dataclass(frozen=True)
class Bullet:
    """What goes before each option: `before` (a newline, or a space for an inline list),
    then `mark`; with `labels`, the mark holds a `{}` that takes each option's label, like
    `"({}) "`, and an answer among the options is written as its marker ("(B)")."""

    mark: str = "- "
    labels: tuple[str, ...] = ()
    before: str = "\n"

    def __post_init__(self):
        if bool(self.labels) != (_LABEL_SLOT in self.mark):
            raise ValueError(
                f"Option bullet {self.mark!r} with labels {self.labels!r}: a labelled "
                "format needs '{}' in its bullet (e.g. '({}) '), an unlabelled one must not "
                "have it."
            )


@dataclasses.dataclass(frozen=True)
class OptionsFormat:
    """How `{options_}` lists answer options: a header, then each option after its bullet
    (see `Bullet`) and followed by `end`. The default is FLAN's `OPTIONS:\\n- a\\n- b`."""

    header: str = "OPTIONS:"
    bullet: str = "- "
    labels: tuple[str, ...] = ()
    end: str = ""
    before: str = "\n"

    def __post_init__(self):
        Bullet(self.bullet, self.labels, self.before)  # checks the label slot

    def as_style(self) -> "RandomOptions":
        return RandomOptions(
            (self.header,), (Bullet(self.bullet, self.labels, self.before),), (self.end,)
        )


PLAIN_OPTIONS = OptionsFormat()


@dataclasses.dataclass(frozen=True)
class RandomOptions:
    """Option lists drawn per example: a header, a bullet and an end string, each drawn on
    its own from (seed, position). A `plain_share` of examples takes the first of each
    instead, which by convention is FLAN's deterministic `OPTIONS:` / `- ` / "" form."""

    headers: tuple[str, ...]
    bullets: tuple[Bullet, ...]
    ends: tuple[str, ...] = ("",)
    plain_share: float = 0.0

    def __post_init__(self):
        if not (self.headers and self.bullets and self.ends):
            raise ValueError("RandomOptions needs at least one header, bullet and end string.")
        if not 0.0 <= self.plain_share <= 1.0:
            raise ValueError(f"plain_share={self.plain_share} is not a share in [0, 1].")


def _bullets() -> tuple[Bullet, ...]:
    """FLAN's range of option markers: plain bullets and labelled ones (letters, numbers,
    roman numerals in several brackets), one option a line or inline."""
    plain = tuple(
        Bullet(mark + space, (), before)
        for before in ("\n", "\n ", " ")
        for mark in ("-", "--", "+", "*", "[-]", "[+]")
        for space in (" ", "")
    )
    labelled = tuple(
        Bullet(wrapper, labels, before)
        for before in ("\n", "\n ", " ")
        for labels in (LETTERS, LOWER_LETTERS, NUMBERS, ROMAN, LOWER_ROMAN)
        for wrapper in ("{}. ", "({}) ", "({}). ", "[{}] ", "[{}]. ", "{}). ")
    )
    return plain + labelled  # plain[0] is FLAN's deterministic "\n- "


# Zero-shot prompts with options (FLAN's rule): half in the plain OPTIONS: form, half with a
# header, bullet and end string drawn from these.
RANDOM_OPTIONS_FORMATS = RandomOptions(
    headers=(
        "OPTIONS:",
        "",
        "Options:",
        "Choices:",
        "Possible answers:",
        "Answer choices:",
        "Pick one:",
        "Choose one:",
        "Choose from:",
        "Choose your answer from:",
        "Select one:",
        "Select from the following.",
        "Available answers:",
        "Candidate answers:",
        "Your options are:",
        "pick from these:",
    ),
    bullets=_bullets(),
    ends=("", ";", "."),
    plain_share=0.5,
)


class OptionsTable:
    """An options style as tensors, so header, bullet and end can be picked per example
    in-graph; a choice is a vector (header, bullet, end) of indices."""

    def __init__(self, style: OptionsFormat | RandomOptions):
        if isinstance(style, OptionsFormat):
            style = style.as_style()
        if not isinstance(style, RandomOptions):
            raise TypeError(f"Expected an OptionsFormat or RandomOptions, got {style!r}.")
        bullets = style.bullets
        width = max(len(b.labels) for b in bullets) or 1
        marks, answers = [], []
        for b in bullets:
            texts = [b.mark.replace(_LABEL_SLOT, label) for label in b.labels] or [b.mark]
            texts += [texts[-1] if not b.labels else ""] * (width - len(texts))
            marks.append([b.before + text for text in texts])
            answers.append([text.strip() for text in texts])
        self.sizes = (len(style.headers), len(bullets), len(style.ends))
        self._plain_share = style.plain_share
        self._headers = tf.constant(style.headers)
        self._ends = tf.constant(style.ends)
        self._marks = tf.constant(marks)
        self._answers = tf.constant(answers)
        self._width = width
        self._max_options = tf.constant([len(b.labels) or 2**62 for b in bullets], tf.int64)
        self._labelled = tf.constant([bool(b.labels) for b in bullets])
        unlabelled = [i for i, b in enumerate(bullets) if not b.labels]
        self._fallback = tf.constant(unlabelled[0] if unlabelled else 0, tf.int64)

    def plain(self) -> tf.Tensor:
        return tf.zeros([3], tf.int64)

    def _bullet(self, options, choice) -> tf.Tensor:
        """The chosen bullet, or the first unlabelled one when the options outnumber its
        labels."""
        bullet = choice[1]
        fits = tf.size(options, tf.int64) <= tf.gather(self._max_options, bullet)
        return tf.where(fits, bullet, self._fallback)

    def render(self, options, choice) -> tf.Tensor:
        bullet = self._bullet(options, choice)
        count = tf.size(options)
        tf.debugging.assert_less_equal(
            tf.cast(count, tf.int64),
            tf.gather(self._max_options, bullet),
            message="An example has more answer options than its OptionsFormat has labels; "
            "add labels or use an unlabelled format.",
        )
        # Unlabelled rows repeat their mark, so any number of options reads the last one.
        marks = tf.gather(
            tf.gather(self._marks, bullet), tf.minimum(tf.range(count), self._width - 1)
        )
        lines = tf.strings.join([marks, options, tf.gather(self._ends, choice[2])])
        return tf.strings.join([tf.gather(self._headers, choice[0]), tf.strings.reduce_join(lines)])

    def relabel(self, options, target, choice) -> tf.Tensor:
        """The target's marker ("(B)") when the bullet is labelled and the target is an
        option."""
        bullet = self._bullet(options, choice)
        matches = tf.equal(options, target)
        found = tf.reduce_any(matches) & tf.gather(self._labelled, bullet)
        # A trailing 0 keeps argmax defined for an example without options.
        position = tf.argmax(tf.concat([tf.cast(matches, tf.int32), [0]], axis=0))
        position = tf.minimum(position, self._width - 1)
        return tf.where(found, tf.gather(tf.gather(self._answers, bullet), position), target)

    def choose(self, index, seed: int) -> tf.Tensor:
        """A (header, bullet, end) per example: pseudo-random from (seed, position), so it
        is reproducible."""
        if self.sizes == (1, 1, 1):
            return self.plain()
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
        draws = tf.random.stateless_uniform([3], seed=key, maxval=2**31 - 1, dtype=tf.int64)
        choice = draws % tf.constant(self.sizes, tf.int64)
        plain = tf.random.stateless_uniform([], seed=key + 1) < self._plain_share
        return tf.where(plain, self.plain(), choice)
