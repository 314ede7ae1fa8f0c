"""PaLM-style decoder-only Transformer (the Flan-PaLM architecture).

Each layer is a parallel block, x + attention(norm(x)) + mlp(norm(x)) with one shared
RMSNorm, using multi-query attention (or grouped-query, `num_kv_heads`) with RoPE and a
SwiGLU MLP; no biases anywhere.
The input embedding (N(0, 1), unscaled) is also the output layer, and, as in PaLM, the
output logits are scaled by 1/sqrt(d_model) to make up for the unit-variance table.

Causal by default, as PaLM and Flan-PaLM are: every position attends to itself and the
positions before it. With `prefix_lm=True` (U-PaLM's prefix LM) the positions marked in
`prefix_mask` (seqio's decoder_causal_attention: the inputs and the position predicting the
first target) attend to each other bidirectionally. Packed rows are supported through
segment ids (attention never crosses examples) and per-example positions for RoPE.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.axis_names import BATCH, EMBED, LENGTH, VOCAB
from flan_jax.models.attention import Attention, causal_mask, mask_to_bias, segment_mask
from flan_jax.models.layers import Embed, GatedMlp, RMSNorm, check_dtypes, dtypes
from flan_jax.models.scan import apply_layers, check_remat_policy, stack_layers, unstack_layers


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyperparameters of a PaLM-style decoder; defaults are PaLM 8B."""

    vocab_size: int = 256_000
    d_model: int = 4096
    num_heads: int = 16
    num_kv_heads: int = 1  # PaLM's multi-query attention; a divisor of num_heads for GQA
    head_dim: int = 256
    d_ff: int = 16384
    num_layers: int = 32
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    rope_max_wavelength: float = 10_000.0
    # PaLM's sequence length: its positions past 2048 were never trained, so longer
    # sequences (inputs + targets) are refused.
    context_length: int = 2048
    # False: causal attention (PaLM, Flan-PaLM). True: the prompt is attended bidirectionally
    # (a prefix LM, as U-PaLM); a checkpoint keeps the mode it was trained in.
    prefix_lm: bool = False
    dtype: str = "float32"  # activations; "bfloat16" for TPU/GPU training
    param_dtype: str = "float32"
    # One scanned layer instead of a Python loop (params get a leading "layers" axis, see
    # scan_params), and what each layer keeps for the backward pass: see flan_jax.models.scan.
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        check_remat_policy(self)
        check_dtypes(self)
        if self.context_length < 1:
            raise ValueError(f"DecoderConfig.context_length={self.context_length} must be >= 1")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_kv_heads={self.num_kv_heads} must divide "
                f"num_heads={self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"DecoderConfig.head_dim={self.head_dim} must be even (RoPE rotates pairs)"
            )


def prefix_lm_mask(
    prefix_mask: jax.Array, query_positions: jax.Array, key_length: int
) -> jax.Array:
    """[B, 1, T, key_length]: causal by query_positions [B, T], plus bidirectional among
    the positions 0 .. T-1 where prefix_mask [B, T] is 1 (a prompt prefilled from 0; all 0:
    causal)."""
    prefix = prefix_mask.astype(bool)
    prefix_keys = jnp.pad(prefix, ((0, 0), (0, key_length - prefix.shape[1])))
    bidirectional = prefix[:, None, :, None] & prefix_keys[:, None, None, :]
    return causal_mask(query_positions, key_length) | bidirectional


class DecoderLayer(nn.Module):
    """Parallel block: attention and MLP read the same normed input, their sum is added.

    Positional arguments and an (x, None) result: the calling convention of apply_layers.
    """

    config: DecoderConfig

    @nn.compact
    def __call__(
        self,
        x,
        positions,
        bias,
        enable_dropout=False,
        decode=False,
        cache_index=None,
        max_decode_length=None,
    ):
        c = self.config
        y = RMSNorm(c.layer_norm_epsilon, name="pre_layer_norm", **dtypes(c))(x)
        attention = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.dropout_rate,
            scale_logits=True,
            rope_max_wavelength=c.rope_max_wavelength,
            name="attention",
            **dtypes(c),
        )(
            y,
            y,
            bias,
            positions=positions,
            enable_dropout=enable_dropout,
            decode=decode,
            cache_index=cache_index,
            max_decode_length=max_decode_length,
        )
        mlp = GatedMlp(c.d_ff, c.dropout_rate, activation="silu", name="mlp", **dtypes(c))(
            y, enable_dropout=enable_dropout
        )
        y = nn.Dropout(c.dropout_rate)(attention + mlp, deterministic=not enable_dropout)
        return nn.with_logical_constraint(x + y, (BATCH, LENGTH, EMBED)), None


class Decoder(nn.Module):
    """Decoder stack with tied output layer; params: token_embedder, layers_i (or one
    scanned `layers`), decoder_norm.

    prefix_mask [B, T] marks each row's prompt; with config.prefix_lm it is attended
    bidirectionally, otherwise it changes nothing (causal attention).

    decode=True runs incremental decoding over the "cache" collection, each row at its own
    position. The call that creates the cache prefills it with the given tokens [B, T] from
    position 0 (pass max_decode_length, the cache length, and the prompt's prefix_mask) and
    sets each row's next position to `next_index` [B] (default T); each later call writes its
    tokens at those positions and advances them.
    """

    config: DecoderConfig

    @nn.compact
    def __call__(
        self,
        tokens,
        segment_ids=None,
        positions=None,
        prefix_mask=None,
        *,
        enable_dropout=False,
        decode=False,
        max_decode_length=None,
        next_index=None,
    ):
        """Float32 logits [B, T, vocab] (T = 1 per cached decoding step)."""
        c = self.config
        batch, length = tokens.shape
        if not decode and length > c.context_length:
            raise ValueError(
                f"a sequence of {length} tokens exceeds DecoderConfig.context_length="
                f"{c.context_length}: shorten the inputs or targets"
            )
        if prefix_mask is None or not c.prefix_lm:
            prefix_mask = jnp.zeros((batch, length), bool)
        if decode:
            if max_decode_length is None:
                raise ValueError("decode=True needs max_decode_length (the KV cache length)")
            index = self.variable("cache", "index", jnp.zeros, (batch,), jnp.int32)
            cache_index = index.value
            positions = cache_index[:, None] + jnp.arange(length)
            mask = prefix_lm_mask(prefix_mask, positions, max_decode_length)
        else:
            cache_index = None
            mask = prefix_lm_mask(prefix_mask, jnp.arange(length)[None], length)
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
            if segment_ids is not None:
                mask = mask & segment_mask(segment_ids, segment_ids)
        bias = mask_to_bias(mask)

        embedder = Embed(c.vocab_size, c.d_model, name="token_embedder", **dtypes(c))
        x = nn.Dropout(c.dropout_rate)(embedder(tokens), deterministic=not enable_dropout)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        x = apply_layers(
            DecoderLayer,
            c,
            c.num_layers,
            (4, 5, 7),  # enable_dropout, decode, max_decode_length
            x,
            positions,
            bias,
            enable_dropout,
            decode,
            cache_index,
            max_decode_length,
        )
        x = RMSNorm(c.layer_norm_epsilon, name="decoder_norm", **dtypes(c))(x)
        logits = embedder.attend(x) / np.sqrt(c.d_model).astype(np.float32)
        if decode:
            index.value = cache_index + length if next_index is None else next_index
        return nn.with_logical_constraint(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))


def scan_params(params: dict, config: DecoderConfig) -> dict:
    """Unscanned params (`layers_{i}` per layer) -> the scan_layers=True layout."""
    return stack_layers(params, config.num_layers)


def unscan_params(params: dict, config: DecoderConfig) -> dict:
    """The inverse of scan_params: one `layers_{i}` subtree per layer."""
    return unstack_layers(params, config.num_layers)
