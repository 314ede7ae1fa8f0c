"""Adafactor and learning-rate schedules, as the paper finetuned with (constant LR)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flan_jax.models import scan

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
    """optax's Adafactor with T5X's defaults (factored second moments, update clipping 1.0),
    where a scanned stack's leading `layers` axis is a batch axis.

    optax factors the two largest dims of each array and takes the RMS of the update (for
    clipping) and of the parameter (for its scale) over the whole array; over a stacked
    [layers, ...] array that mixes the layers. Here those three are per layer, as T5X's factor
    rules treat `layers`, so a scanned model takes the updates of the unscanned one. The
    state is optax's (same tree, same shapes wherever optax's factoring already agreed), so
    checkpoints and T5X optimizer state carry over.
    """
    tx = [_scale_by_factored_rms(decay_rate, min_dim_size_to_factor)]
    if clipping_threshold is not None:
        tx.append(_per_layer(lambda u, _, axes: u / _clip_denominator(u, axes, clipping_threshold)))
    tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(_per_layer(lambda u, p, axes: u * _parameter_scale(p, axes)))
    if momentum is not None:
        tx.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate))
    tx.append(optax.scale(-1))
    return optax.chain(*tx)


# Adafactor's constants, as optax (and T5X) set them.
_EPSILON = 1e-30  # added to squared gradients
_MIN_PARAMETER_SCALE = 1e-3


def factored_axes(shape: tuple[int, ...], stacked: bool) -> tuple[int, int]:
    """(d1, d0): the second-largest and largest dims (ties: the later one is larger), which
    Adafactor factors (v_row drops d0, v_col d1); a stacked array's layer axis never counts."""
    first = 1 if stacked else 0
    d1, d0 = np.argsort(shape[first:], kind="stable")[-2:] + first
    return int(d1), int(d0)


def _factored(shape, stacked, min_dim_size_to_factor) -> tuple[int, int] | None:
    """factored_axes where each layer's array has two dims of at least min_dim_size_to_factor."""
    if len(shape) - stacked < 2:
        return None
    d1, d0 = factored_axes(shape, stacked)
    return (d1, d0) if shape[d1] >= min_dim_size_to_factor else None


def _layer_axes(x, stacked: bool) -> tuple[int, ...] | None:
    """The axes an RMS of x averages over: all (None), or all but a stack's layer axis."""
    return tuple(range(1, x.ndim)) if stacked else None


def _rms(x, axes):
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def _clip_denominator(update, axes, threshold):
    return jnp.maximum(1.0, _rms(update, axes) / threshold)


def _parameter_scale(param, axes):
    """max(RMS(param), 1e-3), with optax's guard that keeps the gradient finite at 0."""
    small = _rms(param, axes) <= _MIN_PARAMETER_SCALE
    return jnp.where(small, _MIN_PARAMETER_SCALE, _rms(jnp.where(small, 1.0, param), axes))


def _stacked(tree):
    return jax.tree_util.tree_map_with_path(lambda path, _: scan.is_stacked(path), tree)


def _per_layer(fn) -> optax.GradientTransformation:
    """A stateless transformation fn(update, param, axes) of each leaf, where axes are those
    its RMS statistics average over (each layer's own, for a scanned stack)."""

    def update(updates, state, params=None):
        updates = jax.tree.map(
            lambda u, p, stacked: fn(u, p, _layer_axes(u, stacked)),
            updates,
            params if params is not None else updates,
            _stacked(updates),
        )
        return updates, state

    return optax.GradientTransformation(optax.init_empty_state, update)


@dataclasses.dataclass(frozen=True)
class _Moments:
    """One leaf's update and second moments; a leaf to jax.tree (it is no registered pytree)."""

    update: jax.Array
    v_row: jax.Array
    v_col: jax.Array
    v: jax.Array


def _scale_by_factored_rms(decay_rate: float, min_dim_size_to_factor: int):
    """optax.scale_by_factored_rms (its state, its arithmetic) with a stack's layer axis left
    out of the factored dims: optax's own may factor over the layers."""

    def init(params):
        def leaf(param, stacked):
            placeholder = jnp.zeros((1,), param.dtype)
            dims = _factored(param.shape, stacked, min_dim_size_to_factor)
            if dims is None:
                return _Moments(placeholder, placeholder, placeholder, jnp.zeros_like(param))
            row, col = (jnp.zeros(_without(param.shape, d), param.dtype) for d in dims[::-1])
            return _Moments(placeholder, row, col, placeholder)

        return _state(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params, _stacked(params)))

    def update(grads, state, params=None):
        decay = 1.0 - (state.count.astype(jnp.float32) + 1.0) ** -decay_rate

        def leaf(grad, v_row, v_col, v, stacked):
            grad_sqr = jnp.square(grad) + _EPSILON
            dims = _factored(grad.shape, stacked, min_dim_size_to_factor)
            if dims is None:
                v = (decay * v + (1.0 - decay) * grad_sqr).astype(v.dtype)
                # Fresh (1,) placeholders, as optax's: passing the old ones through would keep
                # them live arguments of the train step (each a padded tile on a TPU).
                return _Moments(grad * v**-0.5, jnp.zeros_like(v_row), jnp.zeros_like(v_col), v)
            d1, d0 = dims
            state_dtype = v_row.dtype  # the parameter's, as optax keeps it
            v_row = decay * v_row + (1.0 - decay) * jnp.mean(grad_sqr, axis=d0)
            v_col = decay * v_col + (1.0 - decay) * jnp.mean(grad_sqr, axis=d1)
            v_row, v_col = v_row.astype(state_dtype), v_col.astype(state_dtype)
            row_mean = jnp.mean(v_row, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
            row_factor = jnp.expand_dims((v_row / row_mean) ** -0.5, d0)
            update = grad * row_factor * jnp.expand_dims(v_col**-0.5, d1)
            return _Moments(update, v_row, v_col, jnp.zeros_like(v))

        out = jax.tree.map(leaf, grads, state.v_row, state.v_col, state.v, _stacked(grads))
        updates = jax.tree.map(lambda m: m.update, out)
        return updates, _state(optax.safe_increment(state.count), out)

    return optax.GradientTransformation(init, update)


def _without(shape, axis) -> tuple[int, ...]:
    return tuple(n for i, n in enumerate(shape) if i != axis)


def _state(count, moments) -> optax.FactoredState:
    return optax.FactoredState(
        count=count,
        v_row=jax.tree.map(lambda m: m.v_row, moments),
        v_col=jax.tree.map(lambda m: m.v_col, moments),
        v=jax.tree.map(lambda m: m.v, moments),
    )
