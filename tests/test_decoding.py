"""Greedy / sampled decoding: KV cache correctness, EOS handling, filters, rng use."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import decoding
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.models.t5 import T5, T5Config

CONFIG = T5Config(
    vocab_size=40, d_model=24, num_heads=3, d_kv=8, d_ff=32,
    num_encoder_layers=2, num_decoder_layers=2,
    relative_attention_num_buckets=8, relative_attention_max_distance=16,
)
LENGTH = 10


@pytest.fixture(scope="module")
def model_and_params():
    model = EncoderDecoderModel(CONFIG)
    params = nn.unbox(model.init(jax.random.key(0)))
    # Raise the EOS logit so some rows stop early and others run to the end.
    kernel = params["decoder"]["logits_dense"]["kernel"]
    params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, 1].multiply(3.0)
    return model, params


@pytest.fixture(scope="module")
def encoder_tokens():
    tokens = np.random.default_rng(0).integers(2, CONFIG.vocab_size, (6, 12)).astype(np.int32)
    tokens[1, 7:] = 0
    tokens[4, 3:] = 0
    return tokens


def _predict(model, params, tokens, rng=None, **kwargs):
    fn = jax.jit(lambda p, t, r: model.predict_batch(p, {"encoder_input_tokens": t}, rng=r, **kwargs))
    return np.asarray(fn(params, tokens, rng))


def _uncached_greedy(model, params, tokens, length):
    """Reference: rerun the full decoder on the whole prefix for every new token."""
    logits_fn = jax.jit(lambda p, b: model._logits(p, b))
    out = np.zeros((tokens.shape[0], length), np.int32)
    done = np.zeros(tokens.shape[0], bool)
    for i in range(length):
        decoder_inputs = np.pad(out, ((0, 0), (1, 0)))[:, :-1]
        logits = logits_fn(params, {"encoder_input_tokens": tokens, "decoder_input_tokens": decoder_inputs})
        token = np.where(done, 0, np.asarray(logits)[:, i].argmax(-1))
        out[:, i] = token
        done |= token == 1
    return out


def test_cached_greedy_equals_uncached_argmax(model_and_params, encoder_tokens):
    model, params = model_and_params
    cached = _predict(model, params, encoder_tokens, max_decode_length=LENGTH)
    expected = _uncached_greedy(model, params, encoder_tokens, LENGTH)
    finished = (expected == 1).any(-1)
    assert finished.any() and not finished.all(), "test needs rows that stop and rows that do not"
    np.testing.assert_array_equal(cached, expected)


def test_cached_step_logits_equal_full_forward(model_and_params, encoder_tokens):
    """Teacher-force a sequence one token at a time through the KV cache."""
    model, params = model_and_params
    decoder_inputs = np.random.default_rng(1).integers(2, CONFIG.vocab_size, (6, LENGTH)).astype(np.int32)
    decoder_inputs[:, 0] = 0
    full = model._logits(params, {"encoder_input_tokens": encoder_tokens, "decoder_input_tokens": decoder_inputs})

    encoded = model.module.apply({"params": params}, encoder_tokens, method=T5.encode)
    decode = jax.jit(lambda variables, tokens: model.module.apply(
        variables, encoded, encoder_tokens, tokens, decode=True, max_decode_length=LENGTH,
        mutable=["cache"], method=T5.decode,
    ))
    _, cache = decode({"params": params}, decoder_inputs[:, :1])  # creates the cache only
    steps = []
    for i in range(LENGTH):
        logits, cache = decode({"params": params, **cache}, decoder_inputs[:, i : i + 1])
        steps.append(logits[:, 0])
    assert int(cache["cache"]["decoder"]["index"]) == LENGTH
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), rtol=1e-5, atol=1e-5)


def _scripted_step_fn(script, calls):
    """Step function replaying fixed logits [steps, B, V]; logs (step, fed tokens) to `calls`."""
    script = jnp.asarray(script)

    def step_fn(step, tokens):
        record = lambda s, t: calls.append((int(s), np.asarray(t)[:, 0].tolist()))
        jax.debug.callback(record, step, tokens, ordered=True)
        return script[step], step + 1

    return step_fn


def test_eos_zeroes_the_rest_of_the_row_and_stops_early():
    planned = np.array([[5, 1, 6, 7, 6, 7, 6, 7],   # EOS at step 1
                        [3, 4, 5, 1, 2, 2, 2, 2]])  # EOS at step 3
    script = np.eye(8, dtype=np.float32)[planned.T] * 5.0  # argmax at step i is planned[:, i]
    calls = []
    out = jax.jit(lambda c: decoding.temperature_sample(
        _scripted_step_fn(script, calls), c, batch_size=2, max_decode_length=8
    ))(jnp.zeros((), jnp.int32))
    np.testing.assert_array_equal(out, [[5, 1, 0, 0, 0, 0, 0, 0], [3, 4, 5, 1, 0, 0, 0, 0]])
    # Four steps, not eight; each step is fed the previous token (0 once a row is done).
    assert calls == [(0, [0, 0]), (1, [5, 3]), (2, [1, 4]), (3, [0, 5])]


@pytest.mark.parametrize("top_k, top_p, kept", [
    (2, 1.0, [1, 0, 0, 1]),
    (0, 0.75, [1, 0, 0, 1]),
    (0, 0.81, [1, 0, 1, 1]),
    (3, 0.45, [0, 0, 0, 1]),
])
def test_filter_logits_keeps_top_k_and_nucleus(top_k, top_p, kept):
    probs = np.array([0.30, 0.05, 0.15, 0.50])
    filtered = np.asarray(decoding.filter_logits(jnp.log(probs)[None], top_k=top_k, top_p=top_p))[0]
    np.testing.assert_array_equal(np.isfinite(filtered), np.array(kept, bool))
    np.testing.assert_allclose(filtered[np.isfinite(filtered)], np.log(probs)[np.array(kept, bool)], rtol=1e-6)


def test_sampling_follows_the_renormalized_top_k_distribution():
    batch, length = 256, 4
    logits = np.log(np.array([0.05, 0.05, 0.45, 0.1, 0.35], np.float32))  # 1 is EOS
    step_fn = lambda cache, tokens: (jnp.broadcast_to(logits, (batch, 5)), cache)
    out = np.asarray(jax.jit(lambda r: decoding.temperature_sample(
        step_fn, (), batch_size=batch, max_decode_length=length, rng=r, temperature=1.0, top_k=2
    ))(jax.random.key(0)))
    assert set(np.unique(out)) == {2, 4}
    np.testing.assert_allclose((out == 2).mean(), 0.45 / 0.8, atol=0.05)


def test_top_k_1_and_tiny_top_p_sampling_equal_greedy(model_and_params, encoder_tokens):
    model, params = model_and_params
    greedy = _predict(model, params, encoder_tokens, max_decode_length=LENGTH)
    rng = jax.random.key(1)
    top_k = _predict(model, params, encoder_tokens, rng, max_decode_length=LENGTH, temperature=0.8, top_k=1)
    top_p = _predict(model, params, encoder_tokens, rng, max_decode_length=LENGTH, temperature=0.8, top_p=1e-6)
    np.testing.assert_array_equal(top_k, greedy)
    np.testing.assert_array_equal(top_p, greedy)


def test_num_decodes_shape_and_rng_determinism(model_and_params, encoder_tokens):
    model, params = model_and_params
    fn = jax.jit(lambda p, t, r: model.predict_batch(
        p, {"encoder_input_tokens": t}, max_decode_length=LENGTH, rng=r, temperature=2.0, num_decodes=3
    ))
    first = np.asarray(fn(params, encoder_tokens, jax.random.key(5)))
    again = np.asarray(fn(params, encoder_tokens, jax.random.key(5)))
    other = np.asarray(fn(params, encoder_tokens, jax.random.key(6)))
    assert first.shape == (encoder_tokens.shape[0], 3, LENGTH) and first.dtype == np.int32
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    assert (first[:, 0] != first[:, 1]).any(), "samples of one input should be independent"
    after_eos = np.cumsum(first == 1, axis=-1) - (first == 1) > 0
    assert (first[after_eos] == 0).all()


def test_sampling_without_rng_is_refused(model_and_params, encoder_tokens):
    model, params = model_and_params
    with pytest.raises(ValueError, match="rng"):
        model.predict_batch(params, {"encoder_input_tokens": encoder_tokens}, max_decode_length=4, temperature=1.0)
