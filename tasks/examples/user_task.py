"""Adding your own task to the Flan mixture: a complete example.

1. Register a seqio task: your data source, your templates (rendered by `tasks.templates`
   as the Flan tasks are), the Flan output features.
2. `mixtures.add_user_task(name, share)`: every Flan mixture built afterwards by
   `flan_mixture()` or `released_mixture()` gives the task `share` of all examples; the
   Flan families keep their relative shares in the rest.
3. Select it from gin by importing the module before the mixture is built:

       # my_run.gin
       include 'runs/flan_t5/base.gin'
       import tasks.examples.user_task

   `python -m flan_jax.train --gin_file=my_run.gin ...` then trains on
   `flan2022_released_b_with_user_country_capitals0.05`, and
   `python -m flan_jax.inspect_mixture --gin_file=my_run.gin` shows its rate.

Copy this file into your own package (anything importable works) and change the data.
"""

import functools

import seqio
import tensorflow as tf

from tasks import templates
from tasks.flan import mixtures, registry
from tasks.templates import Template

TASK_NAME = "user_country_capitals"
SHARE = 0.05

# Your data: any tf.data pipeline works (files, TFDS, generated); here a few rows in code.
_CAPITALS = {
    "train": [
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Kenya", "Nairobi"),
        ("Peru", "Lima"),
        ("Norway", "Oslo"),
        ("Egypt", "Cairo"),
        ("Canada", "Ottawa"),
        ("India", "New Delhi"),
    ],
    "validation": [("Chile", "Santiago"), ("Spain", "Madrid")],
}

TEMPLATES = (
    Template("What is the capital of {country}?\n{options_}", "{capital}"),
    Template("Name the capital city of {country}.\n\n{options_}", "{capital}"),
)


def _dataset(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    rows = _CAPITALS[split]
    cities = sorted({city for _, city in rows})
    return tf.data.Dataset.from_tensor_slices(
        {
            "country": [country for country, _ in rows],
            "capital": [city for _, city in rows],
            # Two options per example: the answer and another city of the split.
            "options": [[city, cities[(cities.index(city) + 1) % len(cities)]] for _, city in rows],
        }
    )


seqio.TaskRegistry.remove(TASK_NAME)
seqio.TaskRegistry.add(
    TASK_NAME,
    source=seqio.FunctionDataSource(
        _dataset,
        splits=tuple(_CAPITALS),
        num_input_examples={split: len(rows) for split, rows in _CAPITALS.items()},
    ),
    preprocessors=[
        functools.partial(
            templates.apply_templates,
            templates=TEMPLATES,
            options_format=templates.RANDOM_OPTIONS_FORMATS,
        ),
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=registry.output_features(),
)
mixtures.add_user_task(TASK_NAME, share=SHARE)
