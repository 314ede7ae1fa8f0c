"""Adafactor and learning-rate schedules, as the paper finetuned with (constant LR)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt")


def learning_rate_schedule(
    base_learning_rate: float, *, decay: str = "constant", warmup_steps: int = 0
) -> optax.Schedule:
    """Linear warmup to `base_learning_rate`, then constant or decaying as 1/sqrt(step).

    `rsqrt` is T5's pretraining schedule: base_lr * sqrt(warmup / step) after warmup, so the
    curve is continuous at the end of warmup.
    """
    if decay not in SCHEDULES:
        raise ValueError(f"unknown learning-rate decay {decay!r}; choose one of {SCHEDULES}.")
    if decay == "rsqrt" and warmup_steps < 1:
        raise ValueError("decay='rsqrt' needs warmup_steps >= 1 (it scales by sqrt(warmup/step)).")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = jnp.minimum(1.0, (step + 1.0) / warmup_steps) if warmup_steps else 1.0
        lr = base_learning_rate * warmup
        if decay == "rsqrt":
            lr = lr * jnp.sqrt(warmup_steps / jnp.maximum(step + 1.0, warmup_steps))
        return lr

    return schedule


def adafactor(
    learning_rate: float | optax.Schedule,
    *,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    min_dim_size_to_factor: int = 128,
    multiply_by_parameter_scale: bool = True,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
) -> optax.GradientTransformation:
    """optax's Adafactor with T5X's defaults (factored second moments, update clipping 1.0)."""
    return optax.adafactor(
        learning_rate=learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        weight_decay_rate=weight_decay_rate,
    )
