"""The model API the trainer and evaluator see: init, loss, scoring, prediction.

All methods are pure functions of (params, batch) so the caller can jit them with
its own shardings. Params are the UNBOXED "params" collection (plain arrays); `init`
alone returns them boxed as `nn.LogicallyPartitioned` for the partitioner.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from flan_jax import decoding, losses
from flan_jax.models.t5 import T5, T5Config

PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0


class EncoderDecoderModel:
    """T5-style encoder-decoder on seqio's EncDecFeatureConverter batches."""

    FEATURE_CONVERTER = "EncDecFeatureConverter"

    def __init__(self, config: T5Config, *, z_loss: float = 1e-4, label_smoothing: float = 0.0):
        if z_loss < 0:
            raise ValueError(f"z_loss={z_loss} must be >= 0")
        losses.label_smoothing_constant(config.vocab_size, label_smoothing)  # validates it
        self.config = config
        self.module = T5(config)
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing

    def init(self, rng: jax.Array):
        """Fresh "params" collection with nn.LogicallyPartitioned leaves.

        Shapes do not depend on the dummy [1, 1] inputs, so jax.eval_shape(model.init,
        rng) is a cheap way to get the param structure and partition specs.
        """
        tokens = jnp.ones((1, 1), jnp.int32)
        return self.module.init({"params": rng}, tokens, tokens)["params"]

    def _logits(self, params, batch: Mapping[str, jax.Array], dropout_rng=None) -> jax.Array:
        enable_dropout = dropout_rng is not None
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch.get("encoder_segment_ids"),
            batch.get("decoder_segment_ids"),
            enable_dropout=enable_dropout,
            rngs={"dropout": dropout_rng} if enable_dropout else None,
        )

    @staticmethod
    def _weights(batch: Mapping[str, jax.Array]) -> jax.Array:
        if "decoder_loss_weights" in batch:
            return batch["decoder_loss_weights"].astype(jnp.float32)
        return (batch["decoder_target_tokens"] != PAD_ID).astype(jnp.float32)

    def loss_fn(self, params, batch: Mapping[str, jax.Array], dropout_rng: jax.Array | None):
        """Summed (not averaged) loss over target tokens and a dict of summed metrics.

        "cross_entropy" includes label smoothing; "loss" = "cross_entropy" + "z_loss".
        Dropout is on iff dropout_rng is given.
        """
        logits = self._logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        weights = self._weights(batch)
        loss, cross_entropy, z_loss = losses.cross_entropy_with_z_loss(
            logits, targets, weights, z_loss=self.z_loss, label_smoothing=self.label_smoothing
        )
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        aux = {
            "loss": loss,
            "cross_entropy": cross_entropy,
            "z_loss": z_loss,
            "num_tokens": jnp.sum(weights),
            "num_correct": jnp.sum(correct * weights),
        }
        return loss, aux

    def score_batch(self, params, batch: Mapping[str, jax.Array]) -> jax.Array:
        """[B] sum of log p(target token), for ranking answer options (unpacked batches)."""
        logits = self._logits(params, batch)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        targets = batch["decoder_target_tokens"]
        token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(token_scores * self._weights(batch), axis=-1)

    def predict_batch(
        self,
        params,
        batch: Mapping[str, jax.Array],
        *,
        max_decode_length: int,
        rng: jax.Array | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_decodes: int = 1,
    ) -> jax.Array:
        """Generated tokens, int32 [B, max_decode_length] or [B, num_decodes, max_decode_length].

        Greedy when temperature == 0. Output excludes the start token; everything after
        a row's first EOS is 0. Keyword arguments must be static under jit.
        """
        if num_decodes < 1:
            raise ValueError(f"num_decodes={num_decodes} must be >= 1")
        encoder_tokens = batch["encoder_input_tokens"]
        encoded = self.module.apply({"params": params}, encoder_tokens, method=T5.encode)
        if num_decodes > 1:
            encoder_tokens = jnp.repeat(encoder_tokens, num_decodes, axis=0)
            encoded = jnp.repeat(encoded, num_decodes, axis=0)
        batch_size = encoder_tokens.shape[0]

        def run_decoder(variables, tokens):
            return self.module.apply(
                variables,
                encoded,
                encoder_tokens,
                tokens,
                decode=True,
                max_decode_length=max_decode_length,
                mutable=["cache"],
                method=T5.decode,
            )

        # The first decode=True call only builds the cache (incl. cross-attention K/V).
        start = jnp.full((batch_size, 1), DECODER_START_ID, jnp.int32)
        _, cache = run_decoder({"params": params}, start)

        def step_fn(cache, tokens):
            logits, variables = run_decoder({"params": params, **cache}, tokens)
            return logits[:, 0], variables

        tokens = decoding.temperature_sample(
            step_fn,
            cache,
            batch_size=batch_size,
            max_decode_length=max_decode_length,
            rng=rng,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            start_id=DECODER_START_ID,
            eos_id=EOS_ID,
        )
        if num_decodes > 1:
            tokens = tokens.reshape(-1, num_decodes, max_decode_length)
        return tokens
