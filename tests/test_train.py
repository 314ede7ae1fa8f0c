import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from train_testing import (  # noqa: F401 (run_from_repo_root: an autouse fixture)
    REPO,
    SMALL,
    device_env,
    kill_at_step,
    logged_losses,
    run_from_repo_root,
    train_command,
    train_in_process,
)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    interrupted = tmp_path / "interrupted"
    train_in_process(interrupted, 4)
    assert sorted(os.listdir(interrupted / "checkpoints")) == ["2", "4"]
    resumed, _ = train_in_process(interrupted, 6)
    straight, _ = train_in_process(tmp_path / "straight", 6)
    assert int(resumed.step) == int(straight.step) == 6
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)


def test_resume_refuses_a_model_dir_of_another_run(tmp_path):
    train_in_process(tmp_path, 2)
    with pytest.raises(ValueError, match=r"'seed': 0.*'seed': 1.*new MODEL_DIR"):
        train_in_process(tmp_path, 4, "--gin.SEED=1")


def test_command_line_trains_evaluates_and_writes_outputs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flan_jax.train",
            *SMALL,
            f"--gin.MODEL_DIR='{tmp_path}'",
            "--gin.TRAIN_STEPS=2",
            "--gin.EVAL_NUM_EXAMPLES=8",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "step 2/2" in out and "tokens/s" in out and "ETA" in out
    assert "| task | metric | step 0 | step 2 |" in out
    assert "demo_sort" in out
    config = (tmp_path / "config.gin").read_text()
    assert f"MODEL_DIR = '{tmp_path}'" in config and "TRAIN_STEPS = 2" in config
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "train"))


def test_unknown_mixture_names_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"'flan_dem'.*Closest registered names: flan_demo"):
        train_in_process(tmp_path, 1, "--gin.MIXTURE_OR_TASK_NAME='flan_dem'")


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    stderr = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flan_jax.train",
            *SMALL,
            f"--gin.MODEL_DIR='{tmp_path}'",
            "--gin.TRAIN_STEPS=100000",
            "--gin.CHECKPOINT_EVERY=100000",
            "--gin.PREDICT_EVAL=False",
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=REPO,
    )
    for line in proc.stdout:
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    saved = re.search(r"checkpoint at step (\d+) saved after SIGTERM", out)
    assert saved, out
    assert os.listdir(tmp_path / "checkpoints") == [saved.group(1)]


@pytest.mark.slow
def test_sigkill_then_restart_reproduces_every_loss(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run = dict(check=True, cwd=REPO, capture_output=True, env=device_env(4))
    subprocess.run(train_command(straight, 8), **run)
    kill_at_step(killed, 8, 5)
    assert "8" not in os.listdir(killed / "checkpoints")
    subprocess.run(train_command(killed, 8), **run)
    expected = logged_losses(straight)
    assert sorted(expected) == list(range(1, 9))
    assert logged_losses(killed) == expected


def test_decoder_only_model_trains_and_evaluates_on_the_same_path(tmp_path):
    state, results = train_in_process(
        tmp_path,
        2,
        "--gin_file=gin/models/palm/tiny.gin",
        "--gin.PREDICT_EVAL=True",
        "--gin.EVAL_NUM_EXAMPLES=4",
    )
    assert "decoder_norm" in state.params and "encoder" not in state.params  # the PaLM model
    assert list(results) == ["step 0", "step 2"]
    assert set(results["step 2"]) == {
        "demo_arithmetic_cot",
        "demo_sort",
        "demo_compare_options",
        "demo_antonyms_fewshot",
    }


def test_teacher_forced_eval_is_logged_every_n_steps(tmp_path, capsys):
    train_in_process(tmp_path, 4, "--gin.EVAL_EVERY=2", "--gin.EVAL_NUM_EXAMPLES=6")
    out = capsys.readouterr().out
    assert out.count("eval demo_sort: loss") == 2  # steps 2 and 4
    events = os.listdir(tmp_path / "eval" / "demo_sort")
    assert any(name.startswith("events.out.tfevents") for name in events)
