"""Two processes on 127.0.0.1 (2 CPU devices each) train exactly what one 4-device process
does, and evaluate and infer what one process does."""

import json
import os
import subprocess
import sys
import tempfile

import gin
import pytest
from decoder_testing import save_checkpoint
from eval_testing import SUBTASKS, write_benchmarks
from train_testing import REPO, device_env, free_port, logged_losses, train_command

import tasks.eval
from flan_jax import evaluate, infer


def test_two_processes_train_the_same_losses_as_one(tmp_path):
    steps, bindings = 4, ["--gin.LOG_EVERY=1", "--gin.CHECKPOINT_EVERY=2"]
    single = tmp_path / "single"
    subprocess.run(
        train_command(single, steps, *bindings),
        check=True,
        cwd=REPO,
        env=device_env(4),
        capture_output=True,
        timeout=600,
    )

    multi = tmp_path / "multi"
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            train_command(multi, steps, *bindings)
            + [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO,
            env=device_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "process 1 of 2" in outputs[1]

    expected = logged_losses(single)
    assert sorted(expected) == list(range(1, steps + 1))
    got = logged_losses(multi)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-5 * abs(expected[step]), (step, got, expected)
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]


def test_two_processes_evaluate_to_the_same_report_as_one(tmp_path, monkeypatch):
    """A decoder-only checkpoint on MGSM with self-consistency: the sampled paths, their vote
    and the scores do not depend on how many hosts share the batches."""
    checkpoint = save_checkpoint(tmp_path / "palm")
    data = write_benchmarks(tmp_path)
    bindings = [
        "--gin_file=gin/eval/evaluate.gin",
        f"--checkpoint={checkpoint.path}",
        "--gin.SUITES=['mgsm']",
        f"--gin.SUBTASKS={ {'mgsm': SUBTASKS['mgsm']}!r}",
        "--gin.SUITE_FEATURE_LENGTHS={'mgsm': {'inputs': 160, 'targets': 12}}",
        "--gin.BATCH_SIZE=8",
        "--gin.SELF_CONSISTENCY_SAMPLES=3",
        "--gin.SELF_CONSISTENCY_SUITES=['mgsm']",
        "--gin.LABEL='palm'",
    ]
    for name, path in data.items():
        monkeypatch.setenv(name, path)
    try:  # one process, the 8 devices of the tests
        evaluate.main([*bindings, f"--gin.OUTPUT_DIR='{tmp_path / 'one'}'"])
    finally:
        gin.clear_config()
        tasks.eval.register_suites()

    run_two_processes(
        ["flan_jax.evaluate", *bindings, f"--gin.OUTPUT_DIR='{tmp_path / 'two'}'"], data
    )
    for name in ("results.json", os.path.join("predictions", "mgsm.jsonl")):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_two_processes_infer_what_one_does(tmp_path):
    """Sampled predictions and target scores of a decoder-only checkpoint: each host places its
    rows of the same global batches, process 0 writes the output."""
    checkpoint = save_checkpoint(tmp_path / "palm")
    texts = [f"Is {n} greater than {2 * n - 9}?" for n in range(9)]  # 2 batches of 8 rows
    examples = [{"inputs": text, "targets": text.split()[1]} for text in texts] + [{"inputs": "no"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    flags = ["--checkpoint", checkpoint.path, "--input", str(tmp_path / "in.jsonl")]
    flags += ["--batch_size", "8", "--max_input_length", "32", "--max_decode_length", "8"]
    flags += ["--temperature", "0.7", "--num_decodes", "2"]
    infer.main([*flags, "--output", str(tmp_path / "one.jsonl")])  # one process, 8 devices
    run_two_processes(["flan_jax.infer", *flags, "--output", str(tmp_path / "two.jsonl")])
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    one, two = read("one.jsonl"), read("two.jsonl")
    assert [r["prediction"] for r in two] == [r["prediction"] for r in one]
    scores = lambda results: [r["score"] for r in results if "score" in r]  # noqa: E731
    assert len(scores(one)) == 9
    assert scores(two) == pytest.approx(scores(one), rel=1e-5)


def run_two_processes(module_and_args: list[str], env: dict | None = None) -> None:
    """`python -m MODULE ARGS` as processes 0 and 1 on 127.0.0.1, 2 CPU devices each; their
    output goes to files (a process blocked on a full pipe would stall the other)."""
    command = [sys.executable, "-m", *module_and_args]
    command += [f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2"]
    outputs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    procs = [
        subprocess.Popen(
            command + [f"--process_id={i}"],
            cwd=REPO,
            env={**device_env(2), **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, output in enumerate(outputs)
    ]
    for proc, output in zip(procs, outputs):
        proc.wait(timeout=600)
        output.seek(0)
        assert proc.returncode == 0, output.read()[-3000:]
