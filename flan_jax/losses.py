"""Token-level cross-entropy with z-loss and label smoothing, and the loss-normalizing factor
(T5X semantics).

Everything returns weighted SUMS, not means: the trainer divides by the normalizing factor of
the whole global batch once, which keeps microbatched gradients exactly equal to full-batch
ones whatever the factor.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def label_smoothing_constant(vocab_size: int, label_smoothing: float) -> float:
    """Entropy of the smoothed target distribution.

    Subtracted from the cross-entropy so that predicting the smoothed targets exactly
    costs zero, as in T5X.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab_size - 1)
    entropy = -confidence * np.log(confidence)
    if low > 0:
        entropy -= (vocab_size - 1) * low * np.log(low)
    return float(entropy)


def token_losses(
    logits: jax.Array,
    targets: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy and z-loss, float32 arrays shaped like `targets`.

    logits [..., V] (computed in float32), integer targets [...]. Cross-entropy is against
    targets smoothed to confidence 1 - label_smoothing with label_smoothing / (V - 1) on every
    other token, minus that distribution's entropy. The z-loss term
    z_loss * logsumexp(logits)^2 keeps the softmax normalizer near 1, which stabilizes
    bfloat16 training. Callers weight and sum them (`weighted_sums`).
    """
    logits = logits.astype(jnp.float32)
    vocab_size = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab_size - 1)

    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    # sum_v soft_v * log_p_v without materializing the one-hot targets.
    expected_log_prob = (confidence - low) * target_log_prob
    if low > 0:
        expected_log_prob += low * jnp.sum(log_probs, axis=-1)
    cross_entropy = -expected_log_prob - label_smoothing_constant(vocab_size, label_smoothing)
    return cross_entropy, z_loss * jnp.square(log_z)


def weighted_sums(
    cross_entropy: jax.Array, z_term: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted sums of (cross-entropy + z-loss), cross-entropy, and z-loss over all tokens."""
    weights = weights.astype(jnp.float32)
    cross_entropy_sum = jnp.sum(cross_entropy * weights)
    z_loss_sum = jnp.sum(z_term * weights)
    return cross_entropy_sum + z_loss_sum, cross_entropy_sum, z_loss_sum


# T5X's SpecialLossNormalizingFactor names: divide by the batch's real target tokens (the sum
# of the loss weights), by all its target positions (padding included), or average each
# sequence's loss over its own tokens and then over the sequences.
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"
AVERAGE_PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"
SPECIAL_FACTORS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)


def check_loss_normalizing_factor(value) -> None | float | str:
    """`value` as the trainer uses it: None (the loss is the sum over target tokens), a
    positive number (a constant divisor), or one of SPECIAL_FACTORS (any case, as T5X's gin
    strings). Anything else is a ValueError naming it and the choices."""
    if value is None:
        return None
    if isinstance(value, str) and value.upper() in SPECIAL_FACTORS:
        return value.upper()
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if is_number and np.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(
        f"LOSS_NORMALIZING_FACTOR={value!r} is not one of T5X's choices: None (sum over target "
        "tokens), a positive number (constant divisor; T5X's t5_1_1 finetuning gins use 233472 = "
        f"2048 * 114 for checkpoints pretrained in Mesh TF), or one of {list(SPECIAL_FACTORS)}"
    )


def per_sequence_weights(weights: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """`weights` [B, T] divided by the sum of the weights of their sequence (each packed
    segment of a row, or the whole row when there are no segment ids), so that every sequence
    with any weight sums to 1; a sequence with none stays 0."""
    weights = weights.astype(jnp.float32)
    if segment_ids is None:
        totals = jnp.sum(weights, axis=-1, keepdims=True)
    else:
        num_segments = weights.shape[-1] + 1  # ids count from 1 (0 is padding) up to T

        def row_totals(row_weights, row_ids):
            sums = jax.ops.segment_sum(row_weights, row_ids, num_segments=num_segments)
            return sums[row_ids]

        totals = jax.vmap(row_totals)(weights, segment_ids)
    return weights / jnp.where(totals > 0, totals, 1.0)


def loss_weights(
    factor: None | float | str, weights: jax.Array, segment_ids: jax.Array | None
) -> jax.Array:
    """The per-token weights of the loss sum under `factor` (T5X's
    get_loss_normalizing_factor_and_weights): per-sequence weights for AVERAGE_PER_SEQUENCE,
    the token weights themselves otherwise."""
    if factor == AVERAGE_PER_SEQUENCE:
        return per_sequence_weights(weights, segment_ids)
    return weights.astype(jnp.float32)


def normalizing_divisor(
    factor: None | float | str, *, loss_weight_sum: jax.Array, num_target_positions: int
) -> jax.Array | float:
    """What the whole batch's weighted loss sum is divided by.

    `loss_weight_sum` is the batch's sum of `loss_weights` (its real target tokens, or its
    sequences under AVERAGE_PER_SEQUENCE); `num_target_positions` its target array's size. A
    batch with no weight at all divides by 1 (its sum is 0) instead of giving NaN.
    """
    if factor is None:
        return 1.0
    if factor == NUM_TOTAL_TARGET_TOKENS:
        return float(num_target_positions)
    if factor in (NUM_REAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE):
        return jnp.where(loss_weight_sum > 0, loss_weight_sum, 1.0)
    return factor
