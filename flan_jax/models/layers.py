"""Transformer building blocks with logical axis names on params and activations.

Params are created through `nn.with_logical_partitioning`, so `init` returns
`nn.LogicallyPartitioned` leaves whose names the partitioner maps to mesh axes;
activations carry `nn.with_logical_constraint` hints (no-ops without axis rules).
The names are flan_jax.axis_names' constants. Attention is in models/attention.py.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.axis_names import BATCH, EMBED, HEADS, LENGTH, MLP, RELPOS_BUCKETS, VOCAB

Dtype = Any


def _normalize_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(a % ndim for a in axes)


def check_dtypes(config) -> None:
    """Model configs name their dtypes as strings (gin-friendly); only these two are supported."""
    for field in ("dtype", "param_dtype"):
        name = getattr(config, field)
        if name not in ("float32", "bfloat16"):
            raise ValueError(
                f"{type(config).__name__}.{field}={name!r}: use 'float32' or 'bfloat16'"
            )


def dtypes(config) -> dict:
    """The `dtype` / `param_dtype` keyword arguments of layers, from a model config."""
    return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


class DenseGeneral(nn.Module):
    """Bias-free linear map contracting `axis` of the input into `features`.

    The kernel has shape input_dims[axis] + features and logical names `kernel_axes`.
    It is initialized truncated-normal with variance `kernel_scale / fan_in`, where
    fan_in is the product of the contracted dims (T5X's init; the query projection
    passes kernel_scale = 1/head_dim because T5 has no 1/sqrt(d) in its logits).
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, ...]
    axis: int | tuple[int, ...] = -1
    kernel_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axis = _normalize_axes(self.axis, inputs.ndim)
        kernel_shape = tuple(inputs.shape[a] for a in axis) + features
        if len(kernel_shape) != len(self.kernel_axes):
            raise ValueError(
                f"kernel_axes {self.kernel_axes} must name each of the {len(kernel_shape)} "
                f"kernel dims {kernel_shape}"
            )
        n_in = len(axis)
        init = nn.initializers.variance_scaling(
            self.kernel_scale,
            "fan_in",
            "truncated_normal",
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, len(kernel_shape))),
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.kernel_axes),
            kernel_shape,
            self.param_dtype,
        )
        inputs = jnp.asarray(inputs, self.dtype)
        kernel = jnp.asarray(kernel, self.dtype)
        # One 2-D matmul over all other dims (the contracted ones moved last; they are last
        # in every caller). Its weight gradient then contracts a single dim, which XLA's CPU
        # backend computes in place; contracting (batch, length) it transposed the activations.
        inputs = jnp.moveaxis(inputs, axis, range(inputs.ndim - n_in, inputs.ndim))
        leading = inputs.shape[: inputs.ndim - n_in]
        rows = inputs.reshape(math.prod(leading), -1)
        out = rows @ kernel.reshape(rows.shape[1], -1)
        return out.reshape(leading + features)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, statistics in float32."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = jnp.asarray(x * jax.lax.rsqrt(mean_square + self.epsilon), self.dtype)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        return y * jnp.asarray(scale, self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed], initialized N(0, 1).

    `attend` maps activations back to vocabulary logits with the same table, for models
    that share their input and output embeddings.
    """

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), (VOCAB, EMBED)),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
        return jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """[..., embed] -> [..., vocab] logits: x @ embedding.T."""
        embedding = jnp.asarray(self.embedding, self.dtype)
        return jnp.einsum("...d,vd->...v", jnp.asarray(x, self.dtype), embedding)


def relative_position_bucket(
    relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Maps key_position - query_position to T5's log-spaced buckets.

    Pure numpy on static shapes, in float32 in the order Mesh TF / Hugging Face use:
    some distances (16, 32, 64 with the defaults) fall exactly on a bucket edge, and
    only the same arithmetic puts them in the same bucket as the pretrained models.
    """
    relative_position = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    scaled = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(np.log(max_distance / max_exact))
    large = max_exact + (scaled * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(distance < max_exact, distance, large)
    return buckets.astype(np.int32)


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by relative-position bucket, shared by a stack."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query_len: int, key_len: int, query_positions: jax.Array | None = None):
        """Bias [B, heads, query_len, key_len] (B = 1 by default) for keys at arange(key_len)
        and queries at arange(query_len), or at each row's query_positions [B, query_len]
        (traced, for cached decoding)."""
        bucket_fn = lambda rel: relative_position_bucket(
            rel,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        if query_positions is None:
            relative = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
            buckets = jnp.asarray(bucket_fn(relative))[None]
        else:
            # Buckets of every relative position -(key_len-1) .. key_len-1, indexed by
            # key - query + key_len - 1.
            table = jnp.asarray(bucket_fn(np.arange(-(key_len - 1), key_len)))
            buckets = table[jnp.arange(key_len) - query_positions[..., None] + key_len - 1]
        embedding = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                (HEADS, RELPOS_BUCKETS),
            ),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        values = jnp.take(jnp.asarray(embedding, self.dtype), buckets, axis=1)
        return jnp.moveaxis(values, 0, 1)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary position embedding of x [B, T, ..., D] at integer positions [B, T].

    Rotates the pairs (x[i], x[i + D/2]) by angle position * max_wavelength^(-2i/D), so
    the dot product of a rotated query and key depends only on their relative position.
    Computed in float32, returned in x's dtype.
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"RoPE rotates pairs of features; head dim {dim} must be even")
    half = dim // 2
    inv_frequency = max_wavelength ** (-np.arange(half, dtype=np.float32) / half)
    angle = positions.astype(jnp.float32)[..., None] * inv_frequency
    angle = angle.reshape(angle.shape[:2] + (1,) * (x.ndim - 3) + (half,))
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


_ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}


class GatedMlp(nn.Module):
    """Gated feed-forward wo(act(wi_0 x) * wi_1 x), with dropout on the hidden.

    activation "gelu_tanh" is T5 v1.1's gated GELU, "silu" is PaLM's SwiGLU.
    """

    d_ff: int
    dropout_rate: float = 0.0
    activation: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, enable_dropout: bool = False) -> jax.Array:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(_ACTIVATIONS)}")
        dense = lambda features, axes, name: DenseGeneral(
            features, kernel_axes=axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        gate = _ACTIVATIONS[self.activation](dense(self.d_ff, (EMBED, MLP), "wi_0")(x))
        hidden = gate * dense(self.d_ff, (EMBED, MLP), "wi_1")(x)
        hidden = nn.with_logical_constraint(hidden, (BATCH, LENGTH, MLP))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not enable_dropout)
        out = dense(x.shape[-1], (MLP, EMBED), "wo")(hidden)
        return nn.with_logical_constraint(out, (BATCH, LENGTH, EMBED))


class GatedGeluMlp(GatedMlp):
    """T5 v1.1's feed-forward: the gated MLP with tanh-approximated GELU."""

    activation: str = "gelu_tanh"
