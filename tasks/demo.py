"""Offline demo tasks in the Flan formats, and the `flan_demo` mixture over them.

`make demo` finetunes a tiny T5 on these in a few CPU minutes, on the same path
the Flan collection takes: seqio Tasks whose preprocessors are the templates
of `tasks.templates` (cycling zero-shot templates, answer options, chain of
thought, few-shot), a real SentencePiece vocabulary, packing. The tasks are
small enough for a ~1M-parameter model to learn visibly.

Data comes from code with fixed seeds, so every run sees the same examples.
Where examples can be told apart, each split gets distinct ones, so no
validation example appears in train; the antonym task is the exception, as its
point is recalling a fixed word list (its validation prompts differ in their
exemplars).

Importing this module registers the tasks and the mixture.
"""

import dataclasses
import functools
import random
from collections.abc import Callable

import seqio
import tensorflow as tf

from tasks import metrics, templates, vocab
from tasks.templates import Template

MIXTURE_NAME = "flan_demo"
SPLIT_SIZES = {"train": 3000, "validation": 100}
VOCAB_SIZE = 512

Example = dict[str, str | list[str]]
Splits = dict[str, list[Example]]

_NAMES = (
    "Ana", "Ben", "Carlos", "Dana", "Eva", "Farid", "Grace", "Hugo",
    "Ines", "Jonas", "Kim", "Lena", "Mia", "Noah", "Omar", "Priya",
    "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Victor", "Wen", "Yusuf",
)  # fmt: skip
_OBJECTS = (
    "apples", "books", "buttons", "cards", "coins", "cookies",
    "marbles", "pencils", "shells", "stamps", "stickers", "tickets",
    "balloons", "crayons", "feathers", "oranges",
)  # fmt: skip

_ANTONYMS = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
    ("happy", "sad"), ("light", "dark"), ("open", "closed"), ("early", "late"),
    ("full", "empty"), ("hard", "soft"), ("high", "low"), ("long", "short"),
    ("new", "old"), ("rich", "poor"), ("strong", "weak"), ("wet", "dry"),
    ("thick", "thin"), ("loud", "quiet"), ("clean", "dirty"), ("first", "last"),
    ("left", "right"), ("push", "pull"), ("buy", "sell"), ("win", "lose"),
    ("true", "false"), ("day", "night"), ("north", "south"), ("east", "west"),
    ("inside", "outside"), ("always", "never"), ("above", "below"), ("before", "after"),
    ("friend", "enemy"), ("love", "hate"), ("sweet", "sour"), ("wide", "narrow"),
    ("cheap", "expensive"), ("near", "far"), ("safe", "dangerous"), ("laugh", "cry"),
    ("arrive", "leave"), ("brave", "afraid"), ("calm", "angry"), ("deep", "shallow"),
    ("forget", "remember"), ("gentle", "rough"), ("heavy", "weightless"), ("import", "export"),
    ("polite", "rude"), ("simple", "complex"), ("accept", "refuse"), ("victory", "defeat"),
    ("increase", "decrease"), ("ancient", "modern"), ("generous", "selfish"), ("visible", "hidden"),
)  # fmt: skip


def _distinct_examples(seed: str, make: Callable[[random.Random], Example], key: str) -> Splits:
    """Draws examples with distinct `key` fields; validation takes the first ones."""
    rng = random.Random(seed)
    examples, seen = [], set()
    while len(examples) < sum(SPLIT_SIZES.values()):
        example = make(rng)
        if example[key] not in seen:
            seen.add(example[key])
            examples.append(example)
    num_validation = SPLIT_SIZES["validation"]
    return {"validation": examples[:num_validation], "train": examples[num_validation:]}


def _arithmetic_example(rng: random.Random) -> Example:
    name, things = rng.choice(_NAMES), rng.choice(_OBJECTS)
    if rng.random() < 0.5:
        a = rng.randint(1, 8)
        b = rng.randint(1, 9 - a)
        return {
            "question": f"{name} has {a} {things} and gets {b} more. "
            f"How many {things} does {name} have now?",
            "rationale": f"{name} starts with {a} and gets {b} more. {a} + {b} = {a + b}.",
            "answer": str(a + b),
        }
    a = rng.randint(1, 9)
    b = rng.randint(1, a)
    return {
        "question": f"{name} has {a} {things} and gives away {b}. "
        f"How many {things} does {name} have left?",
        "rationale": f"{name} starts with {a} and gives away {b}. {a} - {b} = {a - b}.",
        "answer": str(a - b),
    }


def _sort_example(rng: random.Random) -> Example:
    digits = rng.sample(range(10), rng.randint(3, 5))
    return {
        "digits": " ".join(map(str, digits)),
        "sorted": " ".join(map(str, sorted(digits))),
    }


def _compare_example(rng: random.Random) -> Example:
    a, b = rng.sample(range(10, 100), 2)
    relation = rng.choice(("greater", "less"))
    holds = a > b if relation == "greater" else a < b
    return {
        "question": f"Is {a} {relation} than {b}?",
        "options": ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"],
        "answer": "yes" if holds else "no",
    }


@functools.cache
def _arithmetic_examples() -> Splits:
    return _distinct_examples("demo_arithmetic_cot", _arithmetic_example, key="question")


@functools.cache
def _sort_examples() -> Splits:
    return _distinct_examples("demo_sort", _sort_example, key="digits")


@functools.cache
def _compare_examples() -> Splits:
    return _distinct_examples("demo_compare_options", _compare_example, key="question")


@functools.cache
def _antonym_examples() -> Splits:
    """Word/antonym pairs in both directions, drawn with replacement for each split."""
    pairs = [*_ANTONYMS, *((b, a) for a, b in _ANTONYMS)]
    rng = random.Random("demo_antonyms_fewshot")
    return {
        split: [{"word": w, "antonym": a} for w, a in (rng.choice(pairs) for _ in range(size))]
        for split, size in SPLIT_SIZES.items()
    }


@dataclasses.dataclass(frozen=True)
class _DemoTask:
    name: str
    examples: Callable[[], Splits]
    templates: tuple[Template, ...]
    few_shot_k: int = 0
    postprocess_fn: Callable[..., str] | None = None


_TASKS = (
    _DemoTask(
        "demo_arithmetic_cot",
        _arithmetic_examples,
        (
            templates.cot_template("{question}"),
            templates.cot_template("Solve this word problem.\n{question}"),
        ),
        postprocess_fn=metrics.cot_answer,
    ),
    _DemoTask(
        "demo_sort",
        _sort_examples,
        (
            Template("Sort these numbers from smallest to largest: {digits}", "{sorted}"),
            Template("Put {digits} in increasing order.", "{sorted}"),
            Template("{digits}\nWrite the numbers above in ascending order.", "{sorted}"),
        ),
    ),
    _DemoTask(
        "demo_compare_options",
        _compare_examples,
        (
            Template("{question}\n{options_}", "{answer}"),
            Template("Answer with one of the options.\n{question}\n\n{options_}", "{answer}"),
            Template("Question: {question}\n{options_}\nAnswer:", "{answer}"),
        ),
    ),
    _DemoTask(
        "demo_antonyms_fewshot",
        _antonym_examples,
        (
            Template("What is the opposite of {word}?", "{antonym}"),
            Template('Give an antonym of "{word}".', "{antonym}"),
        ),
        few_shot_k=3,
    ),
)
TASK_NAMES = tuple(task.name for task in _TASKS)


def vocabulary_text() -> list[str]:
    """The train text the demo vocabulary learns from, one line per train example.

    A line holds the words of the rendered example, without rendering it (that takes
    TensorFlow and would slow every import): the fixed text of its template, of the option
    list and few-shot delimiters where the task has them, and its feature values. The order
    does not matter, as the vocabulary trainer shuffles the words of each line anyway.
    """
    options = templates.OptionsFormat()
    fewshot = templates.FewShotFormat()
    lines = []
    for task in _TASKS:
        for index, example in enumerate(task.examples()["train"]):
            template = task.templates[index % len(task.templates)]
            words = list(template.literals)
            if templates.OPTIONS_FIELD in template.fields:
                words += [options.header, options.bullet]
            if task.few_shot_k:
                words += [fewshot.input_prefix, fewshot.target_prefix]
            for value in example.values():
                words += value if isinstance(value, list) else [value]
            lines.append(" ".join(words))
    return lines


def vocabulary() -> seqio.SentencePieceVocabulary:
    """The demo tasks' vocabulary: trained on their train text the first time, then read from
    the cache (`tasks.vocab.sentencepiece_vocabulary`)."""
    return vocab.sentencepiece_vocabulary(vocabulary_text(), "demo", VOCAB_SIZE)


def _source(examples: Callable[[], Splits]) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # In-memory data; the Task shuffles after preprocessing.
        rows = examples()[split]
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        return tf.data.Dataset.from_tensor_slices(columns)

    return seqio.FunctionDataSource(
        dataset_fn, splits=tuple(SPLIT_SIZES), num_input_examples=SPLIT_SIZES
    )


def _register() -> None:
    """(Re)registers the tasks and the mixture; replacing makes a module reload safe."""
    features_vocabulary = vocabulary()
    output_features = {
        "inputs": seqio.Feature(features_vocabulary, add_eos=True),
        "targets": seqio.Feature(features_vocabulary, add_eos=True),
    }
    for task in _TASKS:
        if task.few_shot_k:
            render = functools.partial(
                templates.few_shot, templates=task.templates, k=task.few_shot_k
            )
        else:
            render = functools.partial(templates.apply_templates, templates=task.templates)
        seqio.TaskRegistry.remove(task.name)
        seqio.TaskRegistry.add(
            task.name,
            source=_source(task.examples),
            preprocessors=[
                render,
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features,
            postprocess_fn=task.postprocess_fn,
            metric_fns=[metrics.accuracy],
        )
    seqio.MixtureRegistry.remove(MIXTURE_NAME)
    seqio.MixtureRegistry.add(MIXTURE_NAME, TASK_NAMES, default_rate=seqio.mixing_rate_num_examples)


_register()
