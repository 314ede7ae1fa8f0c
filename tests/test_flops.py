import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from flan_jax import flops
from flan_jax.models import base, decoder, t5


def xla_train_flops(model, batch):
    """What XLA counts for the compiled gradient of the loss: an independent reference."""
    params = jax.eval_shape(lambda r: nn.unbox(model.init(r)), jax.random.key(0))
    grad = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b, None)[0]))
    analysis = grad.lower(params, batch).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_t5_flops_match_what_xla_compiles():
    config = t5.T5Config(
        vocab_size=2048,
        d_model=256,
        num_heads=4,
        d_kv=64,
        d_ff=1024,
        num_encoder_layers=2,
        num_decoder_layers=3,
    )
    b, inputs, targets = 2, 64, 32
    ones = lambda n: jnp.ones((b, n), jnp.int32)
    batch = {
        "encoder_input_tokens": ones(inputs),
        "decoder_input_tokens": ones(targets),
        "decoder_target_tokens": ones(targets),
        "decoder_loss_weights": ones(targets),
    }
    ours = b * flops.train_flops_per_sequence(config, {"inputs": inputs, "targets": targets})
    # XLA also counts elementwise work, which our matmul count leaves out.
    assert 1.0 <= xla_train_flops(base.EncoderDecoderModel(config), batch) / ours < 1.03


def test_decoder_flops_match_what_xla_compiles():
    config = decoder.DecoderConfig(
        vocab_size=2048, d_model=256, num_heads=4, head_dim=64, d_ff=1024, num_layers=3
    )
    b, inputs, targets = 2, 64, 32
    ones = jnp.ones((b, inputs + targets), jnp.int32)
    batch = {
        "decoder_input_tokens": ones,
        "decoder_target_tokens": ones,
        "decoder_loss_weights": ones,
        "decoder_causal_attention": ones,
    }
    ours = b * flops.train_flops_per_sequence(config, {"inputs": inputs, "targets": targets})
    assert 1.0 <= xla_train_flops(base.DecoderOnlyModel(config), batch) / ours < 1.03


def test_peak_is_per_device_times_devices():
    assert flops.peak_flops(1e12) == pytest.approx(1e12 * jax.device_count())
    assert flops.peak_flops() is None  # a CPU has no entry: MFU needs a measured peak
