"""The Flan collection as seqio tasks and mixtures; importing registers them all.

Muffin and T0-SF read TFDS datasets (TFDS_DATA_DIR), NIV2 a natural-instructions checkout
($FLAN_JAX_NIV2_DIR) and CoT FLAN's TSV files ($FLAN_JAX_COT_DIR); see `mixtures` for the
mixture names. `released` registers FLAN's released collection ($FLAN_JAX_RELEASED_DIR) as
tasks and mixtures (flan2022_released, _a, _b), read when first used.
"""

from tasks.flan import (  # noqa: F401  (registration)
    cot,
    mixtures,  # noqa: F401  (registers the mixtures of the tasks above)
    muffin,
    niv2,
    released,
    sources,
    t0sf,
)


def register_all() -> list[str]:
    """Registers every task and mixture again, reading the environment anew (the
    vocabulary in $FLAN_JAX_VOCAB, the NIV2 directory); returns the mixture names."""
    muffin.register()
    t0sf.register()
    cot.register()
    niv2_dir = sources.data_dir(sources.NIV2_DIR_ENV)
    if niv2_dir:
        niv2.register(niv2_dir)
    return mixtures.register_all() + released.register_all()
