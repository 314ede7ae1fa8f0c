"""Shared by the tests of tasks.flan: fixture data in the real formats, and the Flan tasks
registered against it with a local vocabulary (no network, no TFDS downloads)."""

import os

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "flan")
COT_DIR = os.path.join(FIXTURES, "cot_data")
NIV2_DIR = os.path.join(FIXTURES, "natural-instructions")
LENGTHS = {"inputs": 512, "targets": 128}


@pytest.fixture(scope="module")
def flan_env():
    """Registers the Flan tasks over the fixtures, with the demo vocabulary as $FLAN_JAX_VOCAB."""
    from tasks import vocab

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(vocab.FLAN_VOCAB_ENV, vocab.demo_vocabulary().sentencepiece_model_file)
        patch.setenv("FLAN_JAX_COT_DIR", COT_DIR)
        patch.setenv("FLAN_JAX_NIV2_DIR", NIV2_DIR)
        import tasks.flan
        from tasks.flan import cot

        cot.use_directory(None)
        tasks.flan.register_all()
        yield tasks.flan


def texts(dataset, limit=None):
    """(inputs, targets) strings of a seqio dataset's pretokenized features."""
    if limit is not None:
        dataset = dataset.take(limit)
    return [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in dataset.as_numpy_iterator()
    ]
