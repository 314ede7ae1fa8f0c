import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flan_jax import model_loader, optim


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
    """Arrays of at most two dims, unscanned, take optax.adafactor's updates and state
    (checkpoints carry over), which are T5X's for them."""
    rng = np.random.default_rng(0)
    shapes = {"big": (256, 128), "tall": (130, 512), "small": (8, 8), "scale": (16,)}
    params = _tree(rng, shapes)
    grads = [_tree(rng, shapes) for _ in range(3)]
    ours, our_state = _run(optim.adafactor(1e-2, **settings), params, grads)
    theirs, their_state = _run(optax.adafactor(1e-2, **settings), params, grads)
    assert jax.tree.structure(our_state) == jax.tree.structure(their_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), our_state, their_state)


def test_an_array_of_three_dims_needs_its_logical_axes():
    params = {"attention": {"query": jnp.zeros((256, 4, 64))}}
    with pytest.raises(ValueError, match=r"\['attention'\]\['query'\] of shape \(256, 4, 64\)"):
        optim.adafactor(1e-3).init(params)
    axes = {"attention": {"query": P("embed", "heads", "kv")}}
    state = optim.adafactor(1e-3, param_axes=axes).init(params)[0]
    assert state.v_row["attention"]["query"].shape == (256,)
    assert state.v_col["attention"]["query"].shape == (4, 64)


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


# T5X's Adafactor (t5x/adafactor.py, apply_param_gradient) for one unscanned parameter as T5X
# stores it (rank <= 2: its factor rules fall back to the size heuristic), in float64 numpy:
# the settings of its t5_1_1 gins (no momentum, no weight decay).
def t5x_adafactor_step(param, grad, slots, step, lr, step_offset=0, min_dim=128):
    decay = 1.0 - (step - step_offset + 1.0) ** -0.8
    grad_sqr = grad * grad + 1e-30
    param_scale = max(np.sqrt(np.mean(param * param)), 1e-3)
    order = np.argsort(param.shape)
    if param.ndim == 2 and param.shape[order[-2]] >= min_dim:
        d1, d0 = int(order[-2]), int(order[-1])
        v_row = decay * slots["v_row"] + (1 - decay) * grad_sqr.mean(axis=d0)
        v_col = decay * slots["v_col"] + (1 - decay) * grad_sqr.mean(axis=d1)
        row_factor = (v_row / v_row.mean()) ** -0.5
        y = grad * np.expand_dims(row_factor, d0) * np.expand_dims(v_col**-0.5, d1)
        slots = {"v_row": v_row, "v_col": v_col}
    else:
        v = decay * slots["v"] + (1 - decay) * grad_sqr
        y = grad * v**-0.5
        slots = {"v": v}
    y = y / max(1.0, np.sqrt(np.mean(y * y)) / 1.0)
    return param - lr * param_scale * y, slots


# flan_jax's arrays, their logical axes and T5X's 2-D layout of them. The query's heads x kv
# (128) is smaller than embed (256), the output's equal to it: T5X's v_row keeps heads x kv.
ARRAYS = {
    "query": ((256, 2, 64), P("embed", "heads", "kv"), (256, 128)),
    "out": ((2, 64, 128), P("heads", "kv", "embed"), (128, 128)),
    "wi": ((128, 384), P("embed", "mlp"), (128, 384)),
    "relpos": ((2, 32), P("heads", "relpos_buckets"), (2, 32)),
    "scale": ((128,), P("embed"), (128,)),
}


@pytest.mark.parametrize(
    "start, step_offset, factored",
    [(0, 0, True), (1_100_000, 0, True), (1_100_000, 1_099_990, True), (0, 0, False)],
)
def test_t5xs_adafactor_formulas_for_attention_kernels(start, step_offset, factored):
    """Six steps from a fresh state, and from a continued one at step 1,100,000 (T5X counts
    the decay from its step, less step_offset), against T5X's formulas on T5X's layout;
    and unfactored (T5X's factored=False, PaLM's choice)."""
    rng = np.random.default_rng(3)
    lr, steps = 1e-2, 6
    params = {k: rng.normal(size=s).astype(np.float32) for k, (s, _, _) in ARRAYS.items()}
    axes = {k: a for k, (_, a, _) in ARRAYS.items()}
    t5x_params = {k: params[k].reshape(t).astype(np.float64) for k, (_, _, t) in ARRAYS.items()}
    optimizer = optim.adafactor(lr, step_offset=step_offset, factored=factored, param_axes=axes)
    min_dim = 128 if factored else math.inf
    state = optimizer.init(params)
    moments = state[0]
    # T5X's slots at `start`: zeros when fresh, else some positive moments, read into ours.
    t5x_slots, v_row, v_col, v = {}, {}, {}, {}
    for k, (shape, _, t5x_shape) in ARRAYS.items():
        order = np.argsort(t5x_shape)
        if moments.v_row[k].shape != (1,):
            row, col = (t5x_shape[order[-2]],), (t5x_shape[order[-1]],)
            new = lambda n: rng.uniform(0.5, 2, n) if start else np.zeros(n)  # noqa: E731
            t5x_slots[k] = {"v_row": new(row), "v_col": new(col)}
            v_row[k] = t5x_slots[k]["v_row"].reshape(moments.v_row[k].shape)
            v_col[k] = t5x_slots[k]["v_col"].reshape(moments.v_col[k].shape)
            v[k] = moments.v[k]
        else:
            t5x_slots[k] = {"v": rng.uniform(0.5, 2, t5x_shape) if start else np.zeros(t5x_shape)}
            v[k] = t5x_slots[k]["v"].reshape(shape)
            v_row[k], v_col[k] = moments.v_row[k], moments.v_col[k]
    as32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)  # noqa: E731
    state = (
        moments._replace(count=jnp.int32(start), v_row=as32(v_row), v_col=as32(v_col), v=as32(v)),
        *state[1:],
    )
    initial = jax.tree.map(np.copy, t5x_slots)
    # Every attention kernel is factored (unless factored=False), each as T5X factors its
    # 2-D layout.
    want = {"query", "out", "wi"} if factored else set()
    assert {k for k in ARRAYS if "v_row" in t5x_slots[k]} == want
    update = jax.jit(optimizer.update)
    for step in range(start, start + steps):
        grads = {k: rng.normal(size=s).astype(np.float32) for k, (s, _, _) in ARRAYS.items()}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k, (_, _, t5x_shape) in ARRAYS.items():
            t5x_params[k], t5x_slots[k] = t5x_adafactor_step(
                t5x_params[k],
                grads[k].reshape(t5x_shape).astype(np.float64),
                t5x_slots[k],
                step,
                lr,
                step_offset,
                min_dim,
            )
    assert int(state[0].count) == start + steps
    for k, (_, _, t5x_shape) in ARRAYS.items():
        got = np.asarray(params[k]).reshape(t5x_shape)
        np.testing.assert_allclose(got, t5x_params[k], rtol=1e-5, atol=1e-6)
        for slot, want in t5x_slots[k].items():
            mine = np.asarray(getattr(state[0], slot)[k]).reshape(want.shape)
            np.testing.assert_allclose(mine, want, rtol=1e-6)
            # At step 1.1M the moments move by ~1e-5 a step: their change is T5X's too, to
            # within float32's resolution of moments near 1 (a few ulps, 1.2e-7 each).
            before = initial[k][slot]
            np.testing.assert_allclose(mine - before, want - before, rtol=0.02, atol=5e-7)


# Float32 GiB of second moments that factoring every attention kernel saves, T5-small..XXL
# (full moments of [d_model, heads, d_kv] against d_model + heads * d_kv).
SAVED_GIB = {"small": 0.070, "base": 0.316, "large": 1.123, "xl": 4.496, "xxl": 17.991}


def _t5x_layout(name) -> list[tuple[int, ...]]:
    """Our dims of T5X's two dims of an attention kernel: [embed, heads*kv] or the output's
    [heads*kv, embed]."""
    return [(0, 1), (2,)] if name == "out" else [(0,), (1, 2)]


@pytest.mark.parametrize("size", list(SAVED_GIB))
def test_every_attention_kernel_of_the_t5_presets_is_factored_as_t5x_factors_it(size):
    model, _ = model_loader.model_from_gin_file(f"gin/models/t5_1_1/{size}.gin")
    boxed = jax.eval_shape(model.init, jax.random.key(0))
    params, axes = nn.unbox(boxed), nn.get_partition_spec(boxed)
    state = jax.eval_shape(optim.adafactor(1e-3, param_axes=axes).init, params)[0]
    leaves = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]  # noqa: E731
    kernels, saved, t5x_bytes = 0, 0, 0
    for (path, param), v_row, v_col, v in zip(
        leaves(params), *(jax.tree.leaves(t) for t in (state.v_row, state.v_col, state.v))
    ):
        name, shape = path[-2].key, param.shape
        t5x_shape = shape
        if name in ("query", "key", "value", "out"):
            groups = _t5x_layout(name)
            t5x_shape = tuple(math.prod(shape[d] for d in g) for g in groups)
            d1, d0 = np.argsort(t5x_shape)  # T5X's heuristic: v_row keeps d1
            assert v_row.shape == tuple(shape[d] for d in groups[d1]), path
            assert v_col.shape == tuple(shape[d] for d in groups[d0]), path
            kernels += 1
            saved += 4 * (math.prod(shape) - sum(t5x_shape))
        # T5X's own second moments for its layout: factored where the smaller of two dims
        # is at least 128, else full.
        factored = len(t5x_shape) == 2 and min(t5x_shape) >= 128
        t5x_bytes += 4 * (sum(t5x_shape) if factored else math.prod(t5x_shape))
        assert (v.shape == (1,)) == factored, path
    config = model.config
    assert kernels == 4 * (config.num_encoder_layers + 2 * config.num_decoder_layers)
    moments = [x for t in (state.v_row, state.v_col, state.v) for x in jax.tree.leaves(t)]
    assert sum(x.size * 4 for x in moments if x.shape != (1,)) == t5x_bytes
    assert saved / 2**30 == pytest.approx(SAVED_GIB[size], abs=1e-3)
