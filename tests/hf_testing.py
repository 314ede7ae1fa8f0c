"""Tiny random Hugging Face T5 models and directories, for the tests against transformers."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96


# Differ in heads, head dim, depth and relative-position buckets / max distance. The
# sequences below are long enough to reach the log-spaced buckets of each.
HF_CONFIGS = [
    dict(
        d_model=32,
        num_heads=4,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    ),
    dict(
        d_model=24,
        num_heads=2,
        d_kv=16,
        d_ff=40,
        num_layers=3,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
    ),
    dict(
        d_model=20,
        num_heads=6,
        d_kv=4,
        d_ff=36,
        num_layers=1,
        num_decoder_layers=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=12,
    ),
]


TOL = dict(rtol=1e-4, atol=1e-4)


def random_hf_t5(seed, overrides):
    """A random tiny HF T5 v1.1 with an untied lm_head and non-trivial norms/biases."""
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        **overrides,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    d_model = overrides["d_model"]
    # transformers 5 ties lm_head to the embedding at construction; Flan-T5's is separate.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, d_model) * d_model**-0.5)
    with torch.no_grad():
        model.lm_head.weight[1] *= 1.7  # makes EOS a plausible greedy choice mid-sequence
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif "relative_attention_bias" in name:
                param.copy_(torch.randn_like(param))
    return model


def padded_tokens(rng, lengths, width, eos=False):
    tokens = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        tokens[row, :n] = rng.integers(2, VOCAB, n)
        if eos:
            tokens[row, n - 1] = 1
    return tokens


def shift_right(targets):
    return np.pad(targets, ((0, 0), (1, 0)))[:, :-1]


TEXT = [
    "translate the sentence into french please",
    "what is the answer to the question below",
    "the quick brown fox jumps over the lazy dog",
    "options yes no maybe",
]


def save_hf_dir(path, hf_model, *, max_shard_size=None):
    """save_pretrained plus a spiece.model, as a Flan-T5 hub directory holds them."""
    from tasks import vocab

    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    hf_model.save_pretrained(path, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(vocab.CACHE_DIR_ENV, os.path.join(path, "cache"))
        spm_file = vocab.sentencepiece_vocabulary(TEXT, "hf_test", hf_model.config.vocab_size)
    os.replace(spm_file.sentencepiece_model_file, os.path.join(path, "spiece.model"))
    return str(path)


def hf_logits(hf_model, batch):
    """transformers' logits for a batch of flan_jax encoder-decoder features."""
    b = {k: torch.from_numpy(v).long() for k, v in batch.items()}
    with torch.no_grad():
        return hf_model(
            input_ids=b["encoder_input_tokens"],
            attention_mask=(b["encoder_input_tokens"] != 0).long(),
            decoder_input_ids=b["decoder_input_tokens"],
        ).logits.numpy()
