"""Layer stacks (models/scan.py): rematerialized layers give the same loss and gradients, and
scanned layers train as unscanned ones."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from flan_jax import optim, partitioning
from flan_jax.models import decoder, t5
from flan_jax.models.base import DecoderOnlyModel, EncoderDecoderModel


@pytest.mark.parametrize("policy, scan_layers", [("full", True), ("dots", False)])
@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_remat_gives_the_same_loss_and_grads(
    family, policy, scan_layers, tiny_config, fixed_batch, tiny_decoder_config, prefix_lm_batch
):
    if family == "t5":
        model_cls, config, batch = EncoderDecoderModel, tiny_config, fixed_batch
    else:
        model_cls, config, batch = DecoderOnlyModel, tiny_decoder_config, prefix_lm_batch(True)
    config = dataclasses.replace(config, dropout_rate=0.1, scan_layers=scan_layers)
    plain = model_cls(config)
    remat = model_cls(dataclasses.replace(config, remat_policy=policy))
    params = nn.unbox(plain.init(jax.random.key(0)))
    # Dropout on: remat must replay the same masks in the backward pass. An "rbg" key
    # compiles several times faster on CPU than the default threefry.
    dropout_rng = jax.random.key(1, impl="rbg")
    grad = lambda m: jax.jit(jax.value_and_grad(lambda p: m.loss_fn(p, batch, dropout_rng)[0]))
    loss, grads = grad(plain)(params)
    remat_loss, remat_grads = grad(remat)(params)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads
    )


def _decoder_batch(vocab_size):
    rng = np.random.default_rng(1)
    targets = rng.integers(2, vocab_size, (8, 12)).astype(np.int32)
    prefix = (np.arange(12)[None] < rng.integers(2, 8, (8, 1))).astype(np.int32)
    return {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_causal_attention": prefix,
        "decoder_loss_weights": 1 - prefix,
    }


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_scanned_layers_train_like_unscanned(family, tiny_config, fixed_batch, tiny_decoder_config):
    """5 Adafactor steps from the same weights give the same parameters, layer by layer: the
    stacked `layers` axis is a batch axis for the parameter scale, the update clipping and
    the factored second moments."""
    if family == "t5":
        model_cls, module, batch = EncoderDecoderModel, t5, fixed_batch
        config = dataclasses.replace(tiny_config, num_encoder_layers=2, num_decoder_layers=2)
    else:
        model_cls, module = DecoderOnlyModel, decoder
        config, batch = tiny_decoder_config, _decoder_batch(64)

    def train(model, params):
        # min_dim_size_to_factor=2: every array of two or more dims per layer is factored,
        # and optax's own would factor the stacked norm scales [2, d_model] over the layers.
        axes = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0)))
        optimizer = optim.adafactor(1e-2, min_dim_size_to_factor=2, param_axes=axes)

        @jax.jit
        def step(params, state):
            grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = optimizer.init(params)
        for _ in range(5):
            params, state = step(params, state)
        return jax.device_get(params)

    # Each layer's parameters and gradients have RMS of their own, which optax's adafactor
    # would replace by the stack's.
    params = jax.device_get(nn.unbox(model_cls(config).init(jax.random.key(0))))
    unscanned = train(model_cls(config), params)
    scanned_config = dataclasses.replace(config, scan_layers=True)
    scanned = train(model_cls(scanned_config), module.scan_params(params, config))
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), unscanned, params)
    assert all(jax.tree.leaves(moved))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
        module.unscan_params(scanned, config),
        unscanned,
    )


def test_scanned_optimizer_state_is_sharded_like_its_layers(tiny_decoder_config):
    """Factored moments of a stack drop per-layer axes, never the layer axis: with 16 layers,
    optax's own rule would factor the query kernel [16, 32, 4, 8] over layers and embed."""
    P = jax.sharding.PartitionSpec
    config = dataclasses.replace(tiny_decoder_config, num_layers=16, scan_layers=True)
    boxed = jax.eval_shape(DecoderOnlyModel(config).init, jax.random.key(0))
    params, specs = nn.unbox(boxed), nn.get_partition_spec(boxed)
    optimizer = optim.adafactor(1e-2, min_dim_size_to_factor=2, param_axes=specs)
    state = jax.eval_shape(optimizer.init, params)
    state_specs = partitioning.optimizer_state_specs(state, params, specs)
    query = lambda tree: tree["layers"]["attention"]["query"]["kernel"]
    # Per layer as T5X stores it, [embed 32, heads x kv 32]: v_row keeps embed.
    assert query(state[0].v_row).shape == (16, 32)
    assert query(state_specs[0].v_row) == P("layers", "embed")
    assert query(state_specs[0].v_col) == P("layers", "heads", "kv")
