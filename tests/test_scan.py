"""Layer stacks (models/scan.py): rematerialized layers give the same loss and gradients."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

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
