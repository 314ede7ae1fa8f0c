"""Items 1 and 2 of the reliability suite: SIGKILL at random moments (several in the middle of
an async checkpoint save) and a SIGTERM, each followed by a restart, end in exactly the
parameters and per-step losses of an uninterrupted run.

One process start costs an import of TensorFlow and JAX; the compiled steps come from a
persistent compilation cache shared by the restarts, so each segment is short.
"""

import glob
import os
import random
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from train_testing import REPO, logged_losses, run_from_repo_root, train_command, train_in_process  # noqa: F401

from flan_jax import checkpoint_integrity, checkpoints

STEPS = 24
# One task: each restart builds one input pipeline instead of four.
BINDINGS = (
    "--gin.CHECKPOINT_EVERY=1",
    "--gin.LENGTH_CHECK_EXAMPLES=0",
    "--gin.EVAL_EVERY=None",
    "--gin.MIXTURE_OR_TASK_NAME='demo_sort'",
)
NUM_KILLS = 10
KILLS_DURING_SAVE = 4


def committed_steps(model_dir) -> list[int]:
    names = os.listdir(model_dir / "checkpoints")
    return sorted(int(name) for name in names if name.isdigit())


def partial_saves(model_dir) -> list[str]:
    return glob.glob(str(model_dir / "checkpoints" / "*.orbax-checkpoint-tmp*"))


def start(model_dir, env):
    """A training process, read until it says where it starts; returns (process, step)."""
    proc = subprocess.Popen(
        train_command(model_dir, STEPS, *BINDINGS),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    for line in proc.stdout:
        started = re.match(r"model_dir .*: starting at step (\d+) of", line)
        if started:
            return proc, int(started.group(1))
    proc.wait()
    pytest.fail(f"training exited with {proc.returncode} before starting")


def read_until_step(proc, step) -> None:
    for line in proc.stdout:
        if line.startswith(f"step {step}/"):
            return
    pytest.fail(f"training ended before step {step}")


def kill_during_save(proc, model_dir, timeout=60.0) -> None:
    """SIGKILL as soon as an Orbax save is in flight (its temporary directory exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not partial_saves(model_dir):
        pass
    proc.kill()


def final_state(model_dir, like):
    """The last checkpoint of `model_dir`, verified and restored onto the structure of `like`."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
    )
    checkpointer = checkpoints.Checkpointer(model_dir)
    try:
        return checkpointer.restore(abstract, STEPS)[0]
    finally:
        checkpointer.close()


@pytest.mark.slow
def test_kills_and_sigterm_at_random_moments_end_in_the_uninterrupted_params(tmp_path):
    straight, _ = train_in_process(tmp_path / "straight", STEPS, *BINDINGS)
    model_dir = tmp_path / "interrupted"
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    rng = random.Random(9)
    plan = ["save"] * KILLS_DURING_SAVE + ["step"] * (NUM_KILLS - KILLS_DURING_SAVE)
    rng.shuffle(plan)
    plan.insert(rng.randrange(len(plan)), "sigterm")
    caught_mid_save, expected_start = 0, 0
    for moment in plan:
        proc, started_at = start(model_dir, env)
        # The restart resumes from the newest committed step, never from a partial one.
        assert started_at == expected_start
        assert started_at <= STEPS - 3, "the run would finish before all interruptions"
        read_until_step(proc, started_at + rng.randint(1, 2))
        if moment == "sigterm":
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=120)[0]
            assert proc.returncode == 0
            saved = int(re.search(r"checkpoint at step (\d+) saved after SIGTERM", out).group(1))
            assert committed_steps(model_dir)[-1] == saved
        else:
            if moment == "save":
                kill_during_save(proc, model_dir)
            else:
                proc.kill()
            proc.communicate(timeout=120)
            assert proc.returncode == -signal.SIGKILL
            caught_mid_save += bool(partial_saves(model_dir))  # a half-written step is left
        steps = committed_steps(model_dir)
        for step in steps:  # every step Orbax lists is whole: its files match its manifest
            checkpoint_integrity.verify(str(model_dir / "checkpoints" / str(step)), step)
        expected_start = steps[-1] if steps else 0
    assert caught_mid_save >= KILLS_DURING_SAVE, "too few kills landed during a save"

    proc, started_at = start(model_dir, env)
    assert started_at == expected_start
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert logged_losses(model_dir) == logged_losses(tmp_path / "straight")
    interrupted = final_state(model_dir, straight)
    assert int(interrupted.step) == int(straight.step) == STEPS
    jax.tree.map(
        np.testing.assert_array_equal, jax.device_get(interrupted), jax.device_get(straight)
    )
