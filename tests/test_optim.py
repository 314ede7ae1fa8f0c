import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_jax import optim


def test_constant_schedule_is_the_papers():
    schedule = optim.learning_rate_schedule(5e-4)
    assert [float(schedule(s)) for s in (0, 10, 10_000)] == pytest.approx([5e-4] * 3)


def test_linear_warmup_then_constant():
    schedule = optim.learning_rate_schedule(1e-2, warmup_steps=4)
    np.testing.assert_allclose(
        [schedule(s) for s in range(6)], [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2], rtol=1e-6
    )


def test_rsqrt_decay_is_continuous_after_warmup():
    schedule = optim.learning_rate_schedule(1e-2, decay="rsqrt", warmup_steps=100)
    assert float(schedule(99)) == pytest.approx(1e-2)
    assert float(schedule(399)) == pytest.approx(1e-2 * np.sqrt(100 / 400))


def test_bad_schedules_name_the_fix():
    with pytest.raises(ValueError, match="unknown learning-rate decay 'cosine'"):
        optim.learning_rate_schedule(1e-3, decay="cosine")
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        optim.learning_rate_schedule(1e-3, decay="rsqrt")


def test_adafactor_factors_large_matrices_only():
    params = {"big": jnp.zeros((256, 128)), "small": jnp.zeros((8, 8))}
    state = optim.adafactor(1e-3).init(params)[0]
    assert state.v_row["big"].shape == (128,) and state.v_col["big"].shape == (256,)
    assert state.v["small"].shape == (8, 8)


def _run(optimizer, params, grads):
    """The params after one update per gradient tree in `grads`."""
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    for grad in grads:
        updates, state = update(grad, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _tree(rng, shapes):
    return {k: rng.normal(size=shape).astype(np.float32) for k, shape in shapes.items()}


@pytest.mark.parametrize(
    "settings", [{}, {"momentum": 0.9, "weight_decay_rate": 1e-2, "clipping_threshold": 0.5}]
)
def test_unscanned_adafactor_is_optaxs(settings):
    """Without scanned stacks the updates and the state are optax.adafactor's (checkpoints and
    T5X optimizer state carry over)."""
    rng = np.random.default_rng(0)
    shapes = {"big": (256, 128), "kernel": (130, 4, 128), "small": (8, 8), "scale": (16,)}
    params = _tree(rng, shapes)
    grads = [_tree(rng, shapes) for _ in range(3)]
    ours, our_state = _run(optim.adafactor(1e-2, **settings), params, grads)
    theirs, their_state = _run(optax.adafactor(1e-2, **settings), params, grads)
    assert jax.tree.structure(our_state) == jax.tree.structure(their_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), our_state, their_state)


def test_a_scanned_stack_is_updated_layer_by_layer():
    """A `layers` stack takes, layer by layer, the updates of the same arrays as separate
    `layers_i` params: parameter scale, update clipping and factoring per layer (optax's own
    adafactor mixes the layers, and factors these two arrays over the layer axis)."""
    rng = np.random.default_rng(1)
    layers, shapes = 3, {"w": (2, 5), "scale": (5,)}
    # Layers of very different sizes: one parameter scale or clipping for all would show.
    size = lambda i: 10.0 ** (i - 1)
    per_layer = [{k: size(i) * v for k, v in _tree(rng, shapes).items()} for i in range(layers)]
    grads = [
        [{k: size(-i) * v for k, v in _tree(rng, shapes).items()} for i in range(layers)]
        for _ in range(5)
    ]
    stack = lambda trees: {"layers": jax.tree.map(lambda *xs: np.stack(xs), *trees)}
    separate = lambda trees: {f"layers_{i}": tree for i, tree in enumerate(trees)}
    tx = lambda: optim.adafactor(1e-2, min_dim_size_to_factor=2)
    stacked, state = _run(tx(), stack(per_layer), [stack(g) for g in grads])
    unstacked, _ = _run(tx(), separate(per_layer), [separate(g) for g in grads])
    assert state[0].v_row["layers"]["w"].shape == (layers, 2)  # per-layer [2, 5] factored
    assert state[0].v["layers"]["scale"].shape == (layers, 5)  # per-layer [5] is not
    for i in range(layers):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6 * size(i)),
            stacked["layers"],
            unstacked[f"layers_{i}"],
        )
    mixed, _ = _run(
        optax.adafactor(1e-2, min_dim_size_to_factor=2), stack(per_layer), [stack(g) for g in grads]
    )
    assert not np.allclose(mixed["layers"]["w"], stacked["layers"]["w"], rtol=1e-3)
