"""The decoding cache of self-attention: every position's keys and values, per-row positions."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def write(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """cache [B, heads, length, D] with new [B, T, heads, D] at positions index[b] .. +T-1.

    One batched dynamic_update_slice: a scatter of each row's T positions, which XLA
    updates in place instead of rewriting the cache; it reads `new` length-major as the
    projections produce it, so no transpose comes first. Positions past the end are dropped.
    """
    positions = index[:, None] + jnp.arange(new.shape[1])
    return cache.at[jnp.arange(cache.shape[0])[:, None], :, positions].set(new)


class KVCache(nn.Module):
    """Keys and values of the positions decoded so far, in the "cache" collection.

    Head-major, [B, kv_heads, length, head_dim], so that each step's two attention dots read
    the cache in place (a length-major cache costs a transpose of all of it per step).
    Each call writes its T keys/values [B, T, kv_heads, head_dim] at each row's own position
    `index` [B] and returns the whole cache; the caller's mask hides the positions a row has
    not written. The call that creates the cache (`length` positions, zeros) is the prefill:
    it writes a prompt of T tokens at index 0.
    """

    length: int

    @nn.compact
    def __call__(self, key: jax.Array, value: jax.Array, index: jax.Array):
        batch, steps, heads, head_dim = key.shape
        if steps > self.length:
            raise ValueError(
                f"{steps} tokens do not fit a KV cache of length {self.length}: raise "
                "max_decode_length"
            )
        shape = (batch, heads, self.length, head_dim)
        cached = []
        for name, new in (("cached_key", key), ("cached_value", value)):
            variable = self.variable("cache", name, jnp.zeros, shape, new.dtype)
            variable.value = write(variable.value, new, index)
            cached.append(variable.value)
        return tuple(cached)


def heads_major(x: jax.Array) -> jax.Array:
    """[B, length, heads, D] -> [B, heads, length, D], the layout of decoding caches."""
    return x.transpose(0, 2, 1, 3)
