"""flan_jax T5 against transformers' PyTorch T5ForConditionalGeneration, weight for weight."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_testing import HF_CONFIGS, TOL, VOCAB, padded_tokens, random_hf_t5, shift_right

from flan_jax.interop.hf_t5 import params_from_hf, t5_config_from_hf
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.models.layers import relative_position_bucket
from flan_jax.models.t5 import T5, scan_params, unscan_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=range(len(HF_CONFIGS)), ids=lambda i: f"config{i}")
def case(request):
    i = request.param
    hf = random_hf_t5(seed=i, overrides=HF_CONFIGS[i])
    config = t5_config_from_hf(hf.config.to_dict())
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    rng = np.random.default_rng(i)
    targets = padded_tokens(rng, [18, 9, 4], 18, eos=True)
    batch = {
        "encoder_input_tokens": padded_tokens(rng, [20, 13, 5], 20),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": shift_right(targets),
    }
    return dict(
        hf=hf, model=EncoderDecoderModel(config), params=params_from_hf(state, config), batch=batch
    )


def _hf_logits(case):
    b = {k: torch.from_numpy(v).long() for k, v in case["batch"].items()}
    with torch.no_grad():
        out = case["hf"](
            input_ids=b["encoder_input_tokens"],
            attention_mask=(b["encoder_input_tokens"] != 0).long(),
            decoder_input_ids=b["decoder_input_tokens"],
        )
    return out.logits.numpy()


def test_encoder_outputs_match_hf(case):
    tokens = case["batch"]["encoder_input_tokens"]
    with torch.no_grad():
        expected = (
            case["hf"]
            .encoder(
                input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(tokens != 0).long(),
            )
            .last_hidden_state.numpy()
        )
    model = case["model"]
    encoded = jax.jit(lambda p, t: model.module.apply({"params": p}, t, method=T5.encode))(
        case["params"], tokens
    )
    real = tokens != 0  # padding positions are never attended to, so their values are free
    np.testing.assert_allclose(np.asarray(encoded)[real], expected[real], **TOL)


def test_logits_match_hf(case):
    model, batch = case["model"], case["batch"]
    logits = jax.jit(lambda p, b: model._logits(p, b))(case["params"], batch)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(case), **TOL)


def test_score_batch_matches_hf_log_likelihood(case):
    model, batch = case["model"], case["batch"]
    scores = jax.jit(model.score_batch)(case["params"], batch)
    log_probs = torch.log_softmax(torch.from_numpy(_hf_logits(case)), -1).numpy()
    targets = batch["decoder_target_tokens"]
    token_ll = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = (token_ll * (targets != 0)).sum(-1)
    np.testing.assert_allclose(np.asarray(scores), expected, **TOL)


def test_greedy_predict_matches_hf_generate(case):
    model, length = case["model"], 20
    tokens = padded_tokens(np.random.default_rng(7), [16, 11, 6, 3, 16, 9], 16)
    predict = jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_length=length))
    ours = np.asarray(predict(case["params"], {"encoder_input_tokens": tokens}))
    ids = torch.from_numpy(tokens).long()
    with torch.no_grad():
        hf = (
            case["hf"]
            .generate(
                input_ids=ids,
                attention_mask=(ids != 0).long(),
                do_sample=False,
                num_beams=1,
                max_new_tokens=length,
                use_cache=False,  # HF's cache assumes decoder depth == encoder depth
            )
            .numpy()[:, 1:]
        )  # drop the decoder start token
    expected = np.zeros_like(ours)
    expected[:, : hf.shape[1]] = hf
    assert (ours == 1).any(), "seeds should make some row emit EOS, exercising early stop"
    np.testing.assert_array_equal(ours, expected)


def test_packed_row_equals_separate_examples(case):
    model, params = case["model"], case["params"]
    rng = np.random.default_rng(3)
    inputs = [rng.integers(2, VOCAB, n).astype(np.int32) for n in (7, 9)]
    targets = [np.append(rng.integers(2, VOCAB, n - 1), 1).astype(np.int32) for n in (5, 8)]
    logits_fn = jax.jit(lambda p, b: model._logits(p, b))

    separate = []
    for enc, tgt in zip(inputs, targets):
        batch = {"encoder_input_tokens": enc[None], "decoder_input_tokens": shift_right(tgt[None])}
        separate.append(np.asarray(logits_fn(params, batch))[0])

    def pack(seqs, width):
        tokens, segments = np.zeros((1, width), np.int32), np.zeros((1, width), np.int32)
        start = 0
        for seg, seq in enumerate(seqs, 1):
            tokens[0, start : start + len(seq)], segments[0, start : start + len(seq)] = seq, seg
            start += len(seq)
        return tokens, segments

    enc_tokens, enc_segments = pack(inputs, 20)
    dec_inputs, dec_segments = pack([shift_right(t[None])[0] for t in targets], 16)
    packed = np.asarray(
        logits_fn(
            params,
            {
                "encoder_input_tokens": enc_tokens,
                "encoder_segment_ids": enc_segments,
                "decoder_input_tokens": dec_inputs,
                "decoder_segment_ids": dec_segments,
            },
        )
    )[0]
    np.testing.assert_allclose(packed[:5], separate[0], **TOL)
    np.testing.assert_allclose(packed[5:13], separate[1], **TOL)


def test_relative_position_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-600, 600)
    for num_buckets, max_distance in [(32, 128), (8, 20), (16, 12), (64, 300)]:
        for bidirectional in (True, False):
            ours = relative_position_bucket(
                relative,
                bidirectional=bidirectional,
                num_buckets=num_buckets,
                max_distance=max_distance,
            )
            theirs = T5Attention._relative_position_bucket(
                torch.from_numpy(relative),
                bidirectional=bidirectional,
                num_buckets=num_buckets,
                max_distance=max_distance,
            ).numpy()
            np.testing.assert_array_equal(ours, theirs)


FLAN_T5_SMALL_CONFIG = {  # as in google/flan-t5-small's config.json
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 1024,
    "num_layers": 8,
    "num_decoder_layers": 8,
    "num_heads": 6,
    "dropout_rate": 0.1,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "is_encoder_decoder": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def test_config_from_hf_reads_flan_t5_small():
    config = t5_config_from_hf(FLAN_T5_SMALL_CONFIG)
    assert (config.d_model, config.num_heads, config.d_kv, config.d_ff) == (512, 6, 64, 1024)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (8, 8)
    assert config.dropout_rate == 0.1


@pytest.mark.parametrize(
    "field, value",
    [
        ("feed_forward_proj", "relu"),
        ("tie_word_embeddings", True),
        ("is_gated_act", False),
        ("eos_token_id", 2),
        ("scale_decoder_outputs", True),
    ],
)
def test_config_from_hf_refuses_what_it_cannot_represent(field, value):
    with pytest.raises(ValueError, match=field):
        t5_config_from_hf({**FLAN_T5_SMALL_CONFIG, field: value})


def test_params_from_hf_rejects_a_checkpoint_with_more_layers(case):
    state = {k: v.detach().numpy() for k, v in case["hf"].state_dict().items()}
    config = case["model"].config
    fewer = dataclasses.replace(config, num_decoder_layers=config.num_decoder_layers - 1)
    with pytest.raises(ValueError, match=rf"decoder\.block\.{fewer.num_decoder_layers}\."):
        params_from_hf(state, fewer)


def test_init_boxes_params_with_logical_axis_names():
    P = jax.sharding.PartitionSpec
    small = {**FLAN_T5_SMALL_CONFIG, "num_layers": 1, "num_decoder_layers": 1}
    model = EncoderDecoderModel(t5_config_from_hf(small))
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    specs = nn.get_partition_spec(abstract)
    assert specs["token_embedder"]["embedding"] == P("vocab", "embed")
    attention = specs["encoder"]["layers_0"]["attention"]
    assert attention["query"]["kernel"] == P("embed", "heads", "kv")
    assert attention["out"]["kernel"] == P("heads", "kv", "embed")
    assert specs["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] == P("mlp", "embed")
    assert specs["decoder"]["relpos_bias"]["rel_embedding"] == P("heads", "relpos_buckets")
    assert specs["decoder"]["logits_dense"]["kernel"] == P("embed", "vocab")
    shapes = nn.unbox(abstract)
    assert shapes["decoder"]["logits_dense"]["kernel"].shape == (512, 32128)
    assert shapes["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (512, 6, 64)


def test_bfloat16_activations_track_float32():
    config = t5_config_from_hf(
        {
            **FLAN_T5_SMALL_CONFIG,
            "vocab_size": VOCAB,
            "d_model": 32,
            "d_kv": 8,
            "num_heads": 4,
            "d_ff": 48,
            "num_layers": 2,
            "num_decoder_layers": 2,
        }
    )
    model = EncoderDecoderModel(config)
    bf16 = EncoderDecoderModel(dataclasses.replace(config, dtype="bfloat16"))
    params = nn.unbox(model.init(jax.random.key(0)))
    tokens = padded_tokens(np.random.default_rng(0), [10, 6], 10)
    batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens}
    logits32 = np.asarray(jax.jit(model._logits)(params, batch))
    logits16 = jax.jit(bf16._logits)(params, batch)
    assert logits16.dtype == jnp.float32  # logits are always returned in float32
    assert np.abs(np.asarray(logits16) - logits32).max() < 0.05 * np.abs(logits32).max()


def test_params_from_hf_copies_the_embedding_into_a_missing_lm_head(case):
    state = {k: v.detach().numpy() for k, v in case["hf"].state_dict().items()}
    del state["lm_head.weight"]
    params = params_from_hf(state, case["model"].config)
    np.testing.assert_array_equal(
        params["decoder"]["logits_dense"]["kernel"], state["shared.weight"].T
    )


def test_scanned_rematerialized_layers_give_the_same_logits_and_predictions():
    hf = random_hf_t5(seed=1, overrides=HF_CONFIGS[1])  # encoder and decoder depths differ
    config = t5_config_from_hf(hf.config.to_dict())
    model = EncoderDecoderModel(config)
    params = params_from_hf({k: v.detach().numpy() for k, v in hf.state_dict().items()}, config)
    rng = np.random.default_rng(1)
    targets = padded_tokens(rng, [9, 4], 9, eos=True)
    batch = {
        "encoder_input_tokens": padded_tokens(rng, [11, 6], 11),
        "decoder_input_tokens": shift_right(targets),
    }
    # remat too: the decoding cache must pass through both lifted transforms.
    scanned = EncoderDecoderModel(
        dataclasses.replace(model.config, scan_layers=True, remat_policy="full")
    )
    scanned_params = scan_params(params, model.config)
    jax.tree.map(np.testing.assert_array_equal, unscan_params(scanned_params, model.config), params)
    np.testing.assert_allclose(
        np.asarray(jax.jit(scanned._logits)(scanned_params, batch)),
        np.asarray(jax.jit(model._logits)(params, batch)),
        **TOL,
    )
    # Beam search reorders every cache leaf along axis 0, so the layer axis must not be there.
    for kw in ({}, {"num_beams": 3, "num_decodes": 2}):
        predict = lambda m, kw=kw: jax.jit(
            lambda p, b: m.predict_batch(p, b, max_decode_length=8, **kw)
        )
        np.testing.assert_array_equal(
            predict(scanned)(scanned_params, batch), predict(model)(params, batch)
        )


def test_scanned_params_carry_a_leading_layers_axis():
    P = jax.sharding.PartitionSpec
    small = {**FLAN_T5_SMALL_CONFIG, "num_layers": 3, "num_decoder_layers": 2}
    config = dataclasses.replace(t5_config_from_hf(small), scan_layers=True)
    abstract = jax.eval_shape(EncoderDecoderModel(config).init, jax.random.key(0))
    specs = nn.get_partition_spec(abstract)
    assert specs["encoder"]["layers"]["attention"]["query"]["kernel"] == P(
        "layers", "embed", "heads", "kv"
    )
    assert specs["decoder"]["layers"]["mlp"]["wo"]["kernel"] == P("layers", "mlp", "embed")
    assert specs["decoder"]["relpos_bias"]["rel_embedding"] == P("heads", "relpos_buckets")
    shapes = nn.unbox(abstract)
    assert shapes["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (3, 512, 1024)
    assert shapes["decoder"]["layers"]["pre_mlp_layer_norm"]["scale"].shape == (2, 512)


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy='everything'.*'dots'"):
        dataclasses.replace(t5_config_from_hf(FLAN_T5_SMALL_CONFIG), remat_policy="everything")
