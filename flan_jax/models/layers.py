"""Transformer building blocks with logical axis names on params and activations.

Params are created through `nn.with_logical_partitioning`, so `init` returns
`nn.LogicallyPartitioned` leaves whose names the partitioner maps to mesh axes;
activations carry `nn.with_logical_constraint` hints (no-ops without axis rules).
Axis names: batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets.
"""

import functools
import math
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



def check_dtypes(config) -> None:
    """Model configs name their dtypes as strings (gin-friendly); only these two are supported."""
    for field in ("dtype", "param_dtype"):
        name = getattr(config, field)
        if name not in ("float32", "bfloat16"):
            raise ValueError(f"{type(config).__name__}.{field}={name!r}: use 'float32' or 'bfloat16'")


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
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
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
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
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

    Incremental decoding (decode=True) keeps state in the "cache" collection, head-major
    ([B, heads, length, kv]) so that each step's two attention dots read it in place; a
    length-major cache costs a transpose of every layer's keys and values per step:
    - self-attention: cached_key/cached_value [B, heads, max_decode_length, kv];
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
                key, value = self._update_self_cache(
                    _heads_major(key), _heads_major(value), decode_index, max_decode_length
                )

        kv = "bhkd" if decode else "bkhd"
        logits = jnp.einsum(
            f"bqhd,{kv}->bhqk", query, key, preferred_element_type=jnp.float32
        )
        weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not enable_dropout)
        out = jnp.einsum(f"bhqk,{kv}->bqhd", weights.astype(self.dtype), value)
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
        key = _heads_major(projection("key")(inputs_kv))
        value = _heads_major(projection("value")(inputs_kv))
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
        return key, value

    def _update_self_cache(self, key, value, decode_index, max_decode_length):
        initializing = not self.has_variable("cache", "cached_key")
        if initializing and max_decode_length is None:
            raise ValueError("decode=True needs max_decode_length to size the KV cache")
        cache_shape = (key.shape[0], self.num_heads, max_decode_length, self.head_dim)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
        if initializing:
            return key, value
        if key.shape[2] != 1:
            raise ValueError(f"cached decoding takes one token per step, got length {key.shape[2]}")
        start = (0, 0, decode_index, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        return cached_key.value, cached_value.value


def _heads_major(x: jax.Array) -> jax.Array:
    """[B, length, heads, kv] -> [B, heads, length, kv], the layout of decoding caches."""
    return x.transpose(0, 2, 1, 3)


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


class MultiQueryAttention(nn.Module):
    """PaLM self-attention: `num_heads` query heads share one key/value head.

    The single K/V head makes the KV cache num_heads times smaller, which is what makes
    large-batch decoding affordable. Queries and keys are rotated by RoPE at `positions`
    and logits are scaled by 1/sqrt(head_dim); the caller supplies the additive mask bias.

    decode=True keeps cached_key/cached_value [B, max_decode_length, kv] (rotated keys) in
    the "cache" collection. The call that creates the cache stores the keys/values of all
    its T inputs at positions 0..T-1 (prefilling a prompt) and attends as a non-cached
    pass would; each later call takes one token per row and writes it at that row's
    position `decode_index` [B] before attending.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    rope_max_wavelength: float = 10_000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        bias: jax.Array,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
        decode_index: jax.Array | None = None,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        dense = lambda features, axes, name, **kw: DenseGeneral(
            features, axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw
        )
        query = dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"), "query")(x)
        key = dense(self.head_dim, ("embed", "kv"), "key")(x)
        value = dense(self.head_dim, ("embed", "kv"), "value")(x)
        query = apply_rope(query, positions, self.rope_max_wavelength) * self.head_dim**-0.5
        key = apply_rope(key, positions, self.rope_max_wavelength)
        query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
        key = nn.with_logical_constraint(key, ("batch", "length", "kv"))
        value = nn.with_logical_constraint(value, ("batch", "length", "kv"))
        if decode:
            key, value = self._update_cache(key, value, decode_index, max_decode_length)

        logits = jnp.einsum("bqhd,bkd->bhqk", query, key, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not enable_dropout)
        out = jnp.einsum("bhqk,bkd->bqhd", weights.astype(self.dtype), value)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = dense(x.shape[-1], ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def _update_cache(self, key, value, decode_index, max_decode_length):
        initializing = not self.has_variable("cache", "cached_key")
        batch, length, _ = key.shape
        if initializing:
            if max_decode_length is None or length > max_decode_length:
                raise ValueError(
                    f"the KV cache needs max_decode_length >= the {length} prefilled tokens, "
                    f"got max_decode_length={max_decode_length}"
                )
            shape = (batch, max_decode_length, self.head_dim)
            for name, new in (("cached_key", key), ("cached_value", value)):
                prefilled = lambda new=new: jax.lax.dynamic_update_slice(
                    jnp.zeros(shape, new.dtype), new, (0, 0, 0)
                )
                self.variable("cache", name, prefilled)
            return key, value
        if length != 1:
            raise ValueError(f"cached decoding takes one token per step, got length {length}")
        cache_length = self.get_variable("cache", "cached_key").shape[1]
        at_index = (jnp.arange(cache_length)[None, :] == decode_index[:, None])[..., None]
        updated = []
        for name, new in (("cached_key", key), ("cached_value", value)):
            cached = self.variable("cache", name)
            cached.value = jnp.where(at_index, new, cached.value)
            updated.append(cached.value)
        return tuple(updated)


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
            raise ValueError(
                f"activation={self.activation!r} is not one of {sorted(_ACTIVATIONS)}"
            )
        dense = lambda features, axes, name: DenseGeneral(
            features, kernel_axes=axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        gate = _ACTIVATIONS[self.activation](dense(self.d_ff, ("embed", "mlp"), "wi_0")(x))
        hidden = gate * dense(self.d_ff, ("embed", "mlp"), "wi_1")(x)
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not enable_dropout)
        out = dense(x.shape[-1], ("mlp", "embed"), "wo")(hidden)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class GatedGeluMlp(GatedMlp):
    """T5 v1.1's feed-forward: the gated MLP with tanh-approximated GELU."""

    activation: str = "gelu_tanh"
