"""T5 v1.1 encoder-decoder (the Flan-T5 architecture).

Pre-norm residual blocks with RMSNorm, gated-GELU MLPs, one relative-position bias
per stack (bidirectional in the encoder, causal in the decoder), no 1/sqrt(d)
attention scaling, a token embedding shared by both stacks and an untied output
layer. Packed rows are supported through segment ids: attention never crosses
examples, and relative positions inside an example are unaffected by packing.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from flan_jax.axis_names import BATCH, EMBED, LENGTH, VOCAB
from flan_jax.models.attention import Attention, causal_mask, mask_to_bias, segment_mask
from flan_jax.models.layers import (
    DenseGeneral,
    Embed,
    GatedGeluMlp,
    RelativePositionBias,
    RMSNorm,
    check_dtypes,
    dtypes,
)
from flan_jax.models.scan import apply_layers, check_remat_policy, stack_layers, unstack_layers


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5 v1.1 model; defaults are T5 v1.1 small."""

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"  # activations; "bfloat16" for TPU/GPU training
    param_dtype: str = "float32"
    # One scanned layer per stack instead of a Python loop: compile time and program size
    # stop growing with depth. Params then carry a leading "layers" axis (see scan_params).
    scan_layers: bool = False
    # What each layer keeps for the backward pass: "none" keeps everything; the others
    # recompute activations (less memory, more FLOPs). See scan.REMAT_POLICIES.
    remat_policy: str = "none"

    def __post_init__(self):
        check_remat_policy(self)
        check_dtypes(self)
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                f"T5Config.relative_attention_num_buckets={self.relative_attention_num_buckets}: "
                "needs at least 4 (half exact, half log-spaced, per direction)"
            )


def _attention(config: T5Config, name: str, cross_attention: bool = False) -> Attention:
    """T5's attention: every head has its own keys and values; no 1/sqrt(d) on the logits."""
    return Attention(
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        head_dim=config.d_kv,
        dropout_rate=config.dropout_rate,
        cross_attention=cross_attention,
        name=name,
        **dtypes(config),
    )


def _norm(config: T5Config, name: str) -> RMSNorm:
    return RMSNorm(epsilon=config.layer_norm_epsilon, name=name, **dtypes(config))


def _relpos(config: T5Config, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        num_buckets=config.relative_attention_num_buckets,
        max_distance=config.relative_attention_max_distance,
        num_heads=config.num_heads,
        bidirectional=bidirectional,
        name="relpos_bias",
        **dtypes(config),
    )


class _Block(nn.Module):
    """Shared residual plumbing: x + dropout(sublayer(norm(x)))."""

    config: T5Config

    def residual(self, x, y, enable_dropout):
        y = nn.Dropout(self.config.dropout_rate)(y, deterministic=not enable_dropout)
        return nn.with_logical_constraint(x + y, (BATCH, LENGTH, EMBED))

    def mlp(self, x, enable_dropout):
        c = self.config
        y = _norm(c, "pre_mlp_layer_norm")(x)
        y = GatedGeluMlp(c.d_ff, c.dropout_rate, name="mlp", **dtypes(c))(
            y, enable_dropout=enable_dropout
        )
        return self.residual(x, y, enable_dropout)


# Layers take positional arguments and return (x, None): the calling convention of
# nn.scan (carry, per-layer output) and of nn.remat's static_argnums.


class EncoderLayer(_Block):
    @nn.compact
    def __call__(self, x, bias, enable_dropout=False):
        y = _norm(self.config, "pre_attention_layer_norm")(x)
        y = _attention(self.config, "attention")(y, y, bias, enable_dropout=enable_dropout)
        x = self.residual(x, y, enable_dropout)
        return self.mlp(x, enable_dropout), None


class DecoderLayer(_Block):
    @nn.compact
    def __call__(
        self,
        x,
        encoded,
        self_bias,
        cross_bias,
        enable_dropout=False,
        decode=False,
        cache_index=None,
        max_decode_length=None,
    ):
        c = self.config
        y = _norm(c, "pre_self_attention_layer_norm")(x)
        y = _attention(c, "self_attention")(
            y,
            y,
            self_bias,
            enable_dropout=enable_dropout,
            decode=decode,
            cache_index=cache_index,
            max_decode_length=max_decode_length,
        )
        x = self.residual(x, y, enable_dropout)
        y = _norm(c, "pre_cross_attention_layer_norm")(x)
        y = _attention(c, "encoder_decoder_attention", cross_attention=True)(
            y, encoded, cross_bias, enable_dropout=enable_dropout, decode=decode
        )
        x = self.residual(x, y, enable_dropout)
        return self.mlp(x, enable_dropout), None


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens, segment_ids=None, *, enable_dropout=False):
        c = self.config
        dropout = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=not enable_dropout)
        length = tokens.shape[1]
        mask = (tokens > 0)[:, None, None, :]
        if segment_ids is not None:
            mask = mask & segment_mask(segment_ids, segment_ids)
        bias = mask_to_bias(mask) + _relpos(c, bidirectional=True)(length, length)

        x = dropout(self.shared_embedding(tokens))
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        x = apply_layers(EncoderLayer, c, c.num_encoder_layers, (3,), x, bias, enable_dropout)
        return dropout(_norm(c, "encoder_norm")(x))


class Decoder(nn.Module):
    """Decoder stack and output layer.

    decode=True runs incremental decoding over the "cache" collection, each row at its own
    position. The call that creates the cache (pass max_decode_length, its length) prefills
    it with the given tokens [B, T] (the start token, and a prompt if any) and sets each
    row's next position to `next_index` [B] (default T); each later call writes its tokens
    at those positions and advances them. Cross-attention keys/values are computed once,
    by the call that creates the cache.
    """

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        *,
        enable_dropout=False,
        decode=False,
        max_decode_length=None,
        next_index=None,
    ):
        c = self.config
        dropout = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=not enable_dropout)
        if (encoder_segment_ids is None) != (decoder_segment_ids is None):
            raise ValueError(
                "packed batches need both encoder_segment_ids and decoder_segment_ids; "
                "got only one of them"
            )
        if decode and max_decode_length is None:
            raise ValueError("decode=True needs max_decode_length (the KV cache length)")

        cross_mask = (encoder_input_tokens > 0)[:, None, None, :]
        if decoder_segment_ids is not None:
            cross_mask = cross_mask & segment_mask(decoder_segment_ids, encoder_segment_ids)
        cross_bias = mask_to_bias(cross_mask)

        relpos = _relpos(c, bidirectional=False)
        batch, length = decoder_input_tokens.shape
        if decode:
            index = self.variable("cache", "index", jnp.zeros, (batch,), jnp.int32)
            cache_index = index.value
            positions = cache_index[:, None] + jnp.arange(length)
            self_bias = mask_to_bias(causal_mask(positions, max_decode_length)) + relpos(
                length, max_decode_length, positions
            )
        else:
            cache_index = None
            self_mask = causal_mask(jnp.arange(length)[None], length)
            if decoder_segment_ids is not None:
                self_mask = self_mask & segment_mask(decoder_segment_ids, decoder_segment_ids)
            self_bias = mask_to_bias(self_mask) + relpos(length, length)

        x = dropout(self.shared_embedding(decoder_input_tokens))
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        x = apply_layers(
            DecoderLayer,
            c,
            c.num_decoder_layers,
            (5, 6, 8),  # enable_dropout, decode, max_decode_length
            x,
            encoded,
            self_bias,
            cross_bias,
            enable_dropout,
            decode,
            cache_index,
            max_decode_length,
        )
        x = dropout(_norm(c, "decoder_norm")(x))
        logits = DenseGeneral(
            c.vocab_size, kernel_axes=(EMBED, VOCAB), name="logits_dense", **dtypes(c)
        )(x)
        if decode:
            index.value = cache_index + length if next_index is None else next_index
        return nn.with_logical_constraint(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))


class T5(nn.Module):
    """Encoder-decoder; params: token_embedder, encoder/..., decoder/... ."""

    config: T5Config

    def setup(self):
        c = self.config
        self.token_embedder = Embed(c.vocab_size, c.d_model, **dtypes(c))
        self.encoder = Encoder(c, self.token_embedder)
        self.decoder = Decoder(c, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, enable_dropout=False):
        """[B, S] tokens -> [B, S, d_model] encoder outputs."""
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, enable_dropout=enable_dropout
        )

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        *,
        enable_dropout=False,
        decode=False,
        max_decode_length=None,
        next_index=None,
    ):
        """Float32 logits [B, T, vocab]; see Decoder for cached decoding."""
        return self.decoder(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
            next_index=next_index,
        )

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        *,
        enable_dropout=False,
        decode=False,
    ):
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=decoder_input_tokens.shape[1] if decode else None,
        )


def scan_params(params: dict, config: T5Config) -> dict:
    """Unscanned params (`layers_{i}` per layer) -> the scan_layers=True layout, where each
    stack's `layers` holds every per-layer array stacked on a new leading axis."""
    return _restack(params, config, stack_layers)


def unscan_params(params: dict, config: T5Config) -> dict:
    """The inverse of scan_params: one `layers_{i}` subtree per layer."""
    return _restack(params, config, unstack_layers)


def _restack(params, config, convert):
    return {
        **params,
        "encoder": convert(params["encoder"], config.num_encoder_layers),
        "decoder": convert(params["decoder"], config.num_decoder_layers),
    }
