"""Autoregressive decoding: greedy and temperature sampling with top-k / top-p.

Model-agnostic: the model supplies `step_fn(cache, tokens[B, 1]) -> (logits[B, V], cache)`
over its KV cache. The whole loop is one `jax.lax.while_loop`, so it jits into a
single program and stops as soon as every row has emitted EOS.
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
    start_id: int = 0,
    eos_id: int = 1,
) -> jax.Array:
    """Generates int32 [batch_size, max_decode_length] tokens, without the start token.

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
        jnp.full((batch_size,), start_id, jnp.int32),
        jnp.zeros((batch_size, max_decode_length), jnp.int32),
        jnp.zeros((batch_size,), bool),
        cache,
    )
    return jax.lax.while_loop(not_finished, body, state)[2]
