"""PaLM-style decoder-only model: causal (default) and prefix-LM masks, KV cache, packing,
loss, context length, sizes, training."""

import dataclasses

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from flan_jax import cli, model_loader, optim, partitioning
from flan_jax.models.base import DecoderOnlyModel
from flan_jax.models.decoder import DecoderConfig, scan_params, unscan_params
from flan_jax.trainer import Trainer

CONFIG = DecoderConfig(vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=64, num_layers=2)
PREFIX_LENGTHS = np.array([3, 6, 1, 4])
LENGTH = 10


@pytest.fixture(scope="module")
def model_and_params():
    """The default (causal) model."""
    model = DecoderOnlyModel(CONFIG)
    return model, nn.unbox(model.init(jax.random.key(0)))


@pytest.fixture(scope="module")
def prefix_model_and_params(model_and_params):
    """The same parameters as a prefix LM (DecoderConfig.prefix_lm)."""
    return DecoderOnlyModel(dataclasses.replace(CONFIG, prefix_lm=True)), model_and_params[1]


@pytest.fixture(scope="module", params=["causal", "prefix_lm"])
def either_mode(request, model_and_params, prefix_model_and_params):
    return model_and_params if request.param == "causal" else prefix_model_and_params


@pytest.fixture(scope="module")
def prefix_batch():
    """Unpacked prefix-LM rows: start token, random tokens, prefixes of different lengths."""
    tokens = np.random.default_rng(0).integers(2, CONFIG.vocab_size, (4, LENGTH)).astype(np.int32)
    tokens[:, 0] = 0
    prefix = (np.arange(LENGTH)[None] < PREFIX_LENGTHS[:, None]).astype(np.int32)
    return {"decoder_input_tokens": tokens, "decoder_causal_attention": prefix}


def _logits(model, params, batch):
    return np.asarray(jax.jit(lambda p, b: model._logits(p, b))(params, batch))


def test_cached_step_logits_equal_full_forward(either_mode, prefix_batch):
    """Prefill each row's prefix, then teacher-force the rest one token at a time."""
    model, params = either_mode
    tokens, prefix = prefix_batch["decoder_input_tokens"], prefix_batch["decoder_causal_attention"]
    full = _logits(model, params, prefix_batch)
    apply = jax.jit(
        lambda variables, tokens, **kw: model.module.apply(
            variables, tokens, decode=True, max_decode_length=LENGTH + 2, mutable=["cache"], **kw
        )
    )
    last = PREFIX_LENGTHS - 1
    prefill, cache = apply({"params": params}, tokens * prefix, prefix_mask=prefix, next_index=last)
    for row, n in enumerate(PREFIX_LENGTHS):
        np.testing.assert_allclose(prefill[row, :n], full[row, :n], rtol=1e-5, atol=1e-5)
    rows = np.arange(4)
    for step in range(LENGTH - PREFIX_LENGTHS.max() + 1):
        positions = last + step
        logits, cache = apply({"params": params, **cache}, tokens[rows, positions][:, None])
        np.testing.assert_allclose(logits[:, 0], full[rows, positions], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache["cache"]["index"], positions + 1)


def test_greedy_prediction_equals_uncached_argmax(either_mode, prefix_batch):
    model, params = either_mode
    steps = 5
    predicted = np.asarray(
        jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_length=steps))(
            params, prefix_batch
        )
    )
    assert predicted.shape == (4, steps)
    for row, n in enumerate(PREFIX_LENGTHS):
        sequence = list(prefix_batch["decoder_input_tokens"][row, :n])
        for _ in range(steps):
            batch = {
                "decoder_input_tokens": np.array([sequence], np.int32),
                "decoder_causal_attention": (np.arange(len(sequence)) < n).astype(np.int32)[None],
            }
            sequence.append(int(_logits(model, params, batch)[0, -1].argmax()))
        expected = np.array(sequence[n:])
        if (expected == 1).any():
            expected[np.argmax(expected == 1) + 1 :] = 0
        np.testing.assert_array_equal(predicted[row], expected)


def test_causal_by_default(model_and_params, prefix_batch):
    """PaLM and Flan-PaLM are causal: the logits at t never see a later token, prompt or
    target (decoder_causal_attention changes nothing)."""
    model, params = model_and_params
    assert not CONFIG.prefix_lm
    base = _logits(model, params, prefix_batch)
    no_prefix = {
        **prefix_batch,
        "decoder_causal_attention": np.zeros_like(prefix_batch["decoder_causal_attention"]),
    }
    np.testing.assert_array_equal(_logits(model, params, no_prefix), base)
    for changed in range(1, LENGTH):
        batch = {k: v.copy() for k, v in prefix_batch.items()}
        batch["decoder_input_tokens"][:, changed] += 1
        batch["decoder_input_tokens"] %= CONFIG.vocab_size
        logits = _logits(model, params, batch)
        np.testing.assert_array_equal(logits[:, :changed], base[:, :changed])
        assert not np.allclose(logits[:, changed], base[:, changed])


def test_prefix_is_bidirectional_and_targets_causal(prefix_model_and_params, prefix_batch):
    model, params = prefix_model_and_params
    base = _logits(model, params, prefix_batch)
    n = PREFIX_LENGTHS[1]  # row 1: prefix 0..5, targets 6..9
    for changed in (n, LENGTH - 2):  # a target position
        batch = {k: v.copy() for k, v in prefix_batch.items()}
        batch["decoder_input_tokens"][1, changed] += 1
        logits = _logits(model, params, batch)
        np.testing.assert_array_equal(logits[1, :changed], base[1, :changed])
        assert not np.allclose(logits[1, changed], base[1, changed])
        np.testing.assert_array_equal(np.delete(logits, 1, 0), np.delete(base, 1, 0))
    batch = {k: v.copy() for k, v in prefix_batch.items()}
    batch["decoder_input_tokens"][1, n - 1] += 1  # the last prefix token
    logits = _logits(model, params, batch)
    for position in range(n - 1):  # every earlier prefix position sees it
        assert not np.allclose(logits[1, position], base[1, position])


def test_loss_only_on_targets_of_seqio_batches(model_and_params, prefix_lm_batch):
    model, params = model_and_params
    batch = prefix_lm_batch(pack=False)
    np.testing.assert_array_equal(
        batch["decoder_loss_weights"][:, :10],
        [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]],
    )
    loss_fn = jax.jit(model.loss_fn)
    loss, aux = loss_fn(params, batch, None)
    assert aux["num_tokens"] == 8
    # Scrambling the inputs' own target tokens (what a plain LM would learn) changes nothing.
    scrambled = dict(batch)
    scrambled["decoder_target_tokens"] = np.where(
        batch["decoder_causal_attention"] & (batch["decoder_loss_weights"] == 0),
        11,
        batch["decoder_target_tokens"],
    )
    assert (scrambled["decoder_target_tokens"] != batch["decoder_target_tokens"]).sum() == 6
    np.testing.assert_array_equal(loss_fn(params, scrambled, None)[0], loss)
    changed_target = {**batch, "decoder_target_tokens": batch["decoder_target_tokens"].copy()}
    changed_target["decoder_target_tokens"][0, 5] = 11
    assert loss_fn(params, changed_target, None)[0] != loss


def test_packed_equals_separate(model_and_params, prefix_lm_batch):
    model, params = model_and_params
    separate, packed = prefix_lm_batch(pack=False), prefix_lm_batch(pack=True)
    assert packed["decoder_input_tokens"].shape[0] == 1 and packed["decoder_segment_ids"].max() == 2
    separate_logits, packed_logits = (
        _logits(model, params, separate),
        _logits(model, params, packed),
    )
    for row, segment in enumerate((1, 2)):
        in_segment = packed["decoder_segment_ids"][0] == segment
        n = in_segment.sum()
        np.testing.assert_allclose(
            packed_logits[0, in_segment], separate_logits[row, :n], rtol=1e-5, atol=1e-5
        )
    loss_fn = jax.jit(model.loss_fn)
    np.testing.assert_allclose(
        loss_fn(params, packed, None)[0], loss_fn(params, separate, None)[0], rtol=1e-5
    )


def test_lengths_past_the_context_are_refused(model_and_params, prefix_batch):
    model, params = model_and_params
    short = DecoderOnlyModel(dataclasses.replace(CONFIG, context_length=LENGTH - 1))
    with pytest.raises(ValueError, match="inputs=6 \\+ targets=4 = 10 tokens exceed .* of 9"):
        short.check_feature_lengths({"inputs": 6, "targets": 4})
    short.check_feature_lengths({"inputs": 5, "targets": 4})
    # Any batch the checks missed fails when traced, not with RoPE positions never trained.
    with pytest.raises(ValueError, match="10 tokens exceeds DecoderConfig.context_length=9"):
        _logits(short, params, prefix_batch)


def _preset_lengths(*gin_files):
    """(the PaLM model, {name: feature lengths}) of a run preset or the eval gin files."""
    with cli.separate_gin_config():
        cli.parse_gin(list(gin_files), [], finalize=False)
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
        for macro in ("TASK_FEATURE_LENGTHS", "SUITE_FEATURE_LENGTHS"):
            try:
                lengths = gin.query_parameter(f"%{macro}")
            except ValueError:
                continue
            return model, lengths if macro == "SUITE_FEATURE_LENGTHS" else {"train": lengths}


@pytest.mark.parametrize("size", ["8b", "62b", "540b"])
def test_palm_presets_fit_the_2048_token_context(size):
    model, lengths = _preset_lengths(f"runs/flan_palm/{size}.gin")
    assert model.config.context_length == 2048 and not model.config.prefix_lm
    model.check_feature_lengths(lengths["train"])
    _, suites = _preset_lengths(f"models/palm/{size}.gin", "eval/evaluate.gin", "eval/palm.gin")
    assert len(suites) == 6
    for suite, suite_lengths in suites.items():
        model.check_feature_lengths(suite_lengths, suite)
        assert sum(suite_lengths.values()) == 2048, suite
    # evaluate.gin's own lengths (for T5) are refused for PaLM, naming both lengths.
    _, t5_suites = _preset_lengths(f"models/palm/{size}.gin", "eval/evaluate.gin")
    with pytest.raises(ValueError, match="mmlu_cot: inputs=2048 \\+ targets=768 = 2816"):
        model.check_feature_lengths(t5_suites["mmlu_cot"], "mmlu_cot")


@pytest.mark.parametrize(
    "gin_file, paper_count, tolerance",
    [("540b", 540.35e9, 0.01), ("62b", 62.50e9, 0.01), ("8b", 8.63e9, 0.01), ("tiny", 1.0e6, 0.05)],
)
def test_parameter_count_matches_palm(gin_file, paper_count, tolerance):
    model, _ = model_loader.model_from_gin_file(f"models/palm/{gin_file}.gin")
    assert isinstance(model, DecoderOnlyModel)
    shapes = jax.eval_shape(model.init, jax.random.key(0))  # allocates nothing
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
    print(f"{gin_file}: {count:,} parameters (PaLM paper: {paper_count:,.0f})")
    assert count == pytest.approx(paper_count, rel=tolerance)


def test_training_reduces_loss_on_a_sharded_mesh():
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(mesh_shape=(4, 2)), partitioning.logical_axis_rules()
    )
    schedule = optim.learning_rate_schedule(1e-2)
    trainer = Trainer(
        DecoderOnlyModel(CONFIG),
        optim.adafactor(schedule, min_dim_size_to_factor=16),
        partitioner,
        learning_rate_fn=schedule,
    )
    rng = np.random.default_rng(1)
    targets = rng.integers(2, CONFIG.vocab_size, (8, 12)).astype(np.int32)
    prefix = (np.arange(12)[None] < rng.integers(2, 8, (8, 1))).astype(np.int32)
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_causal_attention": prefix,
        "decoder_loss_weights": 1 - prefix,
    }
    state = trainer.create_state(jax.random.key(0))
    batch = jax.device_put(batch, partitioner.batch_sharding())
    losses = []
    for _ in range(30):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.3 * losses[0], losses
    assert float(metrics["num_tokens"]) == (1 - prefix).sum()
    query = state.params["layers_0"]["attention"]["query"]["kernel"]
    assert query.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)


def test_scanned_rematerialized_layers_give_the_same_logits_and_predictions(
    model_and_params, prefix_batch
):
    model, params = model_and_params
    # remat too: the decoding cache must pass through both lifted transforms.
    scanned = DecoderOnlyModel(dataclasses.replace(CONFIG, scan_layers=True, remat_policy="full"))
    scanned_params = scan_params(params, CONFIG)
    jax.tree.map(np.testing.assert_array_equal, unscan_params(scanned_params, CONFIG), params)
    np.testing.assert_allclose(
        _logits(scanned, scanned_params, prefix_batch),
        _logits(model, params, prefix_batch),
        rtol=1e-5,
        atol=1e-5,
    )
    # Beam search reorders every cache leaf along axis 0, so the layer axis must not be there.
    for kw in ({}, {"num_beams": 3, "num_decodes": 2}):
        predict = lambda m, kw=kw: jax.jit(
            lambda p, b: m.predict_batch(p, b, max_decode_length=5, **kw)
        )
        np.testing.assert_array_equal(
            predict(scanned)(scanned_params, prefix_batch), predict(model)(params, prefix_batch)
        )


def test_scanned_params_carry_a_leading_layers_axis():
    P = jax.sharding.PartitionSpec
    config = dataclasses.replace(CONFIG, num_layers=3, scan_layers=True)
    abstract = jax.eval_shape(DecoderOnlyModel(config).init, jax.random.key(0))
    specs = nn.get_partition_spec(abstract)
    assert specs["layers"]["mlp"]["wo"]["kernel"] == P("layers", "mlp", "embed")
    assert specs["token_embedder"]["embedding"] == P("vocab", "embed")
    shapes = nn.unbox(abstract)
    assert shapes["layers"]["pre_layer_norm"]["scale"].shape == (3, CONFIG.d_model)
    assert "layers_0" not in shapes


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="DecoderConfig.remat_policy='everything'.*'dots'"):
        dataclasses.replace(CONFIG, remat_policy="everything")
