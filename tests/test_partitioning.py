import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flan_jax import partitioning


def test_mesh_over_all_devices_with_model_axis_inner():
    mesh = partitioning.create_mesh(model_parallel_size=2)
    assert dict(mesh.shape) == {"replica": 1, "data": 4, "model": 2}
    # `model` is the inner axis: neighbours in device order share a data row.
    assert [d.id for d in mesh.devices[0, 0]] == [0, 1]


def test_slices_form_the_outer_replica_axis():
    mesh = partitioning.create_mesh(model_parallel_size=2, num_slices=2)
    assert dict(mesh.shape) == {"replica": 2, "data": 2, "model": 2}
    assert sorted(d.id for d in mesh.devices[0].flat) == [0, 1, 2, 3]
    p = partitioning.Partitioner(mesh, partitioning.logical_axis_rules(2, 1))
    assert p.data_parallel_size == 4
    assert p.sharding(("batch", "length")).spec == P(("replica", "data"), None)
    assert p.sharding(("embed", "mlp")).spec == P("data", "model")  # copied across slices


def test_mesh_errors_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match=r"model_parallel_size=3 .* \[1, 2, 4, 8\]"):
        partitioning.create_mesh(model_parallel_size=3)
    with pytest.raises(ValueError, match=r"mesh_shape=\(2, 2\).*8 devices per slice"):
        partitioning.create_mesh(mesh_shape=(2, 2))
    with pytest.raises(ValueError, match=r"num_slices=3 must divide .* \(8\)"):
        partitioning.create_mesh(num_slices=3)


@pytest.mark.parametrize(
    "param_dims, act_dims, expected_param, expected_activation",
    [
        (1, 1, P(None, "model"), P(("replica", "data"), None, None)),
        (2, 1, P("data", "model"), P(("replica", "data"), None, None)),
        (1, 2, P(None, "model"), P(("replica", "data"), None, "model")),
    ],
)
def test_rules_map_logical_axes(param_dims, act_dims, expected_param, expected_activation):
    mesh = partitioning.create_mesh(model_parallel_size=2)
    p = partitioning.Partitioner(mesh, partitioning.logical_axis_rules(param_dims, act_dims))
    assert p.sharding(("embed", "mlp")).spec == expected_param
    assert p.sharding(("batch", "length", "embed")).spec == expected_activation


def test_batch_size_must_divide_data_parallel_size():
    p = partitioning.Partitioner(partitioning.create_mesh(2), partitioning.logical_axis_rules())
    p.check_batch_size(8)
    with pytest.raises(
        ValueError, match="batch size 6 is not divisible by the data-parallel size 4"
    ):
        p.check_batch_size(6)


def test_indivisible_parameter_is_named_with_its_shape():
    p = partitioning.Partitioner(partitioning.create_mesh(4), partitioning.logical_axis_rules())
    abstract = {"mlp": {"wi": jax.ShapeDtypeStruct((8, 6), jnp.float32)}}
    shardings = p.shardings({"mlp": {"wi": P("embed", "mlp")}})
    with pytest.raises(ValueError, match=r"\['mlp'\]\['wi'\] shape \(8, 6\): dimension 6"):
        partitioning.check_divisible(abstract, shardings)


def test_adafactor_moments_follow_their_parameters():
    params = {"wi": jnp.zeros((256, 512)), "wo": jnp.zeros((512, 256)), "scale": jnp.zeros((256,))}
    specs = {"wi": P("embed", "mlp"), "wo": P("mlp", "embed"), "scale": P("embed")}
    opt_state = jax.eval_shape(optax.adafactor(1e-3).init, params)
    opt_specs = partitioning.optimizer_state_specs(opt_state, params, specs)
    factored = opt_specs[0]
    # v_row averages over the largest dim, v_col over the second largest.
    assert factored.v_row["wi"] == P("embed") and factored.v_col["wi"] == P("mlp")
    assert factored.v_row["wo"] == P("embed") and factored.v_col["wo"] == P("mlp")
    assert factored.v["scale"] == P("embed")  # unfactored: full second moment
    assert factored.v["wi"] == P() and factored.count == P()
    # And every spec's rank matches its leaf.
    jax.tree.map(
        lambda leaf, spec: len(spec) in (0, leaf.ndim) or pytest.fail(f"{spec} vs {leaf.shape}"),
        opt_state,
        opt_specs,
    )


def test_optimizer_state_that_follows_no_parameter_is_refused_by_path():
    params = {"mlp": {"wi": jnp.zeros((256, 512))}}
    specs = {"mlp": {"wi": P("embed", "mlp")}}
    state = {
        "count": jnp.zeros(()),
        "stray": jnp.zeros((512,)),
        "mu": {"mlp": {"wi": jnp.zeros((8, 8))}},
    }
    with pytest.raises(ValueError, match=r"\['stray'\] shape \(512,\) ends in no parameter's path"):
        partitioning.optimizer_state_specs({k: state[k] for k in ("count", "stray")}, params, specs)
    with pytest.raises(
        ValueError,
        match=r"\['mu'\]\['mlp'\]\['wi'\] shape \(8, 8\) is not shaped "
        r"like its parameter mlp/wi \(256, 512\)",
    ):
        partitioning.optimizer_state_specs({"mu": state["mu"]}, params, specs)


def test_unmapped_axis_names_are_named():
    partitioning.check_axis_names(["batch", None, "embed"], partitioning.logical_axis_rules())
    with pytest.raises(ValueError, match=r"\['head', 'kv_head'\] have no partitioning rule"):
        partitioning.check_axis_names(
            ["head", "kv_head", "batch"], partitioning.logical_axis_rules()
        )


def _traced_axis_names(model, batch, monkeypatch):
    """Every logical axis name of the model's params and of the activation constraints its
    training forward pass and its cached decoding trace."""
    import flax.linen as nn

    seen = []
    constrain = nn.with_logical_constraint

    def recording(x, names, *args, **kwargs):
        seen.extend(names)
        return constrain(x, names, *args, **kwargs)

    monkeypatch.setattr(nn, "with_logical_constraint", recording)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    params = nn.unbox(abstract)
    jax.eval_shape(model.loss_fn, params, batch, None)
    jax.eval_shape(lambda p, b: model.predict_batch(p, b, max_decode_length=3), params, batch)
    param_names = [
        n
        for spec in jax.tree.leaves(
            nn.get_partition_spec(abstract), is_leaf=lambda x: isinstance(x, P)
        )
        for n in spec
    ]
    return set(param_names), set(seen)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_every_axis_name_a_model_uses_has_a_rule(family, scan_layers, monkeypatch):
    import dataclasses

    import numpy as np

    from flan_jax import axis_names
    from flan_jax.models import base, decoder, t5

    tokens = np.full((2, 4), 3, np.int32)
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens}
    if family == "t5":
        config = t5.T5Config(
            vocab_size=16,
            d_model=8,
            num_heads=2,
            d_kv=4,
            d_ff=8,
            num_encoder_layers=1,
            num_decoder_layers=1,
            relative_attention_num_buckets=4,
            relative_attention_max_distance=8,
        )
        model = base.EncoderDecoderModel(dataclasses.replace(config, scan_layers=scan_layers))
        batch["encoder_input_tokens"] = tokens
    else:
        config = decoder.DecoderConfig(
            vocab_size=16,
            d_model=8,
            num_heads=2,
            head_dim=4,
            d_ff=8,
            num_layers=1,
            scan_layers=scan_layers,
        )
        model = base.DecoderOnlyModel(config)
        batch["decoder_causal_attention"] = np.ones_like(tokens)
    param_names, activation_names = _traced_axis_names(model, batch, monkeypatch)
    # The recorder saw the constraints (so it cannot go stale unnoticed), and the layers
    # axis shows up exactly when layers are scanned.
    assert {axis_names.BATCH, axis_names.HEADS, axis_names.MLP} <= activation_names
    assert (axis_names.LAYERS in param_names) == scan_layers
    for dims in ((1, 1), (1, 2), (2, 1), (2, 2)):
        partitioning.check_axis_names(
            param_names | activation_names, partitioning.logical_axis_rules(*dims)
        )
    assert (param_names | activation_names) - {None} <= set(axis_names.ALL)
