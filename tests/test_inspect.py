"""`python -m flan_jax.inspect_mixture`: the table of rates, caps, shares, epochs; prompts."""

import io
import re
import sys

import gin
import pytest
from flan_testing import COT_DIR, NIV2_DIR

from flan_jax import inspect_mixture


def _rows(text):
    """task -> its columns, for the table lines of the output."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 8 and re.fullmatch(r"\d\.\d{4}", parts[1]):
            rows[parts[0]] = parts[1:]
    return rows


def test_demo_mixture_table_and_prompts(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    inspect_mixture.main(
        [
            "flan_demo",
            "--steps",
            "100",
            "--batch_size",
            "8",
            "--feature_lengths",
            "inputs=128,targets=64",
            "--num_prompts",
            "2",
            "--sample_examples",
            "8",
        ]
    )
    text = out.getvalue()
    rows = _rows(text)
    assert sorted(rows) == [
        "demo_antonyms_fewshot",
        "demo_arithmetic_cot",
        "demo_compare_options",
        "demo_sort",
    ]
    for rate, cap, examples, ex_share, tok_share, tokens, epochs in rows.values():
        assert (rate, cap, examples, ex_share) == ("0.2500", "-", "3000", "25.00%")
        assert tok_share.endswith("%") and "/" in tokens and float(epochs) > 0
    assert sum(float(r[4].rstrip("%")) for r in rows.values()) == pytest.approx(100, abs=0.05)
    assert text.count("--- prompt ") == 2 and text.count("--- target") == 2


@pytest.fixture
def clean_gin():
    from tasks.flan import cot

    yield
    gin.clear_config()
    cot.use_directory(None)


def test_flan_mixture_from_gin_shows_caps_shares_and_missing_sources(
    flan_env, monkeypatch, clean_gin
):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    inspect_mixture.main(
        [
            "--gin_file=gin/mixtures/flan2022_handbuilt.gin",
            "--gin.COT_RATIO=0.2",
            f"--gin.COT_DIR='{COT_DIR}'",
            f"--gin.NIV2_DIR='{NIV2_DIR}'",
            "--steps",
            "10",
            "--batch_size",
            "4",
            "--feature_lengths",
            "inputs=256,targets=64",
            "--num_prompts",
            "1",
            "--sample_examples",
            "2",
        ]
    )
    text = out.getvalue()
    assert text.startswith("flan2022_handbuilt_b_cot0.2: ")
    rows = _rows(text)
    cot = {name: row for name, row in rows.items() if name.startswith("cot_")}
    assert len(cot) == 36 and sum(float(r[0]) for r in cot.values()) == pytest.approx(0.2, abs=1e-3)
    assert rows["cot_gsm8k_zs_cot"][1:3] == ["100000", "6"]
    assert rows["niv2_task001_capitals_answer_generation_zs_noopt"][1:3] == ["5000", "6"]
    assert rows["muffin_rte_zs_opt"][1:3] == ["30000", "?"]  # no TFDS data here: rate from the cap
    assert rows["t0sf_wiki_bio_who_zs_noopt"][1] == "20000"
    assert rows["muffin_xsum_zs_noopt"][1] == "30000"  # xsum is Muffin's
    assert re.search(
        r"mean exemplars per few-shot prompt \(sampled\): cot \d+\.\d\d \(\d+ prompts\)", text
    )
    assert "TFDS dataset 'glue/rte:2.0.0' (split 'train') is not prepared" in text
    assert "point TFDS_DATA_DIR at its data_dir" in text
    assert "--- prompt 1: " in text


def test_mean_exemplars_per_few_shot_prompt_by_family():
    import tasks.flan  # noqa: F401  (registers the CoT tasks named below)
    from tasks import templates

    key = templates.NUM_EXEMPLARS
    samples = {
        "cot_gsm8k_fs_cot": [{key: 2}, {key: 5}],
        "cot_qasc_fs_cot": [{key: 1}],
        "cot_gsm8k_zs_cot": [{"inputs": b"zero-shot"}],
        "demo_task": [{key: 3}],
    }
    assert inspect_mixture.exemplars_per_family(samples) == {
        "cot": (pytest.approx(8 / 3), 3),
        "other": (3.0, 1),
    }
