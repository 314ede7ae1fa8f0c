"""Token-level cross-entropy with z-loss and label smoothing (T5X semantics).

Everything returns weighted SUMS, not means: the trainer divides by the global
token count once, which keeps microbatched gradients exactly equal to full-batch ones.
"""

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


def cross_entropy_with_z_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted sums of (cross-entropy + z-loss), cross-entropy, and z-loss.

    logits [..., V] (computed in float32), integer targets [...], weights [...].
    Cross-entropy is against targets smoothed to confidence 1 - label_smoothing with
    label_smoothing / (V - 1) on every other token, minus that distribution's entropy.
    The z-loss term z_loss * logsumexp(logits)^2 keeps the softmax normalizer near 1,
    which stabilizes bfloat16 training.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
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
    z_term = z_loss * jnp.square(log_z)

    cross_entropy_sum = jnp.sum(cross_entropy * weights)
    z_loss_sum = jnp.sum(z_term * weights)
    return cross_entropy_sum + z_loss_sum, cross_entropy_sum, z_loss_sum
