"""The building blocks on their own: dense, norm, embedding, position encodings, the MLP, the
attention (multi-head / grouped-query / multi-query, cached decoding) and the KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import kvcache
from flan_jax.models.attention import Attention, causal_mask, mask_to_bias
from flan_jax.models.layers import (
    DenseGeneral,
    Embed,
    GatedMlp,
    RelativePositionBias,
    RMSNorm,
    apply_rope,
)

TOL = dict(rtol=1e-5, atol=1e-5)


def _normal(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize(
    "axis, features, kernel_axes",
    [((-1,), 7, ("a", "b")), ((-2, -1), 7, ("a", "b", "c")), ((1,), 7, ("a", "b")),
     ((1, 3), (6, 2), ("a", "b", "c", "d"))],
)  # fmt: skip
def test_dense_general_contracts_any_axes_as_dot_general(axis, features, kernel_axes):
    """DenseGeneral computes one 2-D matmul; contracting non-trailing axes must still equal
    dot_general of the input and kernel."""
    x = _normal(2, 3, 4, 5)
    layer = DenseGeneral(features, kernel_axes=kernel_axes, axis=axis)
    params = layer.init(jax.random.key(0), x)
    kernel = nn.unbox(params)["params"]["kernel"]
    axes = tuple(a % x.ndim for a in axis)
    expected = jax.lax.dot_general(x, kernel, ((axes, tuple(range(len(axes)))), ((), ())))
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_dense_general_init_variance_is_kernel_scale_over_fan_in():
    layer = DenseGeneral((4, 64), kernel_axes=("embed", "heads", "kv"), kernel_scale=0.5)
    kernel = nn.unbox(layer.init(jax.random.key(0), jnp.zeros((1, 512))))["params"]["kernel"]
    assert kernel.shape == (512, 4, 64)
    assert np.var(np.asarray(kernel)) == pytest.approx(0.5 / 512, rel=0.05)
    with pytest.raises(ValueError, match=r"kernel_axes \('embed',\) must name each of the 3"):
        DenseGeneral((4, 64), kernel_axes=("embed",)).init(jax.random.key(0), jnp.zeros((1, 8)))


def test_rms_norm_divides_by_the_root_mean_square_and_scales():
    x = _normal(3, 8)
    norm = RMSNorm(epsilon=1e-6)
    params = norm.init(jax.random.key(0), x)
    scale = jnp.arange(1.0, 9.0)
    out = norm.apply({"params": {"scale": scale}}, x)
    expected = x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(out, expected, **TOL)
    assert nn.get_partition_spec(params)["params"]["scale"] == jax.sharding.PartitionSpec("embed")


def test_embed_looks_up_rows_and_attends_with_the_same_table():
    embed = Embed(num_embeddings=10, features=4)
    params = embed.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    table = nn.unbox(params)["params"]["embedding"]
    tokens = jnp.asarray([[3, 0, 9]])
    np.testing.assert_array_equal(embed.apply(params, tokens), table[tokens])
    x = _normal(2, 4)
    np.testing.assert_allclose(embed.apply(params, x, method=Embed.attend), x @ table.T, **TOL)
    with pytest.raises(ValueError, match="token ids must be integers"):
        embed.apply(params, jnp.zeros((1, 2)))


def test_relative_position_bias_at_per_row_positions_equals_the_static_rows():
    relpos = RelativePositionBias(num_buckets=8, max_distance=16, num_heads=3, bidirectional=False)
    params = relpos.init(jax.random.key(0), 6, 6)
    full = relpos.apply(params, 6, 6)  # queries 0..5
    assert full.shape == (1, 3, 6, 6)
    positions = jnp.asarray([[0, 1], [4, 5], [2, 3]])
    rows = relpos.apply(params, 2, 6, positions)
    assert rows.shape == (3, 3, 2, 6)
    for row, starts in enumerate([0, 4, 2]):
        np.testing.assert_array_equal(rows[row], full[0, :, starts : starts + 2])


def test_rope_makes_query_key_products_depend_on_relative_position_only():
    q, k = _normal(1, 1, 2, 8, seed=1), _normal(1, 1, 2, 8, seed=2)
    dot = lambda pq, pk: jnp.sum(
        apply_rope(q, jnp.asarray([[pq]])) * apply_rope(k, jnp.asarray([[pk]])), axis=-1
    )
    np.testing.assert_allclose(dot(3, 1), dot(10, 8), **TOL)
    np.testing.assert_allclose(dot(0, 0), jnp.sum(q * k, axis=-1), **TOL)
    assert not np.allclose(dot(3, 1), dot(3, 2))
    with pytest.raises(ValueError, match="head dim 7 must be even"):
        apply_rope(_normal(1, 1, 7), jnp.zeros((1, 1)))


@pytest.mark.parametrize(
    "activation, fn", [("silu", jax.nn.silu), ("gelu_tanh", lambda x: jax.nn.gelu(x, True))]
)
def test_gated_mlp_is_wo_of_activated_gate_times_linear(activation, fn):
    mlp = GatedMlp(d_ff=6, activation=activation)
    x = _normal(2, 3, 4)
    p = nn.unbox(mlp.init(jax.random.key(0), x))["params"]
    kernel = lambda name: p[name]["kernel"]
    expected = (fn(x @ kernel("wi_0")) * (x @ kernel("wi_1"))) @ kernel("wo")
    np.testing.assert_allclose(mlp.apply({"params": p}, x), expected, **TOL)
    with pytest.raises(ValueError, match="activation='relu' is not one of"):
        GatedMlp(d_ff=6, activation="relu").init(jax.random.key(0), x)


def _attention_params(attention, x):
    return nn.unbox(attention.init(jax.random.key(0), x, x, jnp.zeros(()), positions=_arange(x)))


def _arange(x):
    return jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_shared_kv_heads_equal_multi_head_attention_with_repeated_kv_kernels(num_kv_heads):
    x = _normal(2, 5, 16)
    bias = mask_to_bias(causal_mask(jnp.arange(5)[None], 5))
    shared = Attention(
        num_heads=4,
        num_kv_heads=num_kv_heads,
        head_dim=8,
        scale_logits=True,
        rope_max_wavelength=1e4,
    )
    full = Attention(
        num_heads=4, num_kv_heads=4, head_dim=8, scale_logits=True, rope_max_wavelength=1e4
    )
    params = _attention_params(shared, x)["params"]
    key_shape = params["key"]["kernel"].shape
    # A single key/value head has PaLM's kernel layout, without a heads axis.
    assert key_shape == ((16, 8) if num_kv_heads == 1 else (16, num_kv_heads, 8))
    repeat = lambda k: jnp.repeat(k.reshape(16, num_kv_heads, 8), 4 // num_kv_heads, axis=1)
    full_params = {**params, "key": {"kernel": repeat(params["key"]["kernel"])},
                   "value": {"kernel": repeat(params["value"]["kernel"])}}  # fmt: skip
    out = shared.apply({"params": params}, x, x, bias, positions=_arange(x))
    expected = full.apply({"params": full_params}, x, x, bias, positions=_arange(x))
    np.testing.assert_allclose(out, expected, **TOL)


def test_attention_refuses_kv_heads_that_do_not_divide_the_heads():
    x = _normal(1, 2, 8)
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        _attention_params(Attention(num_heads=4, num_kv_heads=3, head_dim=2), x)


def test_t5_attention_has_no_logit_scaling_but_a_scaled_query_init():
    x = _normal(1, 3, 64)
    t5 = Attention(num_heads=2, num_kv_heads=2, head_dim=32)
    params = _attention_params(t5, x)["params"]
    query_var = np.var(np.asarray(params["query"]["kernel"]))
    key_var = np.var(np.asarray(params["key"]["kernel"]))
    assert query_var == pytest.approx(key_var / 32, rel=0.2)
    scaled = Attention(num_heads=2, num_kv_heads=2, head_dim=32, scale_logits=True)
    bias = jnp.zeros(())
    # The same weights with the query kernel times sqrt(32) and logits / sqrt(32) agree.
    boosted = {**params, "query": {"kernel": params["query"]["kernel"] * np.sqrt(32.0)}}
    np.testing.assert_allclose(
        t5.apply({"params": params}, x, x, bias),
        scaled.apply({"params": boosted}, x, x, bias),
        **TOL,
    )


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_cached_attention_steps_equal_the_full_pass(num_kv_heads):
    """Prefill 3 positions, then one per call, rows at different positions."""
    batch, length, cache_length = 2, 6, 8
    x = _normal(batch, length, 16)
    attention = Attention(
        num_heads=4,
        num_kv_heads=num_kv_heads,
        head_dim=8,
        scale_logits=True,
        rope_max_wavelength=1e4,
    )
    params = _attention_params(attention, x)
    full = attention.apply(
        params,
        x,
        x,
        mask_to_bias(causal_mask(jnp.arange(length)[None], length)),
        positions=_arange(x),
    )

    def call(variables, inputs, positions, index):
        bias = mask_to_bias(causal_mask(positions, cache_length))
        return attention.apply(
            variables,
            inputs,
            inputs,
            bias,
            positions=positions,
            decode=True,
            cache_index=index,
            max_decode_length=cache_length,
            mutable=["cache"],
        )

    prefill, cache = call(params, x[:, :3], _arange(x[:, :3]), jnp.zeros(batch, jnp.int32))
    np.testing.assert_allclose(prefill, full[:, :3], **TOL)
    # Row 0 continues at 3; row 1 re-writes position 2 first, then goes on.
    index = jnp.asarray([3, 2])
    rows = jnp.arange(batch)
    for _ in range(3):
        step = x[rows, index][:, None]
        out, cache = call({**params, **cache}, step, index[:, None], index)
        np.testing.assert_allclose(out[:, 0], full[rows, index], **TOL)
        index = index + 1
    assert cache["cache"]["kv_cache"]["cached_key"].shape == (batch, num_kv_heads, cache_length, 8)


def test_cross_attention_projects_the_encoder_once():
    q, encoded = _normal(2, 1, 16, seed=1), _normal(2, 7, 16, seed=2)
    attention = Attention(num_heads=2, num_kv_heads=2, head_dim=8, cross_attention=True)
    params = nn.unbox(attention.init(jax.random.key(0), q, encoded, jnp.zeros(())))
    expected = attention.apply(params, q, encoded, jnp.zeros(()))
    out, cache = attention.apply(params, q, encoded, jnp.zeros(()), decode=True, mutable=["cache"])
    np.testing.assert_allclose(out, expected, **TOL)
    assert cache["cache"]["cached_key"].shape == (2, 2, 7, 8)  # head-major
    # Later steps read the cache: other "encoder outputs" passed in change nothing.
    again, _ = attention.apply(
        {**params, **cache}, q, encoded * 0, jnp.zeros(()), decode=True, mutable=["cache"]
    )
    np.testing.assert_allclose(again, expected, **TOL)


def test_kv_cache_writes_each_row_at_its_own_position():
    cache = jnp.zeros((2, 1, 5, 1))
    new = jnp.asarray([[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]])  # [B=2, T=2, heads=1, D=1]
    written = kvcache.write(cache, new, jnp.asarray([0, 3]))
    np.testing.assert_array_equal(written[:, 0, :, 0], [[1, 2, 0, 0, 0], [0, 0, 0, 3, 4]])
    # Positions past the end are dropped, not shifted back into the cache.
    past = kvcache.write(cache, new, jnp.asarray([4, 0]))
    np.testing.assert_array_equal(past[:, 0, :, 0], [[0, 0, 0, 0, 1], [3, 4, 0, 0, 0]])


def test_kv_cache_prefills_then_appends():
    layer = kvcache.KVCache(length=4)
    key = _normal(2, 3, 2, 5)
    (k, v), cache = layer.apply({}, key, -key, jnp.zeros(2, jnp.int32), mutable=["cache"])
    assert k.shape == (2, 2, 4, 5)
    np.testing.assert_array_equal(k[:, :, :3], kvcache.heads_major(key))
    np.testing.assert_array_equal(v[:, :, :3], -kvcache.heads_major(key))
    np.testing.assert_array_equal(k[:, :, 3], 0)
    step = _normal(2, 1, 2, 5, seed=3)
    (k, _), _ = layer.apply(cache, step, step, jnp.asarray([3, 1]), mutable=["cache"])
    np.testing.assert_array_equal(k[0, :, 3], step[0, 0])
    np.testing.assert_array_equal(k[1, :, 1], step[1, 0])
    np.testing.assert_array_equal(k[0, :, :3], kvcache.heads_major(key)[0])
    with pytest.raises(ValueError, match="5 tokens do not fit a KV cache of length 4"):
        layer.apply(
            {}, _normal(1, 5, 1, 2), _normal(1, 5, 1, 2), jnp.zeros(1, jnp.int32), mutable=["cache"]
        )
