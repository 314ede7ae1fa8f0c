"""Resume from the task cache: the input position is saved in every checkpoint and restored
in constant time, exactly, on any number of processes; a checkpoint without one (streaming,
older runs) replays the batches with a note; a run never resumes the other input path."""

import glob
import shutil
import subprocess
import sys
import time

import pytest
from train_testing import (  # noqa: F401 (run_from_repo_root: an autouse fixture)
    REPO,
    kill_at_step,
    logged_losses,
    run_from_repo_root,
    start_processes,
    train_in_process,
    train_processes,
)

from flan_jax import data, hooks

LENGTHS = {"inputs": 64, "targets": 32}  # train_testing.SMALL's TASK_FEATURE_LENGTHS
STEPS = 8  # checkpoints every 2 steps, the last 3 kept: 4, 6 and 8
RESTORED = "restored from the checkpoint"
QUICK = ["--gin.LENGTH_CHECK_EXAMPLES=0", "--gin.EVAL_EVERY=None"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """The demo mixture cached by the command a user runs, at the training lengths."""
    directory = tmp_path_factory.mktemp("cache")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "flan_jax.cache_tasks",
            "--gin_file=gin/runs/demo.gin",
            f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
            f"--gin.CACHE_DIR='{directory}'",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=900,
    )
    return directory


def cached(cache_dir):
    return [*QUICK, f"--gin.CACHE_DIR='{cache_dir}'"]


@pytest.fixture(scope="module")
def straight(cache_dir, tmp_path_factory):
    """An uninterrupted cached run on one process (4 devices): its directory and losses."""
    model_dir = tmp_path_factory.mktemp("straight")
    train_processes(model_dir, STEPS, *cached(cache_dir))
    losses = logged_losses(model_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return model_dir, losses


def resumed_at(source, step, model_dir):
    """`model_dir` as a run preempted after `step` would leave it: `source`'s checkpoint."""
    shutil.copytree(source / "checkpoints" / str(step), model_dir / "checkpoints" / str(step))


def assert_close(got, expected, steps):
    assert sorted(got) == list(steps), got
    for step in steps:
        assert abs(got[step] - expected[step]) <= 1e-5 * abs(expected[step]), (step, got, expected)


@pytest.mark.slow
def test_sigkill_then_restart_restores_the_input_position(cache_dir, straight, tmp_path):
    killed = tmp_path / "killed"
    kill_at_step(killed, STEPS, 5, *cached(cache_dir))
    (out,) = train_processes(killed, STEPS, *cached(cache_dir))
    assert "resuming from checkpoint step" in out, out[-3000:]
    assert RESTORED in out and "(no replay)" in out and "replaying" not in out, out[-3000:]
    assert logged_losses(killed) == straight[1]  # bit-identical, every step


@pytest.mark.slow
def test_one_process_run_resumes_on_two(cache_dir, straight, tmp_path):
    resumed_at(straight[0], 4, tmp_path)
    outputs = train_processes(tmp_path, STEPS, *cached(cache_dir), processes=2)
    assert all("input: position after step 4 " + RESTORED in out for out in outputs)
    assert_close(logged_losses(tmp_path), straight[1], range(5, STEPS + 1))


@pytest.mark.slow
def test_two_process_run_resumes_on_one(cache_dir, straight, tmp_path):
    train_processes(tmp_path, 4, *cached(cache_dir), processes=2)
    (out,) = train_processes(tmp_path, STEPS, *cached(cache_dir))
    assert "input: position after step 4 " + RESTORED in out, out[-3000:]
    assert_close(logged_losses(tmp_path), straight[1], range(1, STEPS + 1))


@pytest.mark.slow
def test_two_processes_killed_during_an_async_save_resume_from_the_newest_committed_step(
    cache_dir, straight, tmp_path
):
    """SIGKILL of both processes while a checkpoint is being written (Orbax's temporary step
    directory exists, after at least one committed step); the restart on two processes
    resumes from the newest committed step and logs the uninterrupted run's losses."""
    bindings = [*cached(cache_dir), "--gin.CHECKPOINT_EVERY=1"]
    started = start_processes(tmp_path, STEPS, *bindings, processes=2)
    checkpoints_dir = tmp_path / "checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and all(p.poll() is None for p, _ in started):
        committed = [n for n in _listing(checkpoints_dir) if n.isdigit()]
        if committed and glob.glob(str(checkpoints_dir / "*.orbax-checkpoint-tmp*")):
            break
        time.sleep(0.005)
    for proc, _ in started:
        proc.kill()
        proc.wait(timeout=60)
    assert all(p.returncode == -9 for p, _ in started), "a process ended before the kill"
    newest = max(int(n) for n in _listing(checkpoints_dir) if n.isdigit())
    assert newest < STEPS

    outputs = train_processes(tmp_path, STEPS, *bindings, processes=2)
    assert all(f"resuming from checkpoint step {newest}" in out for out in outputs), outputs[0]
    assert_close(logged_losses(tmp_path), straight[1], range(1, STEPS + 1))


def _listing(directory) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []


def test_streaming_run_refuses_a_cached_runs_checkpoint(straight, tmp_path):
    resumed_at(straight[0], 4, tmp_path)
    with pytest.raises(
        ValueError, match=r"'input_path': 'task cache'.*read a task cache: set CACHE_DIR to it"
    ):
        train_in_process(tmp_path, STEPS, *QUICK)


class OldCheckpoint(hooks.Checkpoint):
    """Saves the data item as runs did before input states: the run identity and the step."""

    def __init__(self, checkpointer, every, data_state, **kwargs):
        def old(step):
            return {k: v for k, v in data_state(step).items() if k not in ("input", "input_path")}

        super().__init__(checkpointer, every, old, **kwargs)


@pytest.mark.slow
def test_checkpoint_without_input_state_replays_with_a_note(
    cache_dir, tmp_path, monkeypatch, capsys
):
    with monkeypatch.context() as patch:
        patch.setattr(hooks, "Checkpoint", OldCheckpoint)
        train_in_process(tmp_path, 2, *QUICK)
    # An older checkpoint was streamed: the cached path would feed other batches.
    with pytest.raises(
        ValueError,
        match=r"'input_path': 'seqio streaming'.*streamed its input: set CACHE_DIR = None",
    ):
        train_in_process(tmp_path, 3, *cached(cache_dir))
    capsys.readouterr()
    state, _ = train_in_process(tmp_path, 3, *QUICK)
    assert int(state.step) == 3
    out = capsys.readouterr().out
    assert "input: the checkpoint has no input position; replaying 2 batches to reach step 2" in out
    assert RESTORED not in out


class Numbered:
    """An input whose k-th batch is k and whose state is its position."""

    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return self.position - 1

    def set_state(self, state):
        self.position = state["position"]


def test_restore_position_sets_the_state_without_taking_a_batch(capsys):
    inputs = Numbered()
    data.restore_position(inputs, 30_000, {"position": 30_000})
    assert next(inputs) == 30_000
    assert "input: position after step 30000 restored" in capsys.readouterr().out


@pytest.mark.parametrize("start_step", [1, 2, 25])
def test_restore_position_without_state_takes_the_batches_before(start_step, capsys):
    inputs = Numbered()
    data.restore_position(inputs, start_step, None)
    assert next(inputs) == start_step
    assert f"replaying {start_step} batches" in capsys.readouterr().out


def test_restore_position_at_the_start_takes_nothing(capsys):
    inputs = Numbered()
    data.restore_position(inputs, 0, None)
    assert next(inputs) == 0 and capsys.readouterr().out == ""
