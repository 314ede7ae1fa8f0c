"""Two processes on 127.0.0.1 (2 CPU devices each) train exactly what one 4-device process
does, and evaluate to the same report as one process."""

import os
import subprocess
import sys
import tempfile

import gin
from decoder_testing import save_checkpoint
from eval_testing import SUBTASKS, write_benchmarks
from train_testing import REPO, device_env, free_port, logged_losses, train_command

import tasks.eval
from flan_jax import evaluate


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

    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "flan_jax.evaluate", *bindings]
    command += [f"--gin.OUTPUT_DIR='{tmp_path / 'two'}'", f"--coordinator_address={address}"]
    outputs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    procs = [
        subprocess.Popen(
            command + ["--num_processes=2", f"--process_id={i}"],
            cwd=REPO,
            env={**device_env(2), **data},
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
    for name in ("results.json", os.path.join("predictions", "mgsm.jsonl")):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
