"""Shared by the tests of tasks.flan: where the fixture data in the real formats lives (the
`flan_env` fixture in conftest.py registers the Flan tasks over it), and reading texts back."""

import os

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "flan")
COT_DIR = os.path.join(FIXTURES, "cot_data")
NIV2_DIR = os.path.join(FIXTURES, "natural-instructions")
LENGTHS = {"inputs": 512, "targets": 128}


def texts(dataset, limit=None):
    """(inputs, targets) strings of a seqio dataset's pretokenized features."""
    if limit is not None:
        dataset = dataset.take(limit)
    return [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in dataset.as_numpy_iterator()
    ]
