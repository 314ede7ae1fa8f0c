"""Greedy / sampled / beam decoding: KV cache correctness, EOS handling, filters, rng use,
beam scores and length penalty."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import decoding
from flan_jax.models.base import DecoderOnlyModel, EncoderDecoderModel
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.t5 import T5, T5Config

CONFIG = T5Config(
    vocab_size=40,
    d_model=24,
    num_heads=3,
    d_kv=8,
    d_ff=32,
    num_encoder_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
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
    fn = jax.jit(
        lambda p, t, r: model.predict_batch(p, {"encoder_input_tokens": t}, rng=r, **kwargs)
    )
    return np.asarray(fn(params, tokens, rng))


def _uncached_greedy(model, params, tokens, length):
    """Reference: rerun the full decoder on the whole prefix for every new token."""
    logits_fn = jax.jit(lambda p, b: model._logits(p, b))
    out = np.zeros((tokens.shape[0], length), np.int32)
    done = np.zeros(tokens.shape[0], bool)
    for i in range(length):
        decoder_inputs = np.pad(out, ((0, 0), (1, 0)))[:, :-1]
        logits = logits_fn(
            params, {"encoder_input_tokens": tokens, "decoder_input_tokens": decoder_inputs}
        )
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
    decoder_inputs = (
        np.random.default_rng(1).integers(2, CONFIG.vocab_size, (6, LENGTH)).astype(np.int32)
    )
    decoder_inputs[:, 0] = 0
    full = model._logits(
        params, {"encoder_input_tokens": encoder_tokens, "decoder_input_tokens": decoder_inputs}
    )

    encoded = model.module.apply({"params": params}, encoder_tokens, method=T5.encode)
    decode = jax.jit(
        lambda variables, tokens: model.module.apply(
            variables,
            encoded,
            encoder_tokens,
            tokens,
            decode=True,
            max_decode_length=LENGTH,
            mutable=["cache"],
            method=T5.decode,
        )
    )
    logits, cache = decode({"params": params}, decoder_inputs[:, :1])  # prefills position 0
    steps = [logits[:, 0]]
    for i in range(1, LENGTH):
        logits, cache = decode({"params": params, **cache}, decoder_inputs[:, i : i + 1])
        steps.append(logits[:, 0])
    np.testing.assert_array_equal(cache["cache"]["decoder"]["index"], LENGTH)  # every row
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
    planned = np.array(
        [
            [5, 1, 6, 7, 6, 7, 6, 7],  # EOS at step 1
            [3, 4, 5, 1, 2, 2, 2, 2],
        ]
    )  # EOS at step 3
    script = np.eye(8, dtype=np.float32)[planned.T] * 5.0  # argmax at step i is planned[:, i]
    calls = []
    out = jax.jit(
        lambda c: decoding.temperature_sample(
            _scripted_step_fn(script, calls), c, batch_size=2, max_decode_length=8
        )
    )(jnp.zeros((), jnp.int32))
    np.testing.assert_array_equal(out, [[5, 1, 0, 0, 0, 0, 0, 0], [3, 4, 5, 1, 0, 0, 0, 0]])
    # Four steps, not eight; each step is fed the previous token (0 once a row is done).
    assert calls == [(0, [0, 0]), (1, [5, 3]), (2, [1, 4]), (3, [0, 5])]


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [
        (2, 1.0, [1, 0, 0, 1]),
        (0, 0.75, [1, 0, 0, 1]),
        (0, 0.81, [1, 0, 1, 1]),
        (3, 0.45, [0, 0, 0, 1]),
    ],
)
def test_filter_logits_keeps_top_k_and_nucleus(top_k, top_p, kept):
    probs = np.array([0.30, 0.05, 0.15, 0.50])
    filtered = np.asarray(decoding.filter_logits(jnp.log(probs)[None], top_k=top_k, top_p=top_p))[0]
    np.testing.assert_array_equal(np.isfinite(filtered), np.array(kept, bool))
    np.testing.assert_allclose(
        filtered[np.isfinite(filtered)], np.log(probs)[np.array(kept, bool)], rtol=1e-6
    )


def test_sampling_follows_the_renormalized_top_k_distribution():
    batch, length = 256, 4
    logits = np.log(np.array([0.05, 0.05, 0.45, 0.1, 0.35], np.float32))  # 1 is EOS
    step_fn = lambda cache, tokens: (jnp.broadcast_to(logits, (batch, 5)), cache)
    out = np.asarray(
        jax.jit(
            lambda r: decoding.temperature_sample(
                step_fn,
                (),
                batch_size=batch,
                max_decode_length=length,
                rng=r,
                temperature=1.0,
                top_k=2,
            )
        )(jax.random.key(0))
    )
    assert set(np.unique(out)) == {2, 4}
    np.testing.assert_allclose((out == 2).mean(), 0.45 / 0.8, atol=0.05)


def test_top_k_1_and_tiny_top_p_sampling_equal_greedy(model_and_params, encoder_tokens):
    model, params = model_and_params
    greedy = _predict(model, params, encoder_tokens, max_decode_length=LENGTH)
    rng = jax.random.key(1)
    top_k = _predict(
        model, params, encoder_tokens, rng, max_decode_length=LENGTH, temperature=0.8, top_k=1
    )
    top_p = _predict(
        model, params, encoder_tokens, rng, max_decode_length=LENGTH, temperature=0.8, top_p=1e-6
    )
    np.testing.assert_array_equal(top_k, greedy)
    np.testing.assert_array_equal(top_p, greedy)


def test_num_decodes_shape_and_rng_determinism(model_and_params, encoder_tokens):
    model, params = model_and_params
    fn = jax.jit(
        lambda p, t, r: model.predict_batch(
            p,
            {"encoder_input_tokens": t},
            max_decode_length=LENGTH,
            rng=r,
            temperature=2.0,
            num_decodes=3,
        )
    )
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
        model.predict_batch(
            params, {"encoder_input_tokens": encoder_tokens}, max_decode_length=4, temperature=1.0
        )


# --- Beam search ---

PROMPT_LENGTHS = np.array([3, 7, 1, 5, 2, 4])


@pytest.fixture(scope="module")
def decoder_only():
    """A tiny PaLM-style model (EOS made likelier) and a batch of prompts of different lengths."""
    config = DecoderConfig(
        vocab_size=40, d_model=24, num_heads=3, head_dim=8, d_ff=32, num_layers=2
    )
    model = DecoderOnlyModel(config)
    params = nn.unbox(model.init(jax.random.key(0)))
    embedding = params["token_embedder"]["embedding"]
    params["token_embedder"]["embedding"] = embedding.at[1].multiply(2.5)
    tokens = np.random.default_rng(2).integers(2, 40, (6, 8)).astype(np.int32)
    tokens[:, 0] = 0
    prefix = (np.arange(8)[None] < PROMPT_LENGTHS[:, None]).astype(np.int32)
    return model, params, {"decoder_input_tokens": tokens, "decoder_causal_attention": prefix}


@pytest.fixture(scope="module", params=["encoder_decoder", "decoder_only"])
def family(request, model_and_params, encoder_tokens, decoder_only):
    if request.param == "encoder_decoder":
        model, params = model_and_params
        return model, params, {"encoder_input_tokens": encoder_tokens}
    return decoder_only


def _through_eos_weights(tokens):
    """1 up to and including each row's first EOS (everything if there is none)."""
    after_eos = np.cumsum(tokens == 1, axis=-1) - (tokens == 1) > 0
    return (~after_eos).astype(np.float32)


def _sequence_log_probs(model, params, batch, tokens):
    """[N] log p(tokens through EOS | input) by a full forward pass, for each row of tokens
    [N, L] (N a multiple of the batch size; rows repeat the inputs in order)."""
    copies = tokens.shape[0] // next(iter(batch.values())).shape[0]
    batch = {k: np.repeat(v, copies, axis=0) for k, v in batch.items()}
    weights = _through_eos_weights(tokens)
    if isinstance(model, EncoderDecoderModel):
        scored = {
            **batch,
            "decoder_target_tokens": tokens,
            "decoder_loss_weights": weights,
            "decoder_input_tokens": np.pad(tokens, ((0, 0), (1, 0)))[:, :-1],
        }
    else:  # prefix-LM rows: prompt, then the generated tokens
        lengths = batch["decoder_causal_attention"].sum(1)
        inputs = np.zeros((tokens.shape[0], lengths.max() + tokens.shape[1]), np.int32)
        loss_weights = np.zeros(inputs.shape, np.float32)
        for row, n in enumerate(lengths):
            inputs[row, :n] = batch["decoder_input_tokens"][row, :n]
            inputs[row, n : n + tokens.shape[1]] = tokens[row]
            loss_weights[row, n - 1 : n - 1 + tokens.shape[1]] = weights[row]
        prefix = (np.arange(inputs.shape[1])[None] < lengths[:, None]).astype(np.int32)
        scored = {
            "decoder_input_tokens": inputs,
            "decoder_causal_attention": prefix,
            "decoder_target_tokens": np.pad(inputs, ((0, 0), (0, 1)))[:, 1:],
            "decoder_loss_weights": loss_weights,
        }
    return np.asarray(jax.jit(model.score_batch)(params, scored))


def test_one_beam_equals_greedy(family):
    model, params, batch = family
    predict = jax.jit(
        lambda p, b, **kw: model.predict_batch(p, b, max_decode_length=LENGTH, **kw),
        static_argnames=("num_beams", "length_penalty"),
    )
    greedy = np.asarray(predict(params, batch))
    beam = np.asarray(predict(params, batch, num_beams=1, length_penalty=0.0))
    finished = (greedy == 1).any(-1)
    assert finished.any() and not finished.all(), "test needs rows that stop and rows that do not"
    np.testing.assert_array_equal(beam, greedy)


def test_beam_scores_are_true_log_probs_and_beat_greedy(family):
    model, params, batch = family
    beams = 4

    def search(p, b):
        step_fn, cache, start = model._decoding_state(p, b, copies=beams, max_decode_length=LENGTH)
        return decoding.beam_search(
            step_fn,
            cache,
            batch_size=start.shape[0] // beams,
            beam_size=beams,
            max_decode_length=LENGTH,
            length_penalty=0.0,
            start_tokens=start[::beams],
        )

    sequences, scores = map(np.asarray, jax.jit(search)(params, batch))
    batch_size = scores.shape[0]
    assert (np.diff(scores, axis=1) <= 0).all(), "beams must come best first"
    # Scores the KV cache produced (reordered at every step) match a full forward pass.
    recomputed = _sequence_log_probs(
        model, params, batch, sequences.reshape(batch_size * beams, LENGTH)
    )
    np.testing.assert_allclose(recomputed.reshape(batch_size, beams), scores, rtol=1e-4, atol=1e-4)
    assert (sequences[:, 0] != sequences[:, 1]).any(1).all(), "beams must be distinct"
    greedy = np.asarray(
        jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_length=LENGTH))(params, batch)
    )
    greedy_scores = _sequence_log_probs(model, params, batch, greedy)
    assert (scores[:, 0] >= greedy_scores - 1e-4).all()
    assert (scores[:, 0] > greedy_scores + 1e-3).any(), (
        "beam search should find better sequences somewhere"
    )


def _bigram_step_fn(table):
    """Next-token log-probs depend on the token fed only: log p(next | last) = table[last]."""
    table = jnp.log(jnp.asarray(table, jnp.float32))
    return lambda cache, tokens: (table[tokens[:, 0]], cache)


def test_length_penalty_prefers_longer_sequences():
    # From the start (0): EOS (p=.5) or 2 (p=.45); then 2 -> 3 -> EOS with p=.95 each.
    # Short [1]: log p = -0.69. Long [2, 3, 1]: log p = -0.90, but divided by
    # ((5 + 3) / 6)^alpha it wins once alpha is large enough.
    table = np.full((5, 5), 0.0125)
    table[0, [1, 2]] = [0.5, 0.45]
    table[2, 3] = table[3, 1] = 0.95
    table[1, 1] = table[4, 1] = 0.95

    def search(alpha):
        sequences, scores = decoding.beam_search(
            _bigram_step_fn(table / table.sum(1, keepdims=True)),
            jnp.zeros((2,)),
            batch_size=1,
            beam_size=2,
            max_decode_length=5,
            length_penalty=alpha,
        )
        return np.asarray(sequences)[0, 0], float(scores[0, 0])

    short, score = search(0.0)
    np.testing.assert_array_equal(short, [1, 0, 0, 0, 0])
    assert score == pytest.approx(np.log(0.5 / table[0].sum()), rel=1e-5)
    long, score = search(2.0)
    np.testing.assert_array_equal(long, [2, 3, 1, 0, 0])
    expected = np.log(0.45 / table[0].sum()) + 2 * np.log(0.95 / table[2].sum())
    assert score == pytest.approx(expected / (8 / 6) ** 2, rel=1e-5)


def test_beam_search_refuses_sampling_arguments(model_and_params, encoder_tokens):
    model, params = model_and_params
    with pytest.raises(ValueError, match=r"num_beams=2\) is deterministic"):
        model.predict_batch(
            params,
            {"encoder_input_tokens": encoder_tokens},
            max_decode_length=4,
            num_beams=2,
            temperature=1.0,
        )
    with pytest.raises(ValueError, match="num_beams=2 must be >= num_decodes=3"):
        model.predict_batch(
            params,
            {"encoder_input_tokens": encoder_tokens},
            max_decode_length=4,
            num_beams=2,
            num_decodes=3,
        )
