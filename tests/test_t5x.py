"""T5X checkpoints in: the test writes T5X's own layouts (msgpack `checkpoint` file with
TensorStore zarr v2 gzip leaves; Orbax OCDBT) from a random transformers T5's weights."""

import dataclasses
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import serialization, traverse_util
from hf_testing import hf_logits, padded_tokens, shift_right
from train_testing import (  # noqa: F401 (run_from_repo_root: an autouse fixture)
    REPO,
    logged_losses,
    run_from_repo_root,
    train_in_process,
)

from flan_jax import checkpoints, convert, model_loader, optim, partitioning
from flan_jax.interop import t5x
from flan_jax.models.base import EncoderDecoderModel
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
    _, params, opt_state, step = t5x.read_train_state(legacy, optimizer=optimizer)
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
    # Joined [32, 4*8] in T5X, [32, 4, 8] here: factored alike, T5X's slots reshaped. Square,
    # so T5X's v_row keeps the first dim: embed of the query, heads x kv of the output.
    query = slots["encoder.layers_0.attention.query.kernel"]
    kernel = lambda tree, path: tree["encoder"]["layers_0"]["attention"][path]["kernel"]
    np.testing.assert_array_equal(kernel(state.v_row, "query"), query["v_row"])
    np.testing.assert_array_equal(kernel(state.v_col, "query"), query["v_col"].reshape(4, 8))
    out = slots["encoder.layers_0.attention.out.kernel"]
    np.testing.assert_array_equal(kernel(state.v_row, "out"), out["v_row"].reshape(4, 8))
    np.testing.assert_array_equal(kernel(state.v_col, "out"), out["v_col"])
    # Factored in T5X, not here (min_dim_size_to_factor=128): the full estimate.
    _, _, full_state, _ = t5x.read_train_state(legacy)
    want = estimate(slots["decoder.layers_0.encoder_decoder_attention.out.kernel"])
    got = factored(full_state).v["decoder"]["layers_0"]["encoder_decoder_attention"]["out"]
    np.testing.assert_allclose(got["kernel"], want.reshape(4, 8, 32), rtol=1e-6)
    # Full in both.
    scale = slots["encoder.encoder_norm.scale"]["v"]
    np.testing.assert_array_equal(state.v["encoder"]["encoder_norm"]["scale"], scale)
    # One continued step decays the second moment at the step's rate, 1 - (step + 1)^-0.8.
    grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
    config = t5x.config_from_target(t5x.read_checkpoint(legacy).target)
    optimizer = optim.for_params(optimizer, t5x._param_axes(config))
    _, next_state = jax.jit(optimizer.update)(grads, opt_state, params)
    decay = 1 - (STEP + 1) ** -0.8
    np.testing.assert_allclose(
        factored(next_state).v["encoder"]["encoder_norm"]["scale"],
        decay * scale + (1 - decay) * 0.25,
        rtol=1e-6,
    )


def test_import_writes_a_train_state_a_trainer_restores(legacy, hf_model, batch, tmp_path):
    out = str(tmp_path / "imported")
    convert.main(["import", "--format", "t5x", "--checkpoint", legacy, "--output", out])
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
    config, params, opt_state, step = t5x.read_train_state(str(path), scan_layers=True)
    _, want, want_opt, _ = t5x.read_train_state(legacy)
    assert step == STEP and config.scan_layers
    jax.tree.map(np.testing.assert_array_equal, params, scan_params(want, config))
    stacked = scan_params(factored(want_opt).v, config)
    query = factored(opt_state).v["encoder"]["layers"]["attention"]["query"]["kernel"]
    np.testing.assert_array_equal(
        query, stacked["encoder"]["layers"]["attention"]["query"]["kernel"]
    )


def scanned(target, slots, axis):
    """T5X's scan_layers=True layout of an unscanned target and slots: each stack's
    `layers_<i>.<name>` stacked on `axis` as `layers.<name>`; a factored slot stacked where
    the layer axis stays once the stacked parameter loses the dim the slot drops. T5X factors
    a stacked array by its logical rules, so v_row keeps `embed` (the output kernels' second
    dim, whose v_row and v_col t5x_slots' size heuristic swaps: they are square)."""
    layers = {}
    out_target, out_slots = {}, {}
    for name, value in target.items():
        match = re.fullmatch(r"(encoder|decoder)\.layers_(\d+)\.(.+)", name)
        if match is None:
            out_target[name], out_slots[name] = value, slots[name]
        else:
            layers.setdefault(f"{match[1]}.layers.{match[3]}", []).append(name)
    for stacked, names in layers.items():
        out_target[stacked] = np.stack([target[n] for n in names], axis=axis)
        shape = target[names[0]].shape
        out_slots[stacked] = {}
        embed = 1 if re.search(r"\.(out|wo)\.kernel$", stacked) else 0
        d1, d0 = (int(a) for a in np.argsort(shape)[-2:]) if len(shape) == 2 else (0, 0)
        swap = len(shape) == 2 and d1 != embed
        for slot in slots[names[0]]:
            swapped = {"v_row": "v_col", "v_col": "v_row"}
            slot_of = swapped.get(slot, slot) if swap else slot
            first, values = slots[names[0]][slot_of], [slots[n][slot_of] for n in names]
            where = axis
            if first.shape == (1,):
                out_slots[stacked][slot] = first
                continue
            if first.shape != shape:  # factored: the per-layer axis it dropped
                dropped = [d0, d1][(slot == "v_row") == swap]
                where = axis - (dropped + (dropped >= axis) < axis)
            out_slots[stacked][slot] = np.stack(values, axis=where)
    return out_target, out_slots


@pytest.mark.parametrize("axis", [0, 1])  # leading, and T5X's default param_scan_axis
def test_scanned_t5x_layouts_read_as_the_unscanned_one(target, slots, legacy, tmp_path, axis):
    optimizer = optim.adafactor(1e-3, min_dim_size_to_factor=MIN_DIM)
    path = write_legacy(tmp_path / "scanned", state_dict(*scanned(target, slots, axis)))
    got = t5x.read_train_state(path, optimizer=optimizer)
    want = t5x.read_train_state(legacy, optimizer=optimizer)
    assert got[0] == want[0] and got[3] == STEP
    jax.tree.map(np.testing.assert_array_equal, got[1:3], want[1:3])


def test_a_relative_position_table_per_layer_is_refused(target, slots, tmp_path):
    target, slots = scanned(target, slots, 1)
    target["encoder.layers.relative_posemb.rel_embedding"] = np.ones((4, 2, 32), np.float32)
    slots["encoder.layers.relative_posemb.rel_embedding"] = slots["encoder.encoder_norm.scale"]
    path = write_legacy(tmp_path / "scalable", state_dict(target, slots))
    with pytest.raises(ValueError, match=r"target\.encoder\.layers\.relative_posemb"):
        t5x.read_train_state(path)


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
        t5x.read_train_state(path)


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


def trainer_for(checkpoint, optimizer, schedule=None):
    config = t5x.config_from_target(t5x.read_checkpoint(checkpoint).target)
    return Trainer(EncoderDecoderModel(config), optimizer, partitioner(), learning_rate_fn=schedule)


def test_one_continued_step_decays_at_the_checkpoints_step(legacy, slots, fixed_batch):
    """T5X's Adafactor state continued by a trainer: one step updates the second moments
    with decay 1 - (step + 1)^-0.8 at the checkpoint's step (by hand, from independently
    computed gradients) and the parameters as optax's Adafactor does from that state."""
    schedule = optim.learning_rate_schedule(1e-3, warmup_steps=10)
    optimizer = optim.adafactor(schedule, min_dim_size_to_factor=MIN_DIM)
    trainer = trainer_for(legacy, optimizer, schedule)
    restored = model_loader.restore_train_state(
        legacy, trainer.model, trainer.abstract_state, optimizer
    )
    state = trainer.continued(restored)
    assert int(state.step) == STEP and int(factored(state.opt_state).count) == STEP
    params, opt_state = jax.device_get((state.params, state.opt_state))
    batch = jax.device_put(fixed_batch, trainer.partitioner.batch_sharding())
    after, metrics = trainer.train_step(state, batch)
    assert int(after.step) == STEP + 1 and int(factored(after.opt_state).count) == STEP + 1
    # Warmup counts this run's steps: 1/10 of the rate at its first, not the full rate.
    assert float(metrics["learning_rate"]) == pytest.approx(1e-4)

    def mean_loss(p):
        loss, sums = trainer.model.loss_fn(p, fixed_batch, None)
        return loss / sums["num_tokens"]

    grads = jax.device_get(jax.grad(mean_loss)(params))
    decay = 1 - (STEP + 1) ** -0.8
    optimizer = trainer.optimizer  # for the model's logical axes
    v = factored(after.opt_state).v["encoder"]["encoder_norm"]["scale"]
    g = grads["encoder"]["encoder_norm"]["scale"]
    want = decay * slots["encoder.encoder_norm.scale"]["v"] + (1 - decay) * (g**2 + 1e-30)
    np.testing.assert_allclose(v, want, rtol=1e-5)
    g = grads["token_embedder"]["embedding"]  # [96, 32]: v_row keeps the 32
    want = decay * slots["token_embedder.embedding"]["v_row"] + (1 - decay) * (g**2 + 1e-30).mean(
        axis=0
    )
    v_row = factored(after.opt_state).v_row["token_embedder"]["embedding"]
    np.testing.assert_allclose(v_row, want, rtol=1e-5)
    updates, _ = jax.jit(optimizer.update)(grads, opt_state, params)
    jax.tree.map(
        lambda got, p, u: np.testing.assert_allclose(got, p + u, rtol=1e-5, atol=1e-7),
        jax.device_get(after.params),
        params,
        updates,
    )
    # Started afresh (INITIAL_CHECKPOINT_RESTORE='params') the decay is 0 at step 0.
    placed = jax.device_put(params, trainer.params_shardings)
    fresh, _ = trainer.train_step(trainer.state_from_params(placed), batch)
    v = factored(fresh.opt_state).v["encoder"]["encoder_norm"]["scale"]
    g = grads["encoder"]["encoder_norm"]["scale"]
    np.testing.assert_allclose(v, g**2 + 1e-30, rtol=1e-4)


def test_an_optimizer_state_of_another_optimizer_is_refused_by_leaf(legacy, tmp_path):
    out = str(tmp_path / "imported")
    convert.import_t5x(legacy, out)  # Adafactor factoring dims >= 128: none of these
    trainer = trainer_for(legacy, optim.adafactor(1e-3, min_dim_size_to_factor=MIN_DIM))
    with pytest.raises(
        ValueError,
        match=r"opt_state/0/v/decoder/layers_0/encoder_decoder_attention/key/kernel is "
        r"\(32, 4, 8\) there, \(1,\) here .*set INITIAL_CHECKPOINT_RESTORE = 'params'",
    ):
        model_loader.restore_train_state(
            out, trainer.model, trainer.abstract_state, trainer.optimizer
        )
    # The import's own optimizer continues it, with a schedule, whose count the import lacks.
    same = trainer_for(legacy, optim.adafactor(optim.learning_rate_schedule(1e-3)))
    state = model_loader.restore_train_state(out, same.model, same.abstract_state, same.optimizer)
    assert int(state.step) == STEP and int(factored(state.opt_state).count) == STEP


def test_momentum_the_optimizer_lacks_names_the_params_knob(target, slots, tmp_path):
    slots = {k: {**v, "m": np.ones_like(target[k])} for k, v in slots.items()}
    path = write_legacy(tmp_path / "momentum", state_dict(target, slots))
    trainer = trainer_for(path, optim.adafactor(1e-3))
    with pytest.raises(ValueError, match=r"holds momentum.*INITIAL_CHECKPOINT_RESTORE = 'params'"):
        model_loader.restore_train_state(
            path, trainer.model, trainer.abstract_state, trainer.optimizer
        )


def t5x_target_of(params) -> dict[str, np.ndarray]:
    """flan_jax parameters in T5X's layout: dotted names, the attention heads joined."""
    target = {}
    for key, value in traverse_util.flatten_dict(params).items():
        value = np.asarray(value)
        if key[-2] in ("query", "key", "value"):
            value = value.reshape(value.shape[0], -1)
        elif key[-2] == "out":
            value = value.reshape(-1, value.shape[-1])
        target[".".join(key)] = value
    return target


@pytest.fixture(scope="module")
def demo_t5x(tmp_path_factory):
    """A T5X checkpoint at STEP of the demo's tiny T5 (its vocabulary, random weights)."""
    model, _ = model_loader.model_from_gin_file(os.path.join(REPO, "gin/models/t5_1_1/tiny.gin"))
    target = t5x_target_of(nn.unbox(model.init(jax.random.key(5))))
    path = tmp_path_factory.mktemp("demo_t5x") / f"checkpoint_{STEP}"
    return write_legacy(path, state_dict(target, t5x_slots(target, np.random.default_rng(4))))


QUICK = ["--gin.LENGTH_CHECK_EXAMPLES=0", "--gin.EVAL_EVERY=None"]


@pytest.mark.slow
def test_a_run_continues_a_t5x_checkpoint_and_its_restart_ends_at_the_same_step(demo_t5x, tmp_path):
    """TRAIN_STEPS counts from the checkpoint's step; a restart reads the initial step from
    MODEL_DIR's checkpoint (INITIAL_CHECKPOINT_PATH is gone by then) and ends where the
    uninterrupted run did, with its losses (the streamed input replays 2 batches, not STEP)."""
    straight = tmp_path / "straight"
    state, _ = train_in_process(straight, 4, *QUICK, f"--gin.INITIAL_CHECKPOINT_PATH='{demo_t5x}'")
    assert int(state.step) == STEP + 4 and int(factored(state.opt_state).count) == STEP + 4
    assert sorted(os.listdir(straight / "checkpoints")) == [str(STEP + 2), str(STEP + 4)]
    losses = logged_losses(straight)
    assert sorted(losses) == list(range(STEP + 1, STEP + 5))
    preempted = tmp_path / "preempted"
    shutil.copytree(
        straight / "checkpoints" / str(STEP + 2), preempted / "checkpoints" / str(STEP + 2)
    )
    gone = tmp_path / "deleted_checkpoint"
    state, _ = train_in_process(preempted, 4, *QUICK, f"--gin.INITIAL_CHECKPOINT_PATH='{gone}'")
    assert int(state.step) == STEP + 4
    assert sorted(os.listdir(preempted / "checkpoints")) == [str(STEP + 2), str(STEP + 4)]
    resumed = logged_losses(preempted)
    assert sorted(resumed) == [STEP + 3, STEP + 4]
    for step in resumed:
        assert resumed[step] == pytest.approx(losses[step], rel=1e-6)


@pytest.mark.slow
def test_params_only_starts_at_step_0_with_a_fresh_optimizer(demo_t5x, tmp_path):
    state, _ = train_in_process(
        tmp_path,
        2,
        *QUICK,
        f"--gin.INITIAL_CHECKPOINT_PATH='{demo_t5x}'",
        "--gin.INITIAL_CHECKPOINT_RESTORE='params'",
    )
    assert int(state.step) == 2 and int(factored(state.opt_state).count) == 2
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_a_t5x_checkpoint_on_gcs_reads_as_the_local_one(legacy, gcs, request):
    from gcs import files_under

    remote = gcs.path(request.node.name) / f"checkpoint_{STEP}"
    for local in files_under(legacy):
        (remote / os.path.relpath(local, legacy)).write_bytes(local.read_bytes())
    assert model_loader.checkpoint_format(os.fspath(remote)) == model_loader.T5X
    optimizer = optim.adafactor(1e-3, min_dim_size_to_factor=MIN_DIM)
    got = t5x.read_train_state(os.fspath(remote), optimizer=optimizer)
    want = t5x.read_train_state(legacy, optimizer=optimizer)
    assert got[0] == want[0] and got[3] == STEP
    jax.tree.map(np.testing.assert_array_equal, got[1:3], want[1:3])


@pytest.mark.parametrize("scanned", [False, True])
def test_t5_small_query_slots_land_where_flan_jax_factors(scanned):
    """T5-small's query kernel, [512, 384] in T5X: its size heuristic keeps heads x kv (the
    smaller) in v_row; a scanned T5X stack, factored by rules, keeps embed there. Either way
    flan_jax's v_row is the heads x kv one, [6, 64], and the estimate is T5X's."""
    rng = np.random.default_rng(0)
    joined, embed = (rng.uniform(0.5, 2, n).astype(np.float32) for n in (384, 512))
    v_row, v_col = (embed, joined) if scanned else (joined, embed)
    param = ((512, 6, 64), ("embed", "heads", "kv"))
    moments = t5x._second_moments(
        {"v_row": v_row, "v_col": v_col}, (512, 384), param, scanned, "query"
    )
    np.testing.assert_array_equal(moments["v_row"], joined.reshape(6, 64))
    np.testing.assert_array_equal(moments["v_col"], embed)
    want = np.outer(embed, joined) / v_row.mean()
    np.testing.assert_allclose(moments["v"], want.reshape(512, 6, 64), rtol=1e-6)
