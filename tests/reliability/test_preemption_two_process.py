"""A preemption notice that reaches the two processes of a run (127.0.0.1, 2 CPU devices each)
at different steps, or one of them only: both stop after the same step, save that one
checkpoint and exit 0, and the resumed run logs the losses of a run never interrupted. A
process stopping alone would enter the save while the other enters the next step, and the
two would wait on each other's collectives: the test's timeout catches that hang."""

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
from train_testing import REPO, device_env, free_port, logged_losses, train_command

WRAPPER = os.path.join(os.path.dirname(__file__), "sigterm_after_step.py")
WORKER = os.path.join(os.path.dirname(__file__), "two_process_stops.py")
STEPS = 7
BINDINGS = (
    "--gin.CHECKPOINT_EVERY=100",  # no periodic save: the checkpoints are the stops and the end
    "--gin.LENGTH_CHECK_EXAMPLES=0",
    "--gin.EVAL_EVERY=None",
    "--gin.MIXTURE_OR_TASK_NAME='demo_sort'",
)


def two_processes(model_dir, cache_dir, sigterm_after=(None, None)) -> list[str]:
    """Trains to STEPS in processes 0 and 1; process i sends itself SIGTERM after step
    `sigterm_after[i]` (None: never). Returns their outputs once both exited 0."""
    command = [sys.executable, WRAPPER, *train_command(model_dir, STEPS, *BINDINGS)[3:]]
    command += [f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2"]
    env = {
        # The restarts load the compiled steps instead of compiling them again.
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return run_both(
        [command + [f"--process_id={i}"] for i in range(2)],
        [
            env if step is None else {**env, "SIGTERM_AFTER_STEP": str(step)}
            for step in sigterm_after
        ],
        timeout=600,
    )


def run_both(commands, envs, timeout) -> list[str]:
    """Runs the two processes' commands, 2 CPU devices each; returns their outputs once both
    exited 0, fails if one is still running after `timeout` seconds (a hang)."""
    procs = []
    try:
        for command, env in zip(commands, envs):
            output = tempfile.TemporaryFile("w+")  # a full pipe would stall the other process
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env={**device_env(2), "PYTHONPATH": REPO, **env},
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
            procs.append((proc, output))
        outputs = []
        for proc, output in procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {len(outputs)} still running after {timeout} s: a hang")
            output.seek(0)
            outputs.append(output.read())
            assert proc.returncode == 0, outputs[-1][-3000:]
        return outputs
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def committed_steps(model_dir) -> list[int]:
    return sorted(int(n) for n in os.listdir(model_dir / "checkpoints") if n.isdigit())


def started_at(output: str) -> int:
    return int(re.search(r"model_dir .*: starting at step (\d+) of", output).group(1))


@pytest.mark.slow
def test_a_notice_on_one_or_both_processes_stops_both_after_the_same_step(tmp_path):
    cache = tmp_path / "jax_cache"
    two_processes(tmp_path / "straight", cache)
    model_dir = tmp_path / "preempted"

    # Process 1 alone is told, after step 2: the flags of step 2 are read after step 3.
    outputs = two_processes(model_dir, cache, sigterm_after=(None, 2))
    assert "SIGTERM received" not in outputs[0]
    assert "process 1: SIGTERM received" in outputs[1]
    for output in outputs:
        assert "checkpoint at step 3 saved after SIGTERM; exiting." in output
    assert committed_steps(model_dir) == [3]

    # Both are told, process 0 after step 4 and process 1 after step 5: both stop after 5.
    outputs = two_processes(model_dir, cache, sigterm_after=(4, 5))
    for process, output in enumerate(outputs):
        assert started_at(output) == 3
        assert f"process {process}: SIGTERM received" in output
        assert "checkpoint at step 5 saved after SIGTERM; exiting." in output
        assert "saved after SIGTERM" not in output.replace("step 5 saved after SIGTERM", "")
    assert committed_steps(model_dir) == [3, 5]

    outputs = two_processes(model_dir, cache)
    assert [started_at(output) for output in outputs] == [5, 5]
    assert committed_steps(model_dir) == [3, 5, STEPS]
    straight = logged_losses(tmp_path / "straight")
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert logged_losses(model_dir) == straight


@pytest.mark.parametrize(
    "scenario, raised, saved",
    [
        # Process 1 alone is told: the flags combined after step 2 are read after step 3.
        ("sigterm", None, [3]),
        # Only process 1's rows of batch 3 are NaN; `finite` is computed over the global
        # batch and replicated, so both read 0 for step 3 and raise without saving.
        ("nonfinite", "NonFiniteLossError", []),
    ],
)
def test_a_stop_raised_on_one_process_stops_both_after_the_same_step(
    tmp_path, scenario, raised, saved
):
    address = f"127.0.0.1:{free_port()}"
    outputs = run_both(
        [[sys.executable, WORKER, str(tmp_path), address, str(i), scenario] for i in range(2)],
        [{}, {}],
        timeout=300,
    )
    results = [json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1)) for out in outputs]
    assert results == [{"stopped_after": 3, "raised": raised, "saved": saved}] * 2, outputs
