"""The model API the trainer and evaluator see: init, loss, scoring, prediction.

All methods are pure functions of (params, batch) so the caller can jit them with
its own shardings. Params are the UNBOXED "params" collection (plain arrays); `init`
alone returns them boxed as `nn.LogicallyPartitioned` for the partitioner.
"""

import abc
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from flan_jax import decoding, losses
from flan_jax.models.decoder import Decoder, DecoderConfig
from flan_jax.models.t5 import T5, T5Config

PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0


class BaseModel(abc.ABC):
    """Loss, scoring and decoding shared by every model; subclasses supply the module,
    its logits and its decoding cache."""

    def __init__(self, module, vocab_size: int, *, z_loss: float, label_smoothing: float):
        if z_loss < 0:
            raise ValueError(f"z_loss={z_loss} must be >= 0")
        losses.label_smoothing_constant(vocab_size, label_smoothing)  # validates it
        self.module = module
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing

    @abc.abstractmethod
    def check_feature_lengths(
        self, task_feature_lengths: Mapping[str, int], what: str = "TASK_FEATURE_LENGTHS"
    ) -> None:
        """Refuses task feature lengths the model cannot take (ValueError naming `what` they
        came from, e.g. a gin macro, and the lengths)."""

    @abc.abstractmethod
    def init(self, rng: jax.Array):
        """Fresh "params" collection with nn.LogicallyPartitioned leaves.

        Shapes do not depend on the dummy inputs used, so jax.eval_shape(model.init, rng)
        is a cheap way to get the param structure and partition specs.
        """

    @abc.abstractmethod
    def _logits(self, params, batch: Mapping[str, jax.Array], dropout_rng=None) -> jax.Array:
        """Float32 logits [B, T, vocab] predicting decoder_target_tokens; dropout iff
        dropout_rng is given."""

    @abc.abstractmethod
    def _decoding_state(
        self, params, batch: Mapping[str, jax.Array], *, copies: int, max_decode_length: int
    ) -> tuple[Callable[[Any, jax.Array], tuple[jax.Array, Any]], Any, jax.Array]:
        """(step_fn, cache, start tokens [B * copies]) for decoding each input `copies` times.

        Rows are input-major (row b * copies + c), as decoding.beam_search expects.
        """

    @staticmethod
    def _weights(batch: Mapping[str, jax.Array]) -> jax.Array:
        if "decoder_loss_weights" in batch:
            return batch["decoder_loss_weights"].astype(jnp.float32)
        return (batch["decoder_target_tokens"] != PAD_ID).astype(jnp.float32)

    def loss_fn(
        self,
        params,
        batch: Mapping[str, jax.Array],
        dropout_rng: jax.Array | None,
        loss_normalizing_factor: None | float | str = losses.NUM_REAL_TARGET_TOKENS,
    ):
        """Weighted loss sum to differentiate, and a dict of sums over the batch's tokens.

        The first output weighs tokens as `loss_normalizing_factor` asks
        (`losses.loss_weights`; per sequence for AVERAGE_PER_SEQUENCE, else by the loss
        weights) and is also aux "weighted_loss", with "loss_weight_sum" the sum of those
        weights; the caller divides it by `losses.normalizing_divisor`. The other sums weigh
        every real target token alike, for per-token metrics: "cross_entropy" includes label
        smoothing; "loss" = "cross_entropy" + "z_loss". Dropout is on iff dropout_rng is given.
        """
        logits = self._logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        weights = self._weights(batch)
        cross_entropy, z_term = losses.token_losses(
            logits, targets, z_loss=self.z_loss, label_smoothing=self.label_smoothing
        )
        loss, cross_entropy_sum, z_loss_sum = losses.weighted_sums(cross_entropy, z_term, weights)
        objective_weights = losses.loss_weights(
            loss_normalizing_factor, weights, batch.get("decoder_segment_ids")
        )
        weighted_loss, _, _ = losses.weighted_sums(cross_entropy, z_term, objective_weights)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        aux = {
            "loss": loss,
            "cross_entropy": cross_entropy_sum,
            "z_loss": z_loss_sum,
            "num_tokens": jnp.sum(weights),
            "num_correct": jnp.sum(correct * weights),
            "weighted_loss": weighted_loss,
            "loss_weight_sum": jnp.sum(objective_weights),
        }
        return weighted_loss, aux

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
        num_beams: int | None = None,
        length_penalty: float = 0.6,
    ) -> jax.Array:
        """Generated tokens, int32 [B, max_decode_length] or [B, num_decodes, max_decode_length].

        num_beams=None samples (greedy when temperature == 0; num_decodes independent
        samples); num_beams=k runs beam search with k beams and length penalty alpha
        `length_penalty`, returning the num_decodes best beams. Output excludes the start
        token; everything after a row's first EOS is 0. Keyword arguments must be static
        under jit.
        """
        if num_decodes < 1:
            raise ValueError(f"num_decodes={num_decodes} must be >= 1")
        if num_beams is not None:
            if num_beams < num_decodes:
                raise ValueError(
                    f"num_beams={num_beams} must be >= num_decodes={num_decodes}: "
                    "beam search returns the num_decodes best of its beams"
                )
            if temperature != 0.0 or top_k != 0 or top_p != 1.0:
                raise ValueError(
                    f"beam search (num_beams={num_beams}) is deterministic; temperature="
                    f"{temperature}, top_k={top_k}, top_p={top_p} apply to sampling only "
                    "(num_beams=None)"
                )
        copies = num_decodes if num_beams is None else num_beams
        step_fn, cache, start_tokens = self._decoding_state(
            params, batch, copies=copies, max_decode_length=max_decode_length
        )
        batch_size = start_tokens.shape[0] // copies
        if num_beams is None:
            tokens = decoding.temperature_sample(
                step_fn,
                cache,
                batch_size=batch_size * copies,
                max_decode_length=max_decode_length,
                rng=rng,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                start_tokens=start_tokens,
                eos_id=EOS_ID,
            ).reshape(batch_size, copies, max_decode_length)
        else:
            tokens, _ = decoding.beam_search(
                step_fn,
                cache,
                batch_size=batch_size,
                beam_size=num_beams,
                max_decode_length=max_decode_length,
                length_penalty=length_penalty,
                start_tokens=start_tokens[::copies],
                eos_id=EOS_ID,
            )
        return tokens[:, 0] if num_decodes == 1 else tokens[:, :num_decodes]


class EncoderDecoderModel(BaseModel):
    """T5-style encoder-decoder on seqio's EncDecFeatureConverter batches."""

    FEATURE_CONVERTER = "EncDecFeatureConverter"

    def __init__(self, config: T5Config, *, z_loss: float = 1e-4, label_smoothing: float = 0.0):
        super().__init__(
            T5(config), config.vocab_size, z_loss=z_loss, label_smoothing=label_smoothing
        )
        self.config = config

    def check_feature_lengths(self, task_feature_lengths, what="TASK_FEATURE_LENGTHS"):
        """Any lengths: T5's positions are relative, its attention has no context limit."""

    def init(self, rng: jax.Array):
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

    def _decoding_state(self, params, batch, *, copies, max_decode_length):
        """Encodes once; the decoder's cache is prefilled with the start token and, where the
        batch has `decoder_prompt_tokens` [B, P] (right-padded with 0), each row's prompt,
        which decoding then continues (the output excludes the prompt)."""
        encoder_tokens = batch["encoder_input_tokens"]
        encoded = self.module.apply({"params": params}, encoder_tokens, method=T5.encode)
        encoder_tokens = jnp.repeat(encoder_tokens, copies, axis=0)
        encoded = jnp.repeat(encoded, copies, axis=0)
        prompt = batch.get("decoder_prompt_tokens", jnp.zeros((encoded.shape[0] // copies, 0)))
        prompt = jnp.repeat(jnp.asarray(prompt, jnp.int32), copies, axis=0)
        start = jnp.full((prompt.shape[0], 1), DECODER_START_ID, jnp.int32)
        # The start token is at position 0, so a row's last prompt token is at its length.
        last = jnp.sum(prompt != PAD_ID, axis=1).astype(jnp.int32)

        def run_decoder(variables, tokens, **kwargs):
            return self.module.apply(
                variables,
                encoded,
                encoder_tokens,
                tokens,
                decode=True,
                max_decode_length=prompt.shape[1] + max_decode_length,
                mutable=["cache"],
                method=T5.decode,
                **kwargs,
            )

        return _prefilled(run_decoder, params, jnp.concatenate([start, prompt], axis=1), last)


class DecoderOnlyModel(BaseModel):
    """PaLM-style decoder on seqio's PrefixLMFeatureConverter batches: each example's inputs
    then its targets in one sequence of at most config.context_length tokens.

    Loss and scores cover the targets only, through decoder_loss_weights (as Flan-PaLM
    finetunes). decoder_causal_attention marks the prompt (the inputs and the position that
    predicts the first target): decoding prefills it, and with config.prefix_lm (U-PaLM's
    prefix LM) it is attended bidirectionally; by default attention is causal throughout.
    """

    FEATURE_CONVERTER = "PrefixLMFeatureConverter"

    def __init__(
        self, config: DecoderConfig, *, z_loss: float = 1e-4, label_smoothing: float = 0.0
    ):
        super().__init__(
            Decoder(config), config.vocab_size, z_loss=z_loss, label_smoothing=label_smoothing
        )
        self.config = config

    def init(self, rng: jax.Array):
        return self.module.init({"params": rng}, jnp.ones((1, 1), jnp.int32))["params"]

    def check_feature_lengths(self, task_feature_lengths, what="TASK_FEATURE_LENGTHS"):
        """Inputs and targets share one sequence: together they must fit the context."""
        inputs, targets = task_feature_lengths["inputs"], task_feature_lengths["targets"]
        context = self.config.context_length
        if inputs + targets > context:
            raise ValueError(
                f"{what}: inputs={inputs} + targets={targets} = {inputs + targets} tokens "
                f"exceed the decoder's context of {context} (DecoderConfig.context_length); "
                f"lower inputs to at most {context - targets} (gin/eval/palm.gin has the eval "
                "suites' lengths for PaLM)"
            )

    def _logits(self, params, batch: Mapping[str, jax.Array], dropout_rng=None) -> jax.Array:
        enable_dropout = dropout_rng is not None
        return self.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            batch.get("decoder_segment_ids"),
            batch.get("decoder_positions"),
            batch.get("decoder_causal_attention"),
            enable_dropout=enable_dropout,
            rngs={"dropout": dropout_rng} if enable_dropout else None,
        )

    def _decoding_state(self, params, batch, *, copies, max_decode_length):
        """Prefills the cache with each row's prompt: the decoder_input_tokens where
        decoder_causal_attention is 1 (later positions, e.g. targets, are ignored)."""
        prefix_mask = jnp.repeat(batch["decoder_causal_attention"], copies, axis=0)
        prompt = jnp.repeat(batch["decoder_input_tokens"], copies, axis=0) * prefix_mask
        # Position 0 holds the start token even when a row has no inputs.
        last = jnp.maximum(jnp.sum(prefix_mask, axis=1), 1).astype(jnp.int32) - 1

        def run_decoder(variables, tokens, **kwargs):
            return self.module.apply(
                variables,
                tokens,
                decode=True,
                max_decode_length=prompt.shape[1] + max_decode_length,
                mutable=["cache"],
                **kwargs,
            )

        return _prefilled(run_decoder, params, prompt, last, prefix_mask=prefix_mask)


def _prefilled(run_decoder, params, prompt, last, **prefill_kwargs):
    """(step_fn, cache, start tokens) for decoding after each row's prompt.

    The cache is prefilled with prompt [B, T] and each row's next position set to `last`
    [B], the position of its last prompt token; decoding re-feeds that token there. It
    attends to the same keys as in the prefill, so its keys/values and logits are the same,
    and rows with prompts of different lengths decode in one batch.
    """
    _, cache = run_decoder({"params": params}, prompt, next_index=last, **prefill_kwargs)

    def step_fn(cache, tokens):
        logits, variables = run_decoder({"params": params, **cache}, tokens)
        return logits[:, 0], variables

    return step_fn, cache, jnp.take_along_axis(prompt, last[:, None], axis=1)[:, 0]
