"""Cross-entropy with z-loss and label smoothing, the loss-normalizing factor, and the model
loss built on them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from loss_testing import FACTORS, TARGET_LENGTHS, packed_batch, t5x_weights_and_factor

from flan_jax import losses
from flan_jax.losses import label_smoothing_constant
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.models.t5 import T5Config


def _numpy_reference(logits, targets, weights, z_loss, label_smoothing):
    """Per-token loss written out from the definition with explicit soft targets."""
    vocab = logits.shape[-1]
    confidence, low = 1 - label_smoothing, label_smoothing / (vocab - 1)
    soft = np.full(logits.shape, low)
    np.put_along_axis(soft, targets[..., None], confidence, axis=-1)
    log_z = np.log(np.exp(logits).sum(-1))
    log_probs = logits - log_z[..., None]
    entropy = (
        0.0 if low == 0 else -confidence * np.log(confidence) - (vocab - 1) * low * np.log(low)
    )
    cross_entropy = -(soft * log_probs).sum(-1) - entropy
    z_term = z_loss * log_z**2
    return (
        ((cross_entropy + z_term) * weights).sum(),
        (cross_entropy * weights).sum(),
        (z_term * weights).sum(),
    )


def cross_entropy_with_z_loss(logits, targets, weights, *, z_loss=0.0, label_smoothing=0.0):
    per_token = losses.token_losses(logits, targets, z_loss=z_loss, label_smoothing=label_smoothing)
    return losses.weighted_sums(*per_token, weights)


@pytest.mark.parametrize(
    "z_loss, label_smoothing", [(0.0, 0.0), (1e-4, 0.0), (0.0, 0.1), (0.01, 0.2)]
)
def test_matches_numpy_reference(z_loss, label_smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 11))
    targets = rng.integers(0, 11, (2, 5))
    weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
    got = cross_entropy_with_z_loss(
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(targets),
        jnp.asarray(weights),
        z_loss=z_loss,
        label_smoothing=label_smoothing,
    )
    expected = _numpy_reference(logits, targets, weights, z_loss, label_smoothing)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-5)


def test_plain_cross_entropy_is_negative_log_likelihood():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
    total, cross_entropy, z = cross_entropy_with_z_loss(logits, jnp.array([1]), jnp.ones(1))
    np.testing.assert_allclose(
        [total, cross_entropy, z], [-np.log(0.2), -np.log(0.2), 0.0], rtol=1e-6
    )


def test_z_loss_is_squared_log_normalizer():
    logits = jnp.log(jnp.array([[1.0, 2.0, 5.0]]))  # softmax normalizer Z = 8
    _, _, z = cross_entropy_with_z_loss(logits, jnp.array([2]), jnp.ones(1), z_loss=0.5)
    np.testing.assert_allclose(z, 0.5 * np.log(8.0) ** 2, rtol=1e-6)


def test_predicting_the_smoothed_targets_costs_nothing():
    vocab, smoothing = 7, 0.1
    soft = np.full(vocab, smoothing / (vocab - 1))
    soft[3] = 1 - smoothing
    _, cross_entropy, _ = cross_entropy_with_z_loss(
        jnp.log(jnp.asarray(soft))[None], jnp.array([3]), jnp.ones(1), label_smoothing=smoothing
    )
    np.testing.assert_allclose(cross_entropy, 0.0, atol=1e-6)
    assert label_smoothing_constant(vocab, smoothing) > 0


def test_zero_weights_ignore_padding_positions():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(1, 4, 9)), jnp.float32)
    targets = jnp.array([[3, 5, 0, 0]])
    weights = (targets != 0).astype(jnp.float32)
    base = cross_entropy_with_z_loss(logits, targets, weights, z_loss=1e-3, label_smoothing=0.1)
    garbage = logits.at[:, 2:].set(1e4)  # huge values where the weights are zero
    changed = cross_entropy_with_z_loss(garbage, targets, weights, z_loss=1e-3, label_smoothing=0.1)
    np.testing.assert_allclose(np.array(changed), np.array(base), rtol=1e-6)
    only_real = cross_entropy_with_z_loss(
        logits[:, :2], targets[:, :2], jnp.ones((1, 2)), z_loss=1e-3, label_smoothing=0.1
    )
    np.testing.assert_allclose(np.array(base), np.array(only_real), rtol=1e-6)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        label_smoothing_constant(10, 1.0)


# --- EncoderDecoderModel.loss_fn: summed metrics, so microbatches add up exactly ---

CONFIG = T5Config(
    vocab_size=30,
    d_model=16,
    num_heads=2,
    d_kv=8,
    d_ff=24,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout_rate=0.2,
)


@pytest.fixture(scope="module")
def model_params_batch():
    model = EncoderDecoderModel(CONFIG, z_loss=1e-3, label_smoothing=0.1)
    params = nn.unbox(model.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    targets = rng.integers(2, 30, (4, 6)).astype(np.int32)
    targets[1, 3:] = 0
    batch = {
        "encoder_input_tokens": rng.integers(2, 30, (4, 8)).astype(np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": (targets != 0).astype(np.float32),
    }
    return model, params, batch


def test_loss_fn_returns_sums_that_split_over_microbatches(model_params_batch):
    model, params, batch = model_params_batch
    loss_fn = jax.jit(model.loss_fn)
    loss, aux = loss_fn(params, batch, None)
    halves = [
        loss_fn(params, {k: v[s] for k, v in batch.items()}, None)[1]
        for s in (slice(0, 2), slice(2, 4))
    ]
    for name in aux:  # loss, cross_entropy, z_loss, num_tokens, num_correct, weighted_loss, ...
        np.testing.assert_allclose(aux[name], halves[0][name] + halves[1][name], rtol=1e-5)
    assert len(aux) == 7
    np.testing.assert_allclose(loss, aux["loss"])
    np.testing.assert_allclose(aux["loss"], aux["cross_entropy"] + aux["z_loss"], rtol=1e-6)
    assert aux["num_tokens"] == 21

    logits = np.asarray(model._logits(params, batch))
    correct = (logits.argmax(-1) == batch["decoder_target_tokens"]) * batch["decoder_loss_weights"]
    assert aux["num_correct"] == correct.sum()
    expected = _numpy_reference(
        logits.astype(np.float64),
        batch["decoder_target_tokens"],
        batch["decoder_loss_weights"],
        1e-3,
        0.1,
    )
    np.testing.assert_allclose(loss, expected[0], rtol=1e-5)


def test_dropout_only_with_an_rng(model_params_batch):
    model, params, batch = model_params_batch
    loss_fn = jax.jit(model.loss_fn)
    deterministic = loss_fn(params, batch, None)[0]
    first = loss_fn(params, batch, jax.random.key(1))[0]
    again = loss_fn(params, batch, jax.random.key(1))[0]
    other = loss_fn(params, batch, jax.random.key(2))[0]
    assert first == again
    assert first != deterministic and first != other


# --- LOSS_NORMALIZING_FACTOR: T5X's weights and divisors on a packed batch ---


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("packed", [True, False])
def test_weights_and_divisor_are_t5xs(factor, packed):
    batch = packed_batch(vocab_size=30)
    if not packed:  # each row one sequence, as T5X normalizes unpacked batches
        batch = {k: v for k, v in batch.items() if not k.endswith(("_segment_ids", "_positions"))}
    want_weights, want_factor = t5x_weights_and_factor(factor, batch)
    factor = losses.check_loss_normalizing_factor(factor)
    weights = losses.loss_weights(
        factor, jnp.asarray(batch["decoder_loss_weights"]), batch.get("decoder_segment_ids")
    )
    np.testing.assert_allclose(weights, want_weights, rtol=1e-6)
    divisor = losses.normalizing_divisor(
        factor,
        loss_weight_sum=jnp.sum(weights),
        num_target_positions=batch["decoder_target_tokens"].size,
    )
    np.testing.assert_allclose(divisor, 1.0 if want_factor is None else want_factor, rtol=1e-6)


def test_average_per_sequence_counts_the_sequences_with_weight():
    batch = packed_batch(vocab_size=30)
    weights = losses.per_sequence_weights(
        jnp.asarray(batch["decoder_loss_weights"]), jnp.asarray(batch["decoder_segment_ids"])
    )
    # 17 packed examples, one of them with no loss weight.
    assert sum(map(len, TARGET_LENGTHS)) == 17
    np.testing.assert_allclose(jnp.sum(weights), 16.0, rtol=1e-6)
    assert float(jnp.sum(weights[2])) == pytest.approx(2.0)


def test_a_batch_without_weight_divides_by_one():
    for factor in ("NUM_REAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"):
        divisor = losses.normalizing_divisor(
            factor, loss_weight_sum=jnp.float32(0), num_target_positions=8
        )
        assert float(divisor) == 1.0


@pytest.mark.parametrize(
    "value, want",
    [
        (None, None),
        (233472, 233472.0),
        (0.5, 0.5),
        ("NUM_REAL_TARGET_TOKENS", "NUM_REAL_TARGET_TOKENS"),
        ("average_per_sequence", "AVERAGE_PER_SEQUENCE"),  # T5X upper-cases its strings
    ],
)
def test_accepted_loss_normalizing_factors(value, want):
    assert losses.check_loss_normalizing_factor(value) == want


@pytest.mark.parametrize("value", ["NUM_TOKENS", -1, 0, float("nan"), float("inf"), True, [1]])
def test_other_loss_normalizing_factors_are_refused_by_name(value):
    with pytest.raises(ValueError) as error:
        losses.check_loss_normalizing_factor(value)
    message = str(error.value)
    assert f"LOSS_NORMALIZING_FACTOR={value!r}" in message
    for choice in ("None", "positive number", *losses.SPECIAL_FACTORS):
        assert choice in message
