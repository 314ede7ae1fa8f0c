"""Training FLOPs counted from a model's config, and MFU against the devices' peak.

Counts the matmuls a step performs (forward 2 FLOPs per multiply-add, backward twice that),
including attention scores over the full (unmasked) sequence, as the PaLM paper's
6N + 12·L·H·Q·T does. Elementwise work, norms and softmax are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

# Dense bfloat16 peak FLOP/s of one device, by jax's `device_kind`. MFU on anything else
# needs `peak_flops_per_device` from gin (e.g. a measured fp32 matmul peak on a CPU).
PEAK_FLOPS_PER_DEVICE = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def _t5_forward_flops(config, inputs_length: int, targets_length: int) -> float:
    d, attn, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    mlp = 3 * d * d_ff  # gated GELU: wi_0, wi_1, wo
    encoder = (
        inputs_length
        * config.num_encoder_layers
        * (2 * (4 * d * attn + mlp) + 4 * inputs_length * attn)
    )
    decoder = config.num_decoder_layers * (
        targets_length * (2 * (6 * d * attn + mlp) + 4 * (targets_length + inputs_length) * attn)
        + inputs_length * 2 * (2 * d * attn)  # cross-attention keys and values
    )
    logits = targets_length * 2 * d * config.vocab_size
    return encoder + decoder + logits


def _decoder_forward_flops(config, length: int) -> float:
    d, heads = config.d_model, config.num_heads * config.head_dim
    kv = 2 * config.num_kv_heads * config.head_dim  # key and value heads (1 for multi-query)
    per_token = config.num_layers * (
        2 * (d * heads + d * kv + heads * d + 3 * d * config.d_ff) + 4 * length * heads
    )
    return length * (per_token + 2 * d * config.vocab_size)


def train_flops_per_sequence(config, feature_lengths: Mapping[str, int]) -> float:
    """FLOPs of one forward+backward pass over one (packed) sequence of these lengths."""
    if hasattr(config, "num_encoder_layers"):
        forward = _t5_forward_flops(config, feature_lengths["inputs"], feature_lengths["targets"])
    else:
        forward = _decoder_forward_flops(config, sum(feature_lengths.values()))
    return 3 * forward


def peak_flops(peak_flops_per_device: float | None = None) -> float | None:
    """Peak FLOP/s of all devices of the run, or None when the device kind is unknown."""
    per_device = peak_flops_per_device or PEAK_FLOPS_PER_DEVICE.get(jax.devices()[0].device_kind)
    return None if per_device is None else per_device * jax.device_count()
