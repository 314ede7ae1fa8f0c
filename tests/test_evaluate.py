"""`python -m flan_jax.evaluate` end to end on fixture benchmarks, and the suites evaluated
during training."""

import json
import os
import subprocess
import sys

import gin
import pytest
import tensorflow as tf
from decoder_testing import Reference, save_checkpoint
from eval_testing import SUBTASKS, write_benchmarks
from matplotlib import image
from train_testing import REPO, train_in_process

import tasks.eval
from flan_jax import convert, evaluate, report
from tasks import demo, vocab

torch = pytest.importorskip("torch")
from hf_testing import (  # noqa: E402
    HF_CONFIGS,
    random_hf_t5,
    save_hf_dir,  # noqa: E402 (needs torch)
)

LENGTHS = {suite: {"inputs": 160, "targets": 12} for suite in tasks.eval.SUITES}
COMMON = [
    "--gin_file=gin/eval/evaluate.gin",
    f"--gin.SUBTASKS={SUBTASKS!r}",
    f"--gin.SUITE_FEATURE_LENGTHS={LENGTHS!r}",
    "--gin.BATCH_SIZE=8",
    "--gin.SELF_CONSISTENCY_SAMPLES=3",
    "--gin.SELF_CONSISTENCY_SUITES=['mgsm']",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Flan-T5 as an HF directory and imported as a flan_jax checkpoint, and
    fixture data for every suite."""
    root = tmp_path_factory.mktemp("evaluate")
    hf_dir = save_hf_dir(root / "hf", random_hf_t5(seed=0, overrides=HF_CONFIGS[0]))
    convert.import_hf(hf_dir, str(root / "checkpoint"))
    data = write_benchmarks(root)
    return root, hf_dir, data


def test_checkpoint_and_hf_dir_evaluate_to_the_same_report(setup, monkeypatch):
    root, hf_dir, data = setup
    env = {**os.environ, **data}
    mmlu_dir = env.pop(tasks.eval.DATA_DIR_ENVS["mmlu"])  # given through gin instead
    out = root / "from_checkpoint"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flan_jax.evaluate",
            *COMMON,
            f"--checkpoint={root / 'checkpoint'}",
            f"--gin.OUTPUT_DIR='{out}'",
            f"--gin.MMLU_DIR='{mmlu_dir}'",
            "--gin.LABEL='tiny'",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "examples/s  ETA" in result.stderr
    record = json.loads((out / "results.json").read_text())
    assert list(record["scores"]) == list(tasks.eval.SUITES)
    assert record["tasks"]["mmlu_cot"].keys() == {"mmlu_cot_anatomy"}
    assert record["tasks"]["mgsm"].keys() == {"mgsm_de", "mgsm_zh"}
    tydiqa_score = pytest.approx(record["scores"]["tydiqa"])
    assert record["tasks"]["tydiqa"] == {"tydiqa_swahili": {"exact_match": tydiqa_score}}
    assert record["self_consistency"] == {"suites": ["mgsm"], "num_samples": 3, "temperature": 0.7}
    assert isinstance(record["normalized_average"], float)
    # Every generated task's predictions cut at the 12-token decode length are counted; MMLU
    # direct generates nothing.
    assert record["truncated"].keys() == set(tasks.eval.SUITES)
    assert record["truncated"]["mmlu_direct"] == {}
    for suite in set(tasks.eval.SUITES) - {"mmlu_direct"}:
        assert record["truncated"][suite].keys() == record["tasks"][suite].keys(), suite
    cut = record["truncated"]["mgsm"]["mgsm_de"]
    assert cut["predictions"] == 2 and cut["decode_length"] == 12
    assert 0 <= cut["truncated"] <= 2
    table = (out / "results.md").read_text()
    notes = report.truncation_notes(record["truncated"])
    assert all(f"- {note}" in table and note in result.stdout for note in notes)
    assert table.count("(paper)") == 6
    row = next(line for line in table.splitlines() if line.startswith("| **tiny** | "))
    assert row in result.stdout
    assert image.imread(out / "results.png").ndim == 3
    predictions = (out / "predictions" / "mgsm.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in predictions]
    assert [(line["task"], line["targets"]) for line in lines] == [
        ("mgsm_de", "2"),
        ("mgsm_de", "1234"),
        ("mgsm_zh", "3"),
    ]
    assert lines[0]["inputs"].endswith("Schritt-für-Schritt-Antwort:")
    assert isinstance(lines[0]["prediction"], str)

    # The HF directory itself, in-process: same weights and vocabulary, so the same scores
    # (greedy TyDiQA, self-consistent MGSM with the same seed).
    for name, path in data.items():
        monkeypatch.setenv(name, path)
    try:
        evaluate.main(
            [
                *COMMON,
                f"--gin.CHECKPOINT_PATH='{hf_dir}'",
                f"--gin.OUTPUT_DIR='{root / 'from_hf'}'",
                "--gin.SUITES=['tydiqa', 'mgsm']",
            ]
        )
    finally:
        gin.clear_config()
        tasks.eval.register_suites()
    from_hf = json.loads((root / "from_hf" / "results.json").read_text())
    assert from_hf["model"] == "hf" and from_hf["normalized_average"] is None
    assert from_hf["tasks"] == {suite: record["tasks"][suite] for suite in ("tydiqa", "mgsm")}


def test_a_decoder_only_checkpoint_evaluates_every_suite(setup, tmp_path, monkeypatch):
    """All six suites (self-consistency on MGSM) on a PaLM-style checkpoint; the greedy suites'
    predictions equal full forward passes on each prompt as the task tokenizes it."""
    _, _, data = setup
    for name, path in data.items():
        monkeypatch.setenv(name, path)
    checkpoint = save_checkpoint(tmp_path / "palm")
    out = tmp_path / "out"
    try:
        evaluate.main([*COMMON, f"--checkpoint={checkpoint.path}", f"--gin.OUTPUT_DIR='{out}'"])
    finally:
        gin.clear_config()
        tasks.eval.register_suites()
    record = json.loads((out / "results.json").read_text())
    assert list(record["scores"]) == list(tasks.eval.SUITES)
    assert record["tasks"]["mgsm"].keys() == {"mgsm_de", "mgsm_zh"}
    assert record["self_consistency"] == {"suites": ["mgsm"], "num_samples": 3, "temperature": 0.7}
    lengths = LENGTHS["tydiqa"]
    reference = Reference(checkpoint, 1 + lengths["inputs"] + lengths["targets"])
    vocabulary = checkpoint.vocabulary
    for suite in ("bbh_direct", "tydiqa"):
        lines = (out / "predictions" / f"{suite}.jsonl").read_text().splitlines()
        assert lines
        for line in map(json.loads, lines):
            # The eval tasks keep a prompt's last tokens, then append EOS.
            prompt = vocabulary.encode(line["inputs"])[1 - lengths["inputs"] :] + [1]
            tokens = reference.greedy(prompt, lengths["targets"])
            assert line["prediction"] == vocabulary.decode(tokens), line


def test_unknown_data_dir_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data_dirs key 'mmmlu' is not a benchmark"):
        evaluate.evaluate(
            output_dir=str(tmp_path),
            suite_feature_lengths=LENGTHS,
            partitioner=None,
            data_dirs={"mmmlu": "/x"},
        )


def test_suites_are_scored_and_logged_during_training(setup, tmp_path, monkeypatch):
    _, _, data = setup
    for name, path in data.items():
        monkeypatch.setenv(name, path)
    monkeypatch.setenv(vocab.FLAN_VOCAB_ENV, demo.vocabulary().sentencepiece_model_file)
    monkeypatch.chdir(REPO)
    try:
        train_in_process(
            tmp_path,
            2,
            "--gin_file=gin/eval/during_training.gin",
            "--gin.EVAL_SUITES_EVERY=1",
            "--gin.EVAL_SUITES_NUM_EXAMPLES=1",
            "--gin.EVAL_SUITE_NAMES=['mgsm']",
            f"--gin.EVAL_SUBTASKS={SUBTASKS!r}",
        )
    finally:
        tasks.eval.register_suites()
    assert os.listdir(tmp_path / "benchmarks") == ["mgsm"]
    events = tmp_path / "benchmarks" / "mgsm"
    logged = {}
    for name in os.listdir(events):
        for event in tf.compat.v1.train.summary_iterator(str(events / name)):
            for value in event.summary.value:
                logged.setdefault(value.tag, []).append(event.step)
    assert logged == {tag: [1, 2] for tag in ("score", "mgsm_de/accuracy", "mgsm_zh/accuracy")}
