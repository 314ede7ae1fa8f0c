"""T5X checkpoints in: the test writes T5X's own layouts (msgpack `checkpoint` file with
TensorStore zarr v2 gzip leaves; Orbax OCDBT) from a random transformers T5's weights."""

import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import serialization, traverse_util
from hf_testing import hf_logits, padded_tokens, shift_right

from flan_jax import checkpoints, model_loader, optim, partitioning
from flan_jax.interop import t5x
from flan_jax.models.t5 import scan_params
from flan_jax.trainer import Trainer

torch = pytest.importorskip("torch")
ts = pytest.importorskip("tensorstore")

STEP = 1234
MIN_DIM = 16  # the test's T5X and flan_jax Adafactor factor dims this large (T5X: 128)
EXACT = dict(rtol=1e-5, atol=1e-5)


def t5x_target(hf_model) -> dict[str, np.ndarray]:
    """T5X's T5 v1.1 parameters (dotted names) for an HF T5: kernels [in, out], the attention
    heads joined, relative-position tables [heads, buckets]."""
    sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    config = hf_model.config
    target = {
        "token_embedder.embedding": sd["shared.weight"],
        "decoder.logits_dense.kernel": sd["lm_head.weight"].T,
        "encoder.encoder_norm.scale": sd["encoder.final_layer_norm.weight"],
        "decoder.decoder_norm.scale": sd["decoder.final_layer_norm.weight"],
    }
    for stack in ("encoder", "decoder"):
        table = sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        target[f"{stack}.relpos_bias.rel_embedding"] = table.T
    attention = {"q": "query", "k": "key", "v": "value", "o": "out"}
    mlp = ("wi_0", "wi_1", "wo")
    layouts = {
        "encoder": (
            config.num_layers,
            [("pre_attention_layer_norm", "attention", "SelfAttention"), ("pre_mlp_layer_norm",)],
        ),
        "decoder": (
            config.num_decoder_layers,
            [
                ("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
                ("pre_cross_attention_layer_norm", "encoder_decoder_attention", "EncDecAttention"),
                ("pre_mlp_layer_norm",),
            ],
        ),
    }
    for stack, (num_layers, sublayers) in layouts.items():
        for i in range(num_layers):
            for j, sublayer in enumerate(sublayers):
                hf, ours = f"{stack}.block.{i}.layer.{j}", f"{stack}.layers_{i}"
                target[f"{ours}.{sublayer[0]}.scale"] = sd[f"{hf}.layer_norm.weight"]
                if len(sublayer) == 3:
                    for short, name in attention.items():
                        weight = sd[f"{hf}.{sublayer[2]}.{short}.weight"]
                        target[f"{ours}.{sublayer[1]}.{name}.kernel"] = weight.T
                else:
                    for name in mlp:
                        weight = sd[f"{hf}.DenseReluDense.{name}.weight"]
                        target[f"{ours}.mlp.{name}.kernel"] = weight.T
    return target


def t5x_slots(target, rng, momentum=False) -> dict[str, dict[str, np.ndarray]]:
    """Random Adafactor slots as T5X's Adafactor(min_dim_size_to_factor=MIN_DIM) keeps them:
    2D parameters factored over their two largest dims (v_row drops the largest), the
    others a full `v`; the unused slots (1,) placeholders."""
    states = {}
    for name, value in target.items():
        shape = value.shape
        slots = {k: np.zeros((1,), np.float32) for k in t5x.SLOTS}
        order = np.argsort(shape)
        if len(shape) == 2 and shape[order[0]] >= MIN_DIM:
            d1, d0 = int(order[0]), int(order[1])
            slots["v_row"] = rng.uniform(0.5, 2, shape[d1]).astype(np.float32)
            slots["v_col"] = rng.uniform(0.5, 2, shape[d0]).astype(np.float32)
        else:
            slots["v"] = rng.uniform(0.5, 2, shape).astype(np.float32)
        if momentum:
            slots["m"] = rng.normal(size=shape).astype(np.float32)
        states[name] = slots
    return states


def nest(flat):
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def state_dict(target, slots, step=STEP):
    """T5X's train state dict: {'target': params, 'state': {'step', 'param_states'}}."""
    flat_slots = {f"{n}.{k}": v for n, s in slots.items() for k, v in s.items()}
    return {
        "target": nest(target),
        "state": {"step": np.asarray(step, np.int32), "param_states": nest(flat_slots)},
    }


def write_legacy(directory, tree, dtype="float32"):
    """As T5X's legacy Checkpointer: arrays of more than one element to TensorStore zarr
    (gzip, one directory per array named by its dotted path, relative kvstore path in the
    spec; the target in `dtype`), the rest inline, all under {'version': 3, 'optimizer'}."""
    os.makedirs(directory)

    def write(name, value):
        if value.size <= 1:
            return value
        leaf_dtype = dtype if name.startswith("target.") else "float32"
        spec = {
            "driver": "zarr",
            "dtype": leaf_dtype,
            "kvstore": {"driver": "file", "path": name},
            "metadata": {
                "compressor": {"id": "gzip"},
                "shape": list(value.shape),
                "chunks": [max(1, d // 2) for d in value.shape],
            },
        }
        absolute = {**spec, "kvstore": {"driver": "file", "path": f"{directory}/{name}"}}
        store = ts.open(absolute, create=True).result()
        store.write(value.astype(store.dtype.numpy_dtype)).result()
        return spec

    def walk(node, prefix):
        return {
            k: walk(v, f"{prefix}{k}.") if isinstance(v, dict) else write(f"{prefix}{k}", v)
            for k, v in node.items()
        }

    contents = {"version": 3, "optimizer": walk(tree, "")}
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(contents))
    return str(directory)


@pytest.fixture(scope="module")
def target(hf_model):
    return t5x_target(hf_model)


@pytest.fixture(scope="module")
def slots(target):
    return t5x_slots(target, np.random.default_rng(1))


@pytest.fixture(scope="module")
def legacy(target, slots, tmp_path_factory):
    path = tmp_path_factory.mktemp("t5x") / f"checkpoint_{STEP}"
    return write_legacy(path, state_dict(target, slots))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(2)
    targets = padded_tokens(rng, [5, 8, 3], 8, eos=True)
    inputs = padded_tokens(rng, [13, 4, 9], 13)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": shift_right(targets)}


def partitioner():
    return partitioning.Partitioner(partitioning.create_mesh(2), partitioning.logical_axis_rules())


def factored(opt_state):
    return next(s for s in opt_state if isinstance(s, optax.FactoredState))


def estimate(slots):
    """T5X's second-moment estimate from factored slots: v_row (x) v_col / mean(v_row)."""
    return np.outer(slots["v_row"], slots["v_col"]) / slots["v_row"].mean()


def test_loader_reads_t5x_with_transformers_logits(legacy, hf_model, batch):
    assert model_loader.checkpoint_format(legacy) == model_loader.T5X
    loaded = model_loader.load(legacy, partitioner())
    assert loaded.model.config.relative_attention_max_distance == 128
    logits = np.asarray(jax.jit(loaded.model._logits)(loaded.params, batch))
    np.testing.assert_allclose(logits, hf_logits(hf_model, batch), **EXACT)


def test_adafactor_slots_and_step_restored(legacy, slots):
    optimizer = optim.adafactor(1e-3, min_dim_size_to_factor=MIN_DIM)
    _, params, opt_state, step = t5x.restore_train_state(legacy, optimizer=optimizer)
    assert step == STEP
    state = factored(opt_state)
    assert int(state.count) == STEP
    # Factored alike in both: T5X's own slots.
    embedding = slots["token_embedder.embedding"]
    np.testing.assert_array_equal(state.v_row["token_embedder"]["embedding"], embedding["v_row"])
    np.testing.assert_array_equal(state.v_col["token_embedder"]["embedding"], embedding["v_col"])
    wo = slots["decoder.layers_1.mlp.wo.kernel"]
    np.testing.assert_array_equal(
        state.v_row["decoder"]["layers_1"]["mlp"]["wo"]["kernel"], wo["v_row"]
    )
    # Joined [32, 4*8] in T5X (factored), [32, 4, 8] unfactored here: the full estimate.
    query = state.v["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    want = estimate(slots["encoder.layers_0.attention.query.kernel"]).reshape(32, 4, 8)
    np.testing.assert_allclose(query, want, rtol=1e-6)
    out = state.v["decoder"]["layers_0"]["encoder_decoder_attention"]["out"]["kernel"]
    want = estimate(slots["decoder.layers_0.encoder_decoder_attention.out.kernel"])
    np.testing.assert_allclose(out, want.reshape(4, 8, 32), rtol=1e-6)
    # Full in both.
    scale = slots["encoder.encoder_norm.scale"]["v"]
    np.testing.assert_array_equal(state.v["encoder"]["encoder_norm"]["scale"], scale)
    # One continued step decays the second moment at the step's rate, 1 - (step + 1)^-0.8.
    grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
    _, next_state = jax.jit(optimizer.update)(grads, opt_state, params)
    decay = 1 - (STEP + 1) ** -0.8
    np.testing.assert_allclose(
        factored(next_state).v["encoder"]["encoder_norm"]["scale"],
        decay * scale + (1 - decay) * 0.25,
        rtol=1e-6,
    )


def test_import_writes_a_train_state_a_trainer_restores(legacy, hf_model, batch, tmp_path):
    out = str(tmp_path / "imported")
    t5x.main(["import", "--checkpoint", legacy, "--output", out])
    assert os.listdir(os.path.join(out, "checkpoints")) == [str(STEP)]
    loaded = model_loader.load(out, partitioner())
    logits = np.asarray(jax.jit(loaded.model._logits)(loaded.params, batch))
    np.testing.assert_allclose(logits, hf_logits(hf_model, batch), **EXACT)
    trainer = Trainer(loaded.model, optim.adafactor(1e-3), partitioner())
    checkpointer = checkpoints.Checkpointer(out, async_save=False)
    try:
        state, _ = checkpointer.restore(trainer.abstract_state)
    finally:
        checkpointer.close()
    assert int(state.step) == STEP and int(factored(state.opt_state).count) == STEP


def test_bfloat16_leaves_read_as_their_values(target, slots, tmp_path):
    path = write_legacy(tmp_path / "bf16", state_dict(target, slots), dtype="bfloat16")
    checkpoint = t5x.read_checkpoint(path)
    config = t5x.config_from_target(checkpoint.target)
    params = t5x.params_from_t5x(checkpoint.target, config)
    rounded = target["encoder.layers_0.mlp.wi_1.kernel"].astype(ts.bfloat16.numpy_dtype)
    got = params["encoder"]["layers_0"]["mlp"]["wi_1"]["kernel"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, rounded.astype(np.float32))
    assert not np.array_equal(got, target["encoder.layers_0.mlp.wi_1.kernel"])


def test_orbax_checkpoint_and_scanned_layout(target, slots, legacy, tmp_path):
    import orbax.checkpoint as ocp

    path = tmp_path / f"checkpoint_{STEP}"
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True))
    checkpointer.save(path / "state", args=ocp.args.PyTreeSave(state_dict(target, slots)))
    assert model_loader.checkpoint_format(str(path)) == model_loader.T5X
    config, params, opt_state, step = t5x.restore_train_state(str(path), scan_layers=True)
    _, want, want_opt, _ = t5x.restore_train_state(legacy)
    assert step == STEP and config.scan_layers
    jax.tree.map(np.testing.assert_array_equal, params, scan_params(want, config))
    stacked = scan_params(factored(want_opt).v, config)
    query = factored(opt_state).v["encoder"]["layers"]["attention"]["query"]["kernel"]
    np.testing.assert_array_equal(
        query, stacked["encoder"]["layers"]["attention"]["query"]["kernel"]
    )


@pytest.mark.parametrize(
    "change, named",
    [
        (
            lambda t, s: t.update(
                {"encoder.layers_0.attention.bias": t["encoder.encoder_norm.scale"]}
            ),
            "target.encoder.layers_0.attention.bias",
        ),
        (lambda t, s: t.pop("decoder.logits_dense.kernel"), "target.decoder.logits_dense.kernel"),
        (
            lambda t, s: s["encoder.encoder_norm.scale"].update(grad_ema=np.ones(2)),
            "state.param_states.encoder.encoder_norm.scale.grad_ema",
        ),
        (
            lambda t, s: s["token_embedder.embedding"].update(m=np.ones((96, 32), np.float32)),
            "state.param_states.token_embedder.embedding.m",
        ),
    ],
)
def test_unsupported_contents_are_refused_by_name(target, slots, tmp_path, change, named):
    target = dict(target)
    slots = {k: dict(v) for k, v in slots.items()}
    change(target, slots)
    path = write_legacy(tmp_path / "bad", state_dict(target, slots))
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        t5x.restore_train_state(path)


@pytest.mark.parametrize("size", ["small", "xxl"])  # the others differ only in numbers
def test_config_from_the_shapes_of_t5_1_1_sizes(size):
    model, _ = model_loader.model_from_gin_file(f"gin/models/t5_1_1/{size}.gin")
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    target = {}
    for key, leaf in traverse_util.flatten_dict(nn.unbox(shapes)).items():
        shape = leaf.shape
        if key[-2] in ("query", "key", "value"):  # T5X joins the heads
            shape = (shape[0], shape[1] * shape[2])
        elif key[-2] == "out":
            shape = (shape[0] * shape[1], shape[2])
        target[".".join(key)] = jax.ShapeDtypeStruct(shape, np.float32)
    config = t5x.config_from_target(target)
    want = dataclasses.replace(model.config, dropout_rate=config.dropout_rate)
    assert config == want
