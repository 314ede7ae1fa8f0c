"""Flan mixtures: the caps arithmetic, proportions A/B, the CoT ratio (checked by sampling),
determinism, user tasks, and the gin path into `python -m flan_jax.train`."""

import os
import sys

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flan_testing import COT_DIR, LENGTHS, NIV2_DIR

from tasks.flan import mixtures, registry


def test_family_rates_follow_capped_example_counts():
    counts = {"big": (50_000, 4), "small": (10_000, 2), "unknown": (None, 2)}
    rates = mixtures.family_rates(counts, cap=30_000, total=0.5)
    # Weights 30k (capped), 10k, 30k (unknown counts as the cap); split over formats.
    assert rates["big"] == pytest.approx(0.5 * 30 / 70 / 4)
    assert rates["small"] == pytest.approx(0.5 * 10 / 70 / 2)
    assert rates["unknown"] == pytest.approx(0.5 * 30 / 70 / 2)
    assert 4 * rates["big"] + 2 * rates["small"] + 2 * rates["unknown"] == pytest.approx(0.5)


def test_proportions_and_cot_ratio_keep_the_others_relative_shares():
    assert mixtures.CAPS == {"muffin": 30_000, "t0sf": 20_000, "niv2": 5_000, "cot": 100_000}
    for proportions in mixtures.PROPORTIONS.values():
        assert sum(proportions.values()) == pytest.approx(1.0, abs=0.002)  # B's rounding: 99.9%
    b = mixtures.PROPORTIONS["b"]
    scaled = mixtures.with_cot_ratio(b, 0.1)
    assert scaled["cot"] == 0.1 and sum(scaled.values()) == pytest.approx(1.0)
    assert scaled["muffin"] / scaled["niv2"] == pytest.approx(b["muffin"] / b["niv2"])
    assert scaled["t0sf"] / scaled["muffin"] == pytest.approx(b["t0sf"] / b["muffin"])
    assert mixtures.with_cot_ratio(b, None) == b
    with pytest.raises(ValueError, match="COT_RATIO=1.5 must be in"):
        mixtures.with_cot_ratio(b, 1.5)


def test_registered_mixture_rates_match_the_plan(flan_env):
    mixture = seqio.get_mixture_or_task("flan2022_handbuilt_a")
    total = mixture.total_rate
    niv2_share = (
        sum(mixture.get_rate(t) for t in mixture.tasks if t.name.startswith("niv2_")) / total
    )
    assert niv2_share == pytest.approx(0.30)
    # Fixture NIV2 tasks have 6 examples each (under the 5k cap): equal rates.
    niv2 = seqio.get_mixture_or_task("flan_niv2")
    assert len({round(niv2.get_rate(t), 12) for t in niv2.tasks}) == 1
    assert {t.name for t in seqio.get_mixture_or_task("flan_muffin_zs_opt").tasks} == {
        task.variant("zs_opt")
        for task in registry.REGISTERED["muffin"].values()
        if "zs_opt" in task.formats
    }


def test_a_missing_family_is_an_error_naming_the_variable(flan_env):
    saved = dict(registry.REGISTERED["niv2"])
    registry.REGISTERED["niv2"].clear()
    try:
        with pytest.raises(ValueError, match="niv2 a share but no such tasks.*FLAN_JAX_NIV2_DIR"):
            mixtures.plan(mixtures.PROPORTIONS["b"])
        relaxed = mixtures.plan(mixtures.PROPORTIONS["b"], strict=False)
        assert sum(relaxed.values()) == pytest.approx(1.0)
    finally:
        registry.REGISTERED["niv2"].update(saved)


def test_sampling_10k_examples_gives_the_cot_ratio(flan_env):
    """Draws tasks exactly as seqio does (tf.data sample_from_datasets over the mixture's
    rates), with each task's dataset reduced to its family label, so 10k draws are cheap."""
    name = mixtures.flan_mixture({"niv2": 0.9, "cot": 0.1}, cot_ratio=0.25)
    assert name == "flan_cot0.1_niv20.9_cot0.25"
    mixture = seqio.get_mixture_or_task(name)
    labels = [
        tf.data.Dataset.from_tensors(t.name.startswith("cot_")).repeat() for t in mixture.tasks
    ]
    rates = [mixture.get_rate(t) for t in mixture.tasks]
    draws = tf.data.Dataset.sample_from_datasets(labels, weights=rates, seed=0).take(10_000)
    share = np.mean(list(draws.as_numpy_iterator()))
    assert abs(share - 0.25) < 0.01, share


def test_the_same_seed_yields_the_same_stream(flan_env):
    def stream(seed):
        dataset = seqio.get_mixture_or_task("flan_niv2").get_dataset(
            LENGTHS, split="train", shuffle=True, seed=seed, num_epochs=1, copy_pretokenized=True
        )
        return [ex["targets_pretokenized"] for ex in dataset.take(40).as_numpy_iterator()]

    first = stream(0)
    assert first == stream(0)
    assert first != stream(1)
    assert len(set(first)) > 5  # a mix of tasks and examples, not one repeated


def test_user_task_joins_the_mixture_at_its_share(flan_env):
    import tasks.examples.user_task as user_task

    try:
        name = mixtures.flan_mixture({"niv2": 0.5, "cot": 0.5})
        assert name == f"flan_cot0.5_niv20.5_with_{user_task.TASK_NAME}{user_task.SHARE:g}"
        mixture = seqio.get_mixture_or_task(name)
        user = seqio.get_mixture_or_task(user_task.TASK_NAME)
        assert mixture.get_rate(user) / mixture.total_rate == pytest.approx(user_task.SHARE)
        cot = sum(mixture.get_rate(t) for t in mixture.tasks if t.name.startswith("cot_"))
        assert cot / mixture.total_rate == pytest.approx(0.5 * (1 - user_task.SHARE))
    finally:
        mixtures.USER_TASKS.pop(user_task.TASK_NAME, None)
    with pytest.raises(ValueError, match="share=1.5 for"):
        mixtures.add_user_task(user_task.TASK_NAME, 1.5)


def test_gin_selects_flan_mixture_with_cot_ratio_and_user_module_for_training(
    flan_env, tmp_path, monkeypatch
):
    """The real entry point: gin imports the user module, @flan_mixture() names the mixture."""
    from flan_jax import cli, train

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(repo)
    run_gin = tmp_path / "my_run.gin"
    run_gin.write_text(
        "include 'runs/demo.gin'\n"
        "include 'mixtures/flan2022_handbuilt.gin'\n"
        "import tasks.examples.user_task\n"
        "VOCAB_SIZE = 640\n"  # the demo pieces plus T5's 100 extra ids
        "MIXTURE_PROPORTIONS = {'niv2': 0.6, 'cot': 0.4}\n"
        f"NIV2_DIR = '{NIV2_DIR}'\n"
        f"COT_DIR = '{COT_DIR}'\n"
        "COT_RATIO = 0.2\n"
        "FEW_SHOT_MAX_INPUT_TOKENS = 200\n"
    )
    # One CoT dataset keeps the run small; gin's import runs the user module afresh.
    all_cot = dict(registry.REGISTERED["cot"])
    registry.REGISTERED["cot"].clear()
    registry.REGISTERED["cot"].update({k: all_cot[k] for k in ("gsm8k",)})
    sys.modules.pop("tasks.examples.user_task", None)
    gin.clear_config()
    try:
        cli.parse(
            [
                f"--gin_file={run_gin}",
                f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                "--gin.TRAIN_STEPS=2",
                "--gin.BATCH_SIZE=8",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}",
                "--gin.EVAL_EVERY=None",
                "--gin.LOG_EVERY=1",
            ],
            description="test",
        )
        state, _ = gin.get_configurable(train.train)()
    finally:
        gin.clear_config()
        mixtures.USER_TASKS.clear()
        registry.REGISTERED["cot"].update(all_cot)
    assert int(state.step) == 2
    expected = "flan_cot0.4_niv20.6_cot0.2_with_user_country_capitals0.05"
    mixture = seqio.get_mixture_or_task(expected)
    assert len(mixture.tasks) == 1 * 2 + 3 * 2 + 1
    cot = sum(mixture.get_rate(t) for t in mixture.tasks if t.name.startswith("cot_"))
    assert cot / mixture.total_rate == pytest.approx(0.2 * 0.95)
    assert (
        "MIXTURE_OR_TASK_NAME = @mixtures.flan_mixture()"
        in (tmp_path / "run" / "config.gin").read_text()
    )


def test_cot_input_inversions_are_mixed_at_0_3_of_the_cot_rate(flan_env):
    """FLAN's cot submix: CoT at rate 1, CoT-II (the input inversions) at 0.3."""
    for cot_ratio in (None, 0.1):
        shares = mixtures.with_cot_ratio(mixtures.PROPORTIONS["b"], cot_ratio)
        rates = mixtures.plan(shares)
        inversions = sum(
            r for name, r in rates.items() if name.startswith("cot_") and "_ii_" in name
        )
        cot = sum(r for name, r in rates.items() if name.startswith("cot_") and "_ii_" not in name)
        assert inversions / cot == pytest.approx(0.3)
        assert inversions + cot == pytest.approx(shares["cot"] / sum(shares.values()))
        # The fixture's datasets are the same size: each inversion at 0.3 of its dataset.
        assert rates["cot_gsm8k_ii_zs_cot"] == pytest.approx(0.3 * rates["cot_gsm8k_zs_cot"])
    assert len([name for name in rates if name.startswith("cot_")]) == 9 * 2 * 2


def test_xsum_is_a_flan_2021_task(flan_env):
    """FLAN leaves T0's xsum prompts out of its T0 submix: xsum is Muffin's."""
    names = set(seqio.TaskRegistry.names())
    assert {"muffin_xsum_zs_noopt", "muffin_xsum_fs_noopt"} <= names
    assert not any(name.startswith("t0sf_xsum") for name in names)
    assert mixtures.family_of("muffin_xsum_zs_noopt") == "muffin"
    b = mixtures.PROPORTIONS["b"]
    rates = mixtures.plan(b)
    # No TFDS data here: every Muffin task counts as Muffin's cap, xsum included.
    assert rates["muffin_xsum_zs_noopt"] == pytest.approx(rates["muffin_samsum_zs_noopt"])
    muffin = sum(r for name, r in rates.items() if name.startswith("muffin_"))
    assert muffin == pytest.approx(b["muffin"] / sum(b.values()))


def test_coverage_of_the_hand_built_collection_is_counted_from_the_registry(flan_env):
    """What the gin file and the README state: Muffin 35 tasks over 35 datasets, T0-SF 17
    over 4, CoT 18 over 9 (with inversions), NIV2 the fixture's task files; shares of B."""
    coverage = mixtures.coverage()
    counts = {f: (c["tasks"], c["datasets"]) for f, c in coverage.items()}
    assert counts["muffin"] == (35, 35) and counts["t0sf"] == (17, 4) and counts["cot"] == (18, 9)
    assert counts["niv2"][0] == len(registry.REGISTERED["niv2"]) > 0
    assert {f: round(100 * c["share"], 1) for f, c in coverage.items()} == {
        "muffin": 46.0,
        "t0sf": 27.9,
        "niv2": 24.2,
        "cot": 1.8,
    }
    note = mixtures.coverage_note(mixtures.PROPORTIONS["a"])
    assert note.startswith("hand-built approximation of the Flan 2022 collection")
    assert "t0sf 17 tasks over 4 datasets (paper: 193 tasks), 15.0% of examples" in note
    assert "mixtures/flan2022_released.gin" in note
    gin_text = open(
        os.path.join(os.path.dirname(__file__), "..", "gin", "mixtures", "flan2022_handbuilt.gin")
    ).read()
    assert "Muffin  35 tasks over 35 datasets" in gin_text
    assert "T0-SF   17 tasks over 4 datasets" in gin_text
    assert "CoT     18 tasks over 9 datasets" in gin_text


def test_hand_built_mixture_names_say_what_they_are(flan_env):
    assert mixtures.flan_mixture("b") == "flan2022_handbuilt_b"
    assert mixtures.flan_mixture("a", cot_ratio=0.1) == "flan2022_handbuilt_a_cot0.1"
    assert "flan2022_b" not in seqio.MixtureRegistry.names()
