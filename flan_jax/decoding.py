"""Autoregressive decoding: greedy, temperature sampling with top-k / top-p, beam search.

Model-agnostic: the model supplies `step_fn(cache, tokens[B, 1]) -> (logits[B, V], cache)`
over its KV cache. Each loop is one `jax.lax.while_loop`, so it jits into a single
program and stops as soon as no row can change any more.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


def _check_filters(top_k: int, top_p: float) -> None:
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 disables it)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1 disables it)")


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets to -inf every logit outside the top_k largest and outside the nucleus.

    The nucleus is the smallest set of most likely tokens whose probability reaches
    top_p; the most likely token is always kept. top_k=0 / top_p=1 disable a filter.
    """
    _check_filters(top_k, top_p)
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def temperature_sample(
    step_fn: StepFn,
    cache: Any,
    *,
    batch_size: int,
    max_decode_length: int,
    rng: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    start_tokens: int | jax.Array = 0,
    eos_id: int = 1,
) -> jax.Array:
    """Generates int32 [batch_size, max_decode_length] tokens, without the start token.

    start_tokens is what step 0 is fed: one id for every row or [batch_size] ids.

    temperature 0 is greedy (argmax); otherwise tokens are drawn from
    softmax(filter_logits(logits / temperature)) with rng folded with the step number,
    so a fixed rng gives fixed samples. Each row keeps its first EOS and is zero after it.
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if temperature > 0 and rng is None:
        raise ValueError(f"temperature={temperature} samples and needs an rng (a jax PRNG key)")
    _check_filters(top_k, top_p)

    def choose(logits, step):
        if temperature == 0.0:
            return jnp.argmax(logits, axis=-1)
        logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

    def not_finished(state):
        step, _, _, done, _ = state
        return (step < max_decode_length) & ~jnp.all(done)

    def body(state):
        step, last, out, done, cache = state
        logits, cache = step_fn(cache, last[:, None])
        token = choose(logits.astype(jnp.float32), step).astype(jnp.int32)
        token = jnp.where(done, 0, token)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, out, done | (token == eos_id), cache

    state = (
        jnp.zeros((), jnp.int32),
        jnp.broadcast_to(jnp.asarray(start_tokens, jnp.int32), (batch_size,)),
        jnp.zeros((batch_size, max_decode_length), jnp.int32),
        jnp.zeros((batch_size,), bool),
        cache,
    )
    return jax.lax.while_loop(not_finished, body, state)[2]


def length_penalty_divisor(length: jax.Array, alpha: float) -> jax.Array:
    """Google NMT's ((5 + length) / 6)^alpha; beam scores are log-probs divided by it."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: jax.Array, beam_indices: jax.Array) -> jax.Array:
    """x [B, beams, ...] -> [B, new_beams, ...] at beam_indices [B, new_beams]."""
    indices = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, indices, axis=1)


def _reorder_cache(cache: Any, beam_indices: jax.Array) -> Any:
    """Reorders a cache of flattened rows [B * beams, ...] to the beams [B, beams] picked.

    Scalar leaves (e.g. a cache index shared by all rows) are the same for every beam.
    """
    batch_size, beam_size = beam_indices.shape
    rows = (jnp.arange(batch_size)[:, None] * beam_size + beam_indices).reshape(-1)

    def reorder(x):
        if x.ndim == 0:
            return x
        if x.shape[0] != batch_size * beam_size:
            raise ValueError(
                f"cache leaf of shape {x.shape} must have batch_size * beam_size = "
                f"{batch_size * beam_size} rows (repeat each input beam_size times) or be a scalar"
            )
        return x[rows]

    return jax.tree.map(reorder, cache)


def beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    batch_size: int,
    beam_size: int,
    max_decode_length: int,
    length_penalty: float = 0.6,
    start_tokens: int | jax.Array = 0,
    eos_id: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Beam search; returns int32 sequences [B, beam_size, max_decode_length] and their
    float32 scores [B, beam_size], best first.

    `cache` holds batch_size * beam_size rows, beam-minor (row b * beam_size + k, what
    jnp.repeat(x, beam_size, axis=0) gives); it is reordered as beams are selected.
    start_tokens: one id or [batch_size] ids. A finished sequence (EOS included) scores
    log p / length_penalty_divisor(its length); one without EOS by max_decode_length is
    scored at the length it reached. With beam_size 1 and length_penalty 0 this is greedy
    decoding; a positive length_penalty can keep a beam going past the greedy EOS, since
    it divides longer sequences by more. Tokens after a sequence's EOS are 0.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be >= 1")
    b, k, length = batch_size, beam_size, max_decode_length
    divisor = lambda n: length_penalty_divisor(n, length_penalty)
    neg_inf = jnp.float32(-jnp.inf)

    def not_finished(state):
        step, _, _, live_log_probs, _, finished_scores, _ = state
        # The best score a live beam can still reach: its log-prob only falls and the
        # divisor is monotone in length, so the extreme is at step or at max length.
        best_divisor = jnp.maximum(divisor(jnp.maximum(step, 1)), divisor(length))
        best_live = jnp.max(live_log_probs, axis=1) / best_divisor
        return (step < length) & jnp.any(best_live > jnp.min(finished_scores, axis=1))

    def body(state):
        step, last, live_seqs, live_log_probs, finished_seqs, finished_scores, cache = state
        logits, cache = step_fn(cache, last.reshape(b * k, 1))
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        vocab = log_probs.shape[-1]
        candidates = (live_log_probs[..., None] + log_probs.reshape(b, k, vocab)).reshape(b, -1)
        # Of 2k candidates at most k end in EOS, so k always stay live.
        top_log_probs, top_indices = jax.lax.top_k(candidates, 2 * k)
        top_beams, top_tokens = top_indices // vocab, (top_indices % vocab).astype(jnp.int32)
        top_seqs = jax.lax.dynamic_update_slice(
            _gather_beams(live_seqs, top_beams), top_tokens[..., None], (0, 0, step)
        )
        ends = top_tokens == eos_id

        live_log_probs, keep = jax.lax.top_k(jnp.where(ends, neg_inf, top_log_probs), k)
        live_seqs = _gather_beams(top_seqs, keep)
        last = _gather_beams(top_tokens, keep)
        cache = _reorder_cache(cache, _gather_beams(top_beams, keep))

        # An EOS candidate finishes only if it ranks among the k best, as a beam would;
        # so one beam at length_penalty 0 is greedy decoding.
        ranked_in = jnp.arange(2 * k) < k
        new_scores = jnp.where(ends & ranked_in, top_log_probs / divisor(step + 1), neg_inf)
        finished_scores, keep = jax.lax.top_k(
            jnp.concatenate([finished_scores, new_scores], axis=1), k
        )
        finished_seqs = _gather_beams(jnp.concatenate([finished_seqs, top_seqs], axis=1), keep)
        return step + 1, last, live_seqs, live_log_probs, finished_seqs, finished_scores, cache

    start = jnp.asarray(start_tokens, jnp.int32)
    # All beams start identical: only the first may expand at step 0.
    first_only = jnp.asarray([0.0] + [-jnp.inf] * (k - 1), jnp.float32)
    state = (
        jnp.zeros((), jnp.int32),
        jnp.broadcast_to(start[:, None] if start.ndim else start, (b, k)),
        jnp.zeros((b, k, length), jnp.int32),
        jnp.tile(first_only, (b, 1)),
        jnp.zeros((b, k, length), jnp.int32),
        jnp.full((b, k), -jnp.inf, jnp.float32),
        cache,
    )
    step, _, live_seqs, live_log_probs, finished_seqs, finished_scores, _ = jax.lax.while_loop(
        not_finished, body, state
    )
    live_scores = live_log_probs / divisor(step)
    scores, keep = jax.lax.top_k(jnp.concatenate([finished_scores, live_scores], axis=1), k)
    sequences = _gather_beams(jnp.concatenate([finished_seqs, live_seqs], axis=1), keep)
    return sequences, scores
