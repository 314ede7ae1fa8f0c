"""The flan_jax side of the benchmarks: the real Trainer's jitted train step and the model's
greedy decoding, on a mesh of this process's devices, as `flan_jax.train` builds them."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping

import jax
import numpy as np

from flan_jax import cli, flops, model_loader, optim, partitioning
from flan_jax.data import place
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.models.t5 import T5Config
from flan_jax.trainer import Trainer

# Adafactor as T5X finetunes: factored second moments, decay 0.8, update clipping 1.0,
# parameter-scaled updates, constant learning rate.
LEARNING_RATE = 1e-3


def partitioner() -> partitioning.Partitioner:
    return partitioning.Partitioner(partitioning.create_mesh(), partitioning.logical_axis_rules())


def train_step_runner(config: T5Config, batch: Mapping[str, np.ndarray], seed: int = 0):
    """(info, run, initial params): info has the compile time, the first step's
    cross-entropy (at the initial params) and the step's model FLOPs
    (`flops.train_flops_per_sequence` x batch size); run() times one more step on the same
    batch."""
    trainer = Trainer(EncoderDecoderModel(config), optim.adafactor(LEARNING_RATE), partitioner())
    state = trainer.create_state(jax.random.key(seed))
    initial_params = jax.tree.map(np.asarray, state.params)
    device_batch = place(batch, trainer.partitioner.batch_sharding())
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, device_batch)
    metrics = jax.device_get(metrics)
    rows, inputs = batch["encoder_input_tokens"].shape
    lengths = {"inputs": inputs, "targets": batch["decoder_target_tokens"].shape[1]}
    info = {
        "compile_and_first_step_s": time.perf_counter() - start,
        "first_cross_entropy": float(metrics["cross_entropy"]),
        "devices": [d.device_kind for d in jax.devices()],
        "step_flops": rows * flops.train_flops_per_sequence(config, lengths),
    }

    def run():
        nonlocal state
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(trainer.train_step(state, device_batch))
        return {"seconds": time.perf_counter() - start, "loss": float(metrics["loss"])}

    return info, run, initial_params


def t5_config(size: str) -> T5Config:
    """The T5 v1.1 config of gin/models/t5_1_1/SIZE.gin, with the T5 vocabulary (32128) for
    every size, so sizes differ only in their layers."""
    gin_file = os.path.join(cli.GIN_DIR, "models", "t5_1_1", f"{size}.gin")
    model, _ = model_loader.model_from_gin_file(gin_file)
    return dataclasses.replace(model.config, vocab_size=T5Config().vocab_size, dropout_rate=0.0)
