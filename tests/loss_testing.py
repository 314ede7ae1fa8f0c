"""A packed encoder-decoder batch and T5X's loss normalization written out in numpy from
t5x/losses.py (get_loss_normalizing_factor_and_weights, _sum_weights_per_segment,
compute_weighted_cross_entropy), as the reference flan_jax's losses are checked against."""

import jax
import jax.numpy as jnp
import numpy as np

FACTORS = [
    None,
    233472,
    "NUM_REAL_TARGET_TOKENS",
    "NUM_TOTAL_TARGET_TOKENS",
    "AVERAGE_PER_SEQUENCE",
]

# Target lengths of the examples packed into each row: rows of one to four examples, some
# with padding after them, so per-token and per-sequence weighting differ, and so do the
# token counts of the rows each microbatch takes.
TARGET_LENGTHS = [[2, 7], [11], [1, 1, 1], [3, 3, 3, 3], [5], [1, 9], [4, 2], [6, 6]]
TARGETS_LEN, INPUTS_LEN = 12, 10


def _pack(lengths, row_len, rng, vocab_size, eos):
    tokens, inputs, segments, positions = (np.zeros(row_len, np.int32) for _ in range(4))
    start = 0
    for segment, length in enumerate(lengths, 1):
        piece = rng.integers(2, vocab_size, length)
        if eos:
            piece[-1] = 1
        span = slice(start, start + length)
        tokens[span], segments[span], positions[span] = piece, segment, np.arange(length)
        inputs[span] = np.concatenate([[0], piece[:-1]])
        start += length
    return tokens, inputs, segments, positions


def packed_batch(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """seqio's packed EncDecFeatureConverter features for TARGET_LENGTHS; the second example
    of row 2 has all its loss weights 0 (a sequence that AVERAGE_PER_SEQUENCE cannot count)."""
    rng = np.random.default_rng(seed)
    encoder, decoder = [], []
    for lengths in TARGET_LENGTHS:
        encoder.append(_pack([2] * len(lengths), INPUTS_LEN, rng, vocab_size, eos=True))
        decoder.append(_pack(lengths, TARGETS_LEN, rng, vocab_size, eos=True))
    encoder_tokens, _, encoder_segments, encoder_positions = map(np.stack, zip(*encoder))
    targets, decoder_inputs, decoder_segments, decoder_positions = map(np.stack, zip(*decoder))
    batch = {
        "encoder_input_tokens": encoder_tokens,
        "encoder_segment_ids": encoder_segments,
        "encoder_positions": encoder_positions,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_segment_ids": decoder_segments,
        "decoder_positions": decoder_positions,
    }
    weights = (batch["decoder_target_tokens"] > 0).astype(np.float32)
    weights[2][batch["decoder_segment_ids"][2] == 2] = 0
    batch["decoder_loss_weights"] = weights
    return batch


def t5x_sequence_totals(batch) -> np.ndarray:
    """T5X's _sum_weights_per_segment as a loop: a sequence starts wherever the decoder
    position is 0 (T5X reads positions, not segment ids) and runs to the next start; each
    token gets the sum of its sequence's weights."""
    positions, weights = batch["decoder_positions"], batch["decoder_loss_weights"]
    totals = np.zeros(weights.shape, np.float64)
    for row in range(weights.shape[0]):
        starts = [*np.flatnonzero(positions[row] == 0), weights.shape[1]]
        for start, end in zip(starts[:-1], starts[1:]):
            totals[row, start:end] = weights[row, start:end].sum()
    return totals


def t5x_weights_and_factor(factor, batch):
    """(loss weights, loss_normalizing_factor or None) as T5X's
    get_loss_normalizing_factor_and_weights returns them for `batch`."""
    weights = np.asarray(batch["decoder_loss_weights"], np.float64)
    if factor is None or not isinstance(factor, str):
        return weights, factor
    if factor == "NUM_REAL_TARGET_TOKENS":
        return weights, weights.sum()
    if factor == "NUM_TOTAL_TARGET_TOKENS":
        return weights, float(batch["decoder_target_tokens"].size)
    assert factor == "AVERAGE_PER_SEQUENCE", factor
    if "decoder_segment_ids" in batch:
        totals = t5x_sequence_totals(batch)
    else:
        totals = weights.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_sequence = np.nan_to_num(weights / totals, nan=0, posinf=0, neginf=0)
    return per_sequence, per_sequence.sum()


def t5x_loss(logits, batch, factor, *, z_loss, label_smoothing):
    """T5X's training loss (compute_weighted_cross_entropy with one-hot soft targets, the
    smoothing entropy subtracted, z-loss added, all divided by the factor), differentiable
    in `logits` [B, T, V]; (loss, z-loss part)."""
    weights, divisor = t5x_weights_and_factor(factor, batch)
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
    soft = jax.nn.one_hot(batch["decoder_target_tokens"], vocab) * (confidence - low) + low
    log_z = jax.nn.logsumexp(logits, axis=-1)
    z_term = z_loss * jnp.square(log_z)
    per_token = -jnp.sum(soft * (logits - log_z[..., None]), axis=-1) + z_term - entropy
    divisor = 1.0 if divisor is None else divisor
    return jnp.sum(per_token * weights) / divisor, jnp.sum(z_term * weights) / divisor
