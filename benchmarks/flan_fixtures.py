"""Registers `flan_fixtures`: the Flan 2022 tasks whose sources the repo ships in their real
formats (NIV2 task JSON and CoT TSV, `tests/fixtures/flan`), mixed as the paper's proportions
B mix those two families, for the data benchmark (`make bench`).

Muffin and T0-SF read TFDS datasets and T5's vocabulary lives on gs://; neither can be
fetched here, so the tasks tokenize with the demo vocabulary and the mixture lacks those two
families. The templates, few-shot exemplars and their token budget are the real ones, so
the lengths show how Flan prompts pack, not what the full collection would measure.
"""

import os

from benchmarks import _common

FIXTURES = os.path.join(_common.REPO_ROOT, "tests", "fixtures", "flan")
NAME = "flan_fixtures"


def _register() -> None:
    from tasks import demo, vocab
    from tasks.flan import sources

    os.environ[vocab.FLAN_VOCAB_ENV] = demo.vocabulary().sentencepiece_model_file
    os.environ[sources.COT_DIR_ENV] = os.path.join(FIXTURES, "cot_data")
    os.environ[sources.NIV2_DIR_ENV] = os.path.join(FIXTURES, "natural-instructions")
    import tasks.flan
    from tasks.flan import mixtures

    tasks.flan.register_all()
    proportions = mixtures.PROPORTIONS["b"]
    mixtures.register_mixture(NAME, {f: proportions[f] for f in ("niv2", "cot")})


_register()
