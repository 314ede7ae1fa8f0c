"""Helpers shared by the tests that train: run commands, in-process runs, small trainers."""

import os
import signal
import socket
import subprocess
import sys
import tempfile

import gin
import jax
import numpy as np
import pytest
import tensorflow as tf

from flan_jax import cli, optim, partitioning, train
from flan_jax.models import base
from flan_jax.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--gin_file=gin/runs/demo.gin",
    "--gin.BATCH_SIZE=8",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}",
    "--gin.CHECKPOINT_EVERY=2",
    "--gin.LOG_EVERY=1",
]


def train_command(model_dir, steps, *bindings):
    return [
        sys.executable,
        "-m",
        "flan_jax.train",
        *SMALL,
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.PREDICT_EVAL=False",
        *bindings,
    ]


def device_env(count: int) -> dict:
    """The environment of a process with `count` CPU devices."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(model_dir, steps, *bindings, processes=1, devices=4):
    """Starts training in `processes` processes on 127.0.0.1 (jax.distributed), `devices` CPU
    devices in all; returns [(process, output file)]. Outputs go to files: a process blocked
    on a full pipe would stall the others at their next collective."""
    command = train_command(model_dir, steps, *bindings)
    if processes > 1:
        address = f"127.0.0.1:{free_port()}"
        command += [f"--coordinator_address={address}", f"--num_processes={processes}"]
    started = []
    for i in range(processes):
        output = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(
            command + ([f"--process_id={i}"] if processes > 1 else []),
            cwd=REPO,
            env=device_env(devices // processes),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append((proc, output))
    return started


def train_processes(model_dir, steps, *bindings, processes=1, devices=4, timeout=900) -> list[str]:
    """Trains as `start_processes` starts it; returns each process's output, after checking
    that all exited 0."""
    texts = []
    for proc, output in start_processes(
        model_dir, steps, *bindings, processes=processes, devices=devices
    ):
        proc.wait(timeout=timeout)
        output.seek(0)
        texts.append(output.read())
        assert proc.returncode == 0, texts[-1][-3000:]
    return texts


def kill_at_step(model_dir, steps, at, *bindings) -> None:
    """Starts training to `steps` and SIGKILLs it as it prints step `at`."""
    proc = subprocess.Popen(
        train_command(model_dir, steps, *bindings),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=device_env(4),
    )
    for line in proc.stdout:
        if line.startswith(f"step {at}/"):
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def logged_losses(model_dir) -> dict[int, float]:
    """Per-step training loss from the run's TensorBoard events; a step logged again after a
    restart keeps its latest value."""
    events_dir = os.path.join(model_dir, "train")
    losses = {}
    for name in sorted(
        os.listdir(events_dir), key=lambda n: os.path.getmtime(os.path.join(events_dir, n))
    ):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(events_dir, name)):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = value.simple_value
    return losses


def train_in_process(model_dir, steps, *bindings):
    """Exactly what `python -m flan_jax.train` does, minus the process boundary."""
    gin.clear_config()
    try:
        cli.parse(
            SMALL
            + [
                f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.TRAIN_STEPS={steps}",
                "--gin.PREDICT_EVAL=False",
            ]
            + list(bindings),
            description="test",
        )
        return gin.get_configurable(train.train)()
    finally:
        gin.clear_config()


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def make_trainer(
    config,
    mesh_shape=(8, 1),
    num_microbatches=1,
    learning_rate=1e-2,
    num_slices=1,
    model=None,
    optimizer=None,
    loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
):
    """A T5 trainer on 8 CPU devices; Adafactor unless `optimizer` is given."""
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(mesh_shape=mesh_shape, num_slices=num_slices),
        partitioning.logical_axis_rules(),
    )
    schedule = optim.learning_rate_schedule(learning_rate)
    return Trainer(
        model or base.EncoderDecoderModel(config),
        optimizer or optim.adafactor(schedule, min_dim_size_to_factor=16),
        partitioner,
        learning_rate_fn=schedule,
        num_microbatches=num_microbatches,
        loss_normalizing_factor=loss_normalizing_factor,
    )


def run_steps(trainer, batch, steps):
    state = trainer.create_state(jax.random.key(0))
    batch = jax.device_put(batch, trainer.partitioner.batch_sharding())
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, metrics


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
