"""Dot-product attention for both model families, and the masks its callers build.

One module covers multi-head (T5), multi-query (PaLM) and grouped-query attention through
`num_kv_heads`; the callers supply every additive bias (padding, causality, packing, T5's
relative positions), so the logits/softmax/output path exists once.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_jax.axis_names import BATCH, EMBED, HEADS, KV, LENGTH
from flan_jax.models.kvcache import KVCache, heads_major
from flan_jax.models.layers import DenseGeneral, Dtype, apply_rope

# Added to attention logits where the mask is False. Finite, so a fully masked row
# (a padding query) gives a uniform softmax instead of NaN.
MASK_BIAS = -1e10


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """Boolean attention mask -> additive float32 bias (0 where allowed)."""
    return jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """[B, 1, Q, K]: True where query and key belong to the same packed example."""
    return query_segments[:, None, :, None] == key_segments[:, None, None, :]


def causal_mask(query_positions: jax.Array, key_length: int) -> jax.Array:
    """[B, 1, Q, K]: True where key position k <= the query's position [B, Q]."""
    return (jnp.arange(key_length) <= query_positions[..., None])[:, None]


class Attention(nn.Module):
    """Attention of `num_heads` query heads over `num_kv_heads` key/value heads.

    num_kv_heads = num_heads is multi-head attention (T5); 1 is multi-query attention
    (PaLM: a num_heads times smaller KV cache, which makes large-batch decoding affordable);
    a divisor in between is grouped-query attention, query heads g*G .. g*G+G-1 sharing
    key/value head g. A single key/value head has no heads axis in its kernels (PaLM's layout).

    scale_logits: PaLM divides the logits by sqrt(head_dim); T5 does not, and folds that
    factor into the query kernel's initialization instead (T5X's init). rope_max_wavelength:
    rotate queries and keys at `positions` (PaLM); None for T5, whose relative-position bias
    comes in `bias` with the masks, broadcastable to [B, num_heads, Q, K].

    decode=True keeps state in the "cache" collection. Self-attention writes this call's
    keys/values into a KVCache at each row's `cache_index` [B] and attends over the whole
    cache (`bias` then spans its max_decode_length keys); cross_attention=True instead
    projects `inputs_kv` once, on the call that creates the cache, and reuses it after.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    scale_logits: bool = False
    rope_max_wavelength: float | None = None
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
        positions: jax.Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
        cache_index: jax.Array | None = None,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}"
            )
        # T5 folds the logits' 1/sqrt(head_dim) into the query kernel's initial variance.
        query_scale = 1.0 if self.scale_logits else 1.0 / self.head_dim
        query = self._dense(
            (self.num_heads, self.head_dim), (EMBED, HEADS, KV), "query", kernel_scale=query_scale
        )(inputs_q)
        if self.rope_max_wavelength is not None:
            query = apply_rope(query, positions, self.rope_max_wavelength)
        if self.scale_logits:
            query = query * self.head_dim**-0.5
        query = nn.with_logical_constraint(query, (BATCH, LENGTH, HEADS, KV))

        if decode and self.cross_attention and self.has_variable("cache", "cached_key"):
            key, value = (self.get_variable("cache", n) for n in ("cached_key", "cached_value"))
        else:
            key, value = self._project_kv(inputs_kv, positions)
            if decode and self.cross_attention:
                key, value = heads_major(key), heads_major(value)
                self.put_variable("cache", "cached_key", key)
                self.put_variable("cache", "cached_value", value)
            elif decode:
                if max_decode_length is None:
                    raise ValueError("decode=True needs max_decode_length to size the KV cache")
                key, value = KVCache(max_decode_length, name="kv_cache")(key, value, cache_index)

        out = self._attend(query, key, value, bias, decode, enable_dropout)
        out = nn.with_logical_constraint(out, (BATCH, LENGTH, HEADS, KV))
        out = self._dense(inputs_q.shape[-1], (HEADS, KV, EMBED), "out", axis=(-2, -1))(out)
        return nn.with_logical_constraint(out, (BATCH, LENGTH, EMBED))

    def _dense(self, features, kernel_axes, name, **kwargs) -> DenseGeneral:
        return DenseGeneral(
            features,
            kernel_axes=kernel_axes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **kwargs,
        )

    def _project_kv(self, inputs_kv, positions):
        """Keys and values [B, S, num_kv_heads, head_dim]; keys rotated when RoPE is on."""
        single = self.num_kv_heads == 1
        features = self.head_dim if single else (self.num_kv_heads, self.head_dim)
        kernel_axes = (EMBED, KV) if single else (EMBED, HEADS, KV)
        heads_axis = None if single else HEADS
        shape = inputs_kv.shape[:2] + (self.num_kv_heads, self.head_dim)
        key, value = (
            self._dense(features, kernel_axes, name)(inputs_kv).reshape(shape)
            for name in ("key", "value")
        )
        if self.rope_max_wavelength is not None:
            key = apply_rope(key, positions, self.rope_max_wavelength)
        axes = (BATCH, LENGTH, heads_axis, KV)
        return nn.with_logical_constraint(key, axes), nn.with_logical_constraint(value, axes)

    def _attend(self, query, key, value, bias, head_major, enable_dropout):
        """softmax(q k + bias) v over key/value heads shared by groups of query heads;
        keys/values are [B, kv_heads, S, D] if head_major (caches) else [B, S, kv_heads, D]."""
        batch, length, heads, head_dim = query.shape
        kv_heads = key.shape[1 if head_major else 2]
        query = query.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
        kv = "bksd" if head_major else "bskd"
        logits = jnp.einsum(f"btkgd,{kv}->bkgts", query, key, preferred_element_type=jnp.float32)
        logits = logits.reshape(batch, heads, length, -1) + bias.astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not enable_dropout)
        weights = weights.reshape(batch, kv_heads, heads // kv_heads, length, -1)
        out = jnp.einsum(f"bkgts,{kv}->btkgd", weights.astype(self.dtype), value)
        return out.reshape(batch, length, heads, head_dim)
