"""Adafactor as T5X runs it, and the learning-rate schedules the paper finetuned with."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flan_jax.axis_names import HEADS, KV, LAYERS
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
    step_offset: int = 0,
    clipping_threshold: float | None = 1.0,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    multiply_by_parameter_scale: bool = True,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    param_axes: Any = None,
) -> AxisAwareTransformation:
    """T5X's Adafactor (t5x/adafactor.py, as its t5_1_1 gins set it) as an optax
    transformation whose state is optax's (`FactoredState`, so checkpoints carry over).

    Each parameter is factored as T5X factors the array it stores (`factoring`): by its
    logical axes, `param_axes` (a tree of PartitionSpecs like `nn.get_partition_spec`'s; the
    Trainer passes the model's, as T5X's `set_param_axes`). They name the two things T5X's
    layout differs in: a scanned stack's `layers` axis, a batch axis (parameter scale,
    update clipping and factoring are per layer), and an attention kernel's `heads` x `kv`,
    one `joined_kv` dimension in T5X. Without them, arrays of more than two dims per layer
    are refused, as T5X refuses them without factor rules.

    `decay_rate`: the second moments decay by 1 - (count - step_offset + 1)^-decay_rate,
    count being the optimizer's step (a continued T5X checkpoint's, e.g. 1,100,000).
    `factored=False` keeps full second moments for every parameter (PaLM's choice).
    """

    def build(axes) -> optax.GradientTransformation:
        plans = functools.partial(
            _factorings,
            param_axes=axes,
            min_dim_size_to_factor=min_dim_size_to_factor,
            factored=factored,
        )
        tx = [_scale_by_factored_rms(decay_rate, step_offset, plans)]
        if clipping_threshold is not None:
            tx.append(_per_layer(functools.partial(_clip, threshold=clipping_threshold), plans))
        tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
        if multiply_by_parameter_scale:
            tx.append(_per_layer(lambda u, p, axes: u * _parameter_scale(p, axes), plans))
        if momentum is not None:
            tx.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
        if weight_decay_rate is not None:
            tx.append(optax.add_decayed_weights(weight_decay_rate))
        tx.append(optax.scale(-1))
        return optax.chain(*tx)

    return AxisAwareTransformation(build, param_axes)


@dataclasses.dataclass(frozen=True, eq=False)
class AxisAwareTransformation:
    """An optax transformation (init, update) built for the parameters' logical axes;
    `for_params` gives the same one for a model's axes."""

    build: Callable[[Any], optax.GradientTransformation]
    param_axes: Any = None

    @functools.cached_property
    def _transform(self) -> optax.GradientTransformation:
        return self.build(self.param_axes)

    def init(self, params):
        return self._transform.init(params)

    def update(self, updates, state, params=None):
        return self._transform.update(updates, state, params)


def for_params(optimizer, param_axes: Any):
    """`optimizer` for parameters with logical axes `param_axes` (PartitionSpecs): an
    AxisAwareTransformation built for them, any other optax transformation as it is."""
    if isinstance(optimizer, AxisAwareTransformation):
        return dataclasses.replace(optimizer, param_axes=param_axes)
    return optimizer


# Adafactor's constants, as T5X (epsilon1, epsilon2) and optax set them.
_EPSILON = 1e-30  # added to squared gradients
_MIN_PARAMETER_SCALE = 1e-3


@dataclasses.dataclass(frozen=True)
class Factoring:
    """How Adafactor treats one array: the dims its RMS statistics (parameter scale, update
    clipping) average over, None for all; and, if factored, the dims of its second moment
    that v_row keeps (`rows`, T5X's d1) and those v_col keeps (`columns`, d0)."""

    averaged: tuple[int, ...] | None
    rows: tuple[int, ...] = ()
    columns: tuple[int, ...] = ()

    def row_shape(self, shape) -> tuple[int, ...]:
        return tuple(n for i, n in enumerate(shape) if i not in self.columns)

    def column_shape(self, shape) -> tuple[int, ...]:
        return tuple(n for i, n in enumerate(shape) if i not in self.rows)


def factoring(
    shape: tuple[int, ...],
    axes: tuple[str | None, ...] | None = None,
    *,
    stacked: bool = False,
    factored: bool = True,
    min_dim_size_to_factor: int = 0,
    name: str = "parameter",
) -> Factoring:
    """T5X's factoring of an array of `shape` with logical `axes` (None: unnamed, and
    `stacked` says whether its leading axis is a scanned stack's layers).

    T5X stores each layer's arrays with at most two dims (attention kernels
    [embed, heads * kv]) and factors those by its heuristic (its factor rules fall back to
    it for arrays of rank <= 2): the larger of the two is averaged out of v_row (ties: the
    second), and an array whose smaller dim is below `min_dim_size_to_factor` is not
    factored. Here a stack's `layers` axis is left out, and `heads` followed by `kv` count
    as the one dim T5X stores, so v_row and v_col are T5X's, reshaped.
    """
    names = (None,) * len(shape) if axes is None else tuple(axes)
    names += (None,) * (len(shape) - len(names))
    batch = {i for i, n in enumerate(names) if n == LAYERS} if axes is not None else set()
    if stacked:
        batch.add(0)
    dims = [i for i in range(len(shape)) if i not in batch]
    averaged = tuple(dims) if batch else None
    groups: list[tuple[int, ...]] = []  # T5X's dims, as our dims
    for i in dims:
        if groups and groups[-1] == (i - 1,) and (names[i - 1], names[i]) == (HEADS, KV):
            groups[-1] = (i - 1, i)  # T5X's joined_kv
        else:
            groups.append((i,))
    if not factored or len(groups) < 2:
        return Factoring(averaged)
    if len(groups) > 2:
        raise ValueError(
            f"{name} of shape {tuple(shape)} with logical axes {names} has {len(groups)} dims "
            "per layer as T5X would store it; Adafactor factors at most two, as T5X does "
            "without factor rules. Give it the parameters' logical axes "
            "(adafactor(param_axes=nn.get_partition_spec(...)); Trainer does) or name its axes"
        )
    sizes = [math.prod(shape[d] for d in g) for g in groups]
    rows, columns = groups if sizes[0] <= sizes[1] else groups[::-1]
    if min(sizes) < min_dim_size_to_factor:
        return Factoring(averaged)
    return Factoring(averaged, rows, columns)


def _factorings(tree, *, param_axes, min_dim_size_to_factor, factored):
    """Each leaf's Factoring: by `param_axes` where given, else by its path (a leaf under a
    scanned stack has a leading layers axis)."""

    def leaf(path, x, axes=None):
        return factoring(
            x.shape,
            None if axes is None else tuple(axes),
            stacked=param_axes is None and scan.is_stacked(path),
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
            name=jax.tree_util.keystr(path),
        )

    if param_axes is None:
        return jax.tree_util.tree_map_with_path(leaf, tree)
    return jax.tree_util.tree_map_with_path(leaf, tree, param_axes)


def _rms(x, axes):
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def _clip(update, _, axes, threshold):
    return update / jnp.maximum(1.0, _rms(update, axes) / threshold)


def _parameter_scale(param, axes):
    """max(RMS(param), 1e-3), with optax's guard that keeps the gradient finite at 0."""
    small = _rms(param, axes) <= _MIN_PARAMETER_SCALE
    return jnp.where(small, _MIN_PARAMETER_SCALE, _rms(jnp.where(small, 1.0, param), axes))


def _per_layer(fn, plans) -> optax.GradientTransformation:
    """A stateless transformation fn(update, param, axes) of each leaf, where axes are those
    its RMS statistics average over (each layer's own, for a scanned stack)."""

    def update(updates, state, params=None):
        updates = jax.tree.map(
            lambda u, p, plan: fn(u, p, plan.averaged),
            updates,
            params if params is not None else updates,
            plans(updates),
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


def _scale_by_factored_rms(decay_rate: float, step_offset: int, plans):
    """optax.scale_by_factored_rms's state and arithmetic (which are T5X's), factored by
    each leaf's Factoring."""

    def init(params):
        def leaf(param, plan):
            placeholder = jnp.zeros((1,), param.dtype)
            if not plan.rows:
                return _Moments(placeholder, placeholder, placeholder, jnp.zeros_like(param))
            row, col = (
                jnp.zeros(s(param.shape), param.dtype) for s in (plan.row_shape, plan.column_shape)
            )
            return _Moments(placeholder, row, col, placeholder)

        return _state(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params, plans(params)))

    def update(grads, state, params=None):
        step = state.count.astype(jnp.float32) - step_offset
        decay = 1.0 - (step + 1.0) ** -decay_rate

        def leaf(grad, v_row, v_col, v, plan):
            grad_sqr = jnp.square(grad) + _EPSILON
            if not plan.rows:
                v = (decay * v + (1.0 - decay) * grad_sqr).astype(v.dtype)
                # Fresh (1,) placeholders, as optax's: passing the old ones through would keep
                # them live arguments of the train step (each a padded tile on a TPU).
                return _Moments(grad * v**-0.5, jnp.zeros_like(v_row), jnp.zeros_like(v_col), v)
            rows, columns = plan.rows, plan.columns
            state_dtype = v_row.dtype  # the parameter's, as optax keeps it
            v_row = decay * v_row + (1.0 - decay) * jnp.mean(grad_sqr, axis=columns)
            v_col = decay * v_col + (1.0 - decay) * jnp.mean(grad_sqr, axis=rows)
            v_row, v_col = v_row.astype(state_dtype), v_col.astype(state_dtype)
            # v_row's own dims: each row dim shifted past the column dims before it.
            kept = tuple(d - sum(c < d for c in columns) for d in rows)
            row_mean = jnp.mean(v_row, axis=kept, keepdims=True)
            row_factor = jnp.expand_dims((v_row / row_mean) ** -0.5, columns)
            update = grad * row_factor * jnp.expand_dims(v_col**-0.5, rows)
            return _Moments(update, v_row, v_col, jnp.zeros_like(v))

        out = jax.tree.map(leaf, grads, state.v_row, state.v_col, state.v, plans(grads))
        updates = jax.tree.map(lambda m: m.update, out)
        return updates, _state(optax.safe_increment(state.count), out)

    return optax.GradientTransformation(init, update)


def _state(count, moments) -> optax.FactoredState:
    return optax.FactoredState(
        count=count,
        v_row=jax.tree.map(lambda m: m.v_row, moments),
        v_col=jax.tree.map(lambda m: m.v_col, moments),
        v=jax.tree.map(lambda m: m.v, moments),
    )
