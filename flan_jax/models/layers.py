"""Transformer building blocks with logical axis names on params and activations.

Params are created through `nn.with_logical_partitioning`, so `init` returns
`nn.LogicallyPartitioned` leaves whose names the partitioner maps to mesh axes;
activations carry `nn.with_logical_constraint` hints (no-ops without axis rules).
Axis names: batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Added to attention logits where the mask is False. Finite, so a fully masked row
# (a padding query) gives a uniform softmax instead of NaN.
MASK_BIAS = -1e10


def _normalize_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(a % ndim for a in axes)


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
        contract = (axis, tuple(range(n_in)))
        return jax.lax.dot_general(inputs, kernel, (contract, ((), ())))


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
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        return y * jnp.asarray(scale, self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; lookup returns activations in `dtype`."""

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
        embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )
        return jnp.take(jnp.asarray(embedding, self.dtype), tokens, axis=0)


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
    def __call__(self, query_len: int, key_len: int, query_offset: jax.Array | None = None):
        """Bias [1, heads, query_len, key_len] for queries at positions
        query_offset + arange(query_len) (query_offset: traced scalar, for cached
        decoding) and keys at arange(key_len)."""
        bucket_fn = lambda rel: relative_position_bucket(
            rel,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        if query_offset is None:
            relative = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
            buckets = jnp.asarray(bucket_fn(relative))
        else:
            # Buckets of every relative position -(key_len-1) .. key_len-1; the row of a
            # query at position q is the key_len-long window starting at key_len-1-q.
            table = jnp.asarray(bucket_fn(np.arange(-(key_len - 1), key_len)))
            row = lambda q: jax.lax.dynamic_slice_in_dim(table, key_len - 1 - q, key_len)
            buckets = jax.vmap(row)(query_offset + jnp.arange(query_len))
        embedding = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets"),
            ),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        values = jnp.take(jnp.asarray(embedding, self.dtype), buckets, axis=1)
        return values[None]


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """Boolean attention mask -> additive float32 bias (0 where allowed)."""
    return jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """[B, 1, Q, K]: True where query and key belong to the same packed example."""
    return (query_segments[:, None, :, None] == key_segments[:, None, None, :])


class MultiHeadAttention(nn.Module):
    """T5 attention: no 1/sqrt(head_dim) on the logits; caller supplies the additive bias.

    Incremental decoding (decode=True) keeps state in the "cache" collection:
    - self-attention: cached_key/cached_value [B, max_decode_length, heads, kv];
      each step writes the new key/value at `decode_index`.
    - cross-attention (cross_attention=True): the projected encoder keys/values, computed
      once so decoding steps do not redo the encoder-length projections.
    The first decode=True call (apply with mutable=["cache"]) only creates the cache;
    its outputs are an ordinary non-cached pass over the given inputs.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    cross_attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        bias: jax.Array,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
        decode_index: jax.Array | None = None,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        projection = lambda name, scale=1.0: DenseGeneral(
            (self.num_heads, self.head_dim),
            kernel_axes=("embed", "heads", "kv"),
            kernel_scale=scale,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        head_axes = ("batch", "length", "heads", "kv")
        query = nn.with_logical_constraint(
            projection("query", 1.0 / self.head_dim)(inputs_q), head_axes
        )

        if decode and self.cross_attention:
            key, value = self._cached_cross_kv(projection, inputs_kv)
        else:
            key = nn.with_logical_constraint(projection("key")(inputs_kv), head_axes)
            value = nn.with_logical_constraint(projection("value")(inputs_kv), head_axes)
            if decode:
                key, value = self._update_self_cache(key, value, decode_index, max_decode_length)

        logits = jnp.einsum(
            "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
        )
        weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not enable_dropout)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value)
        out = nn.with_logical_constraint(out, head_axes)
        out = DenseGeneral(
            inputs_q.shape[-1],
            kernel_axes=("heads", "kv", "embed"),
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def _cached_cross_kv(self, projection, inputs_kv):
        if self.has_variable("cache", "cached_key"):
            cached = lambda name: self.get_variable("cache", name)
            return cached("cached_key"), cached("cached_value")
        key = projection("key")(inputs_kv)
        value = projection("value")(inputs_kv)
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
        return key, value

    def _update_self_cache(self, key, value, decode_index, max_decode_length):
        initializing = not self.has_variable("cache", "cached_key")
        if initializing and max_decode_length is None:
            raise ValueError("decode=True needs max_decode_length to size the KV cache")
        cache_shape = (key.shape[0], max_decode_length, self.num_heads, self.head_dim)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
        if initializing:
            return key, value
        if key.shape[1] != 1:
            raise ValueError(f"cached decoding takes one token per step, got length {key.shape[1]}")
        start = (0, decode_index, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        return cached_key.value, cached_value.value


class GatedGeluMlp(nn.Module):
    """T5 v1.1 feed-forward: wo(gelu_tanh(wi_0 x) * wi_1 x), with dropout on the hidden."""

    d_ff: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, enable_dropout: bool = False) -> jax.Array:
        dense = lambda features, axes, name: DenseGeneral(
            features, kernel_axes=axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        gate = jax.nn.gelu(dense(self.d_ff, ("embed", "mlp"), "wi_0")(x), approximate=True)
        hidden = gate * dense(self.d_ff, ("embed", "mlp"), "wi_1")(x)
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not enable_dropout)
        out = dense(x.shape[-1], ("mlp", "embed"), "wo")(hidden)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))
