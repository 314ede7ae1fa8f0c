"""flan_jax.model_loader: flan_jax checkpoints and Hugging Face directories into (model, params
on the mesh, vocabulary), without touching the caller's gin config."""

import dataclasses
import json

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from flan_jax import cli, convert, model_loader, optim, partitioning
from flan_jax.interop import hf_t5
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.trainer import Trainer


@pytest.fixture(scope="module")
def config(tiny_config):
    return dataclasses.replace(tiny_config, num_encoder_layers=2, num_decoder_layers=2)


@pytest.fixture(scope="module")
def hf_dir(config, tmp_path_factory):
    """An HF directory written from a random flan_jax model: no torch needed."""
    path = tmp_path_factory.mktemp("hf")
    model = EncoderDecoderModel(config)
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(3))))
    save_file(hf_t5.params_to_hf(params, config), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(hf_t5.hf_config_from_t5(config)))
    return str(path)


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("imported") / "ckpt")
    convert.import_hf(hf_dir, out)
    return out


def partitioner(model_parallel_size=2):
    return partitioning.Partitioner(
        partitioning.create_mesh(model_parallel_size), partitioning.logical_axis_rules()
    )


def test_formats_are_told_apart_by_their_files(hf_dir, imported, tmp_path):
    assert model_loader.checkpoint_format(hf_dir) == model_loader.HF
    for path in (imported, f"{imported}/checkpoints", f"{imported}/checkpoints/0"):
        assert model_loader.checkpoint_format(path) == model_loader.FLAN_JAX
    (tmp_path / "checkpoint").write_bytes(b"\x85")  # T5X's msgpack file
    assert model_loader.checkpoint_format(str(tmp_path)) == model_loader.T5X
    with pytest.raises(ValueError, match="is not a T5X msgpack file"):
        model_loader.load(str(tmp_path), partitioner())
    with pytest.raises(FileNotFoundError, match=r"is none of: a flan_jax model dir"):
        model_loader.checkpoint_format(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="is a Hugging Face directory: its config.json"):
        model_loader.load_model(hf_dir, model_gin_file="gin/models/t5_1_1/tiny.gin")


def test_an_hf_dir_and_its_import_load_the_same_model_on_the_same_shardings(
    hf_dir, imported, config
):
    p = partitioner()
    from_hf = model_loader.load(hf_dir, p)
    from_import = model_loader.load(imported, p)
    assert from_hf.model.config == from_import.model.config == config
    abstract, _ = partitioning.abstract_params(from_hf.model, p)
    for loaded in (from_hf, from_import):
        got = jax.tree.map(lambda x: x.sharding, loaded.params)
        assert got == jax.tree.map(lambda x: x.sharding, abstract)
    jax.tree.map(np.testing.assert_array_equal, from_hf.params, from_import.params)
    # Heads are sharded over the 2-way model axis.
    query = from_hf.params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert query.sharding.shard_shape(query.shape) == (32, 4, 8)
    assert from_hf.vocabulary_path is None  # this HF dir has no spiece.model


def test_an_initial_checkpoint_from_an_hf_dir_takes_a_trainers_layout(hf_dir, config):
    scanned = EncoderDecoderModel(dataclasses.replace(config, scan_layers=True))
    trainer = Trainer(scanned, optim.adafactor(1e-3), partitioner())
    params = model_loader.restore_params(hf_dir, scanned, trainer.abstract_state.params)
    assert params["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape[0] == 2
    assert (
        params["decoder"]["decoder_norm"]["scale"].sharding
        == (trainer.params_shardings["decoder"]["decoder_norm"]["scale"])
    )
    wider = EncoderDecoderModel(dataclasses.replace(config, d_ff=128))
    abstract, _ = partitioning.abstract_params(wider, partitioner())
    with pytest.raises(
        ValueError,
        match=r"does not fit this model: .*\['wi_0'\]\['kernel'\] "
        r"\(32, 64\) vs the model's \(32, 128\)",
    ):
        model_loader.restore_params(hf_dir, wider, abstract)


def test_reading_a_model_gin_leaves_the_global_config_alone(imported):
    try:
        cli.parse(["--gin_file=runs/demo.gin", "--gin.MODEL_DIR='/tmp/run'"], "test")
        before = {key: dict(values) for key, values in gin.config._CONFIG.items()}
        model, vocabulary = model_loader.model_from_gin_file(f"{imported}/model.gin")
        assert model.config.vocab_size == 64 and vocabulary is None
        assert gin.config._CONFIG == before and gin.config._CONFIG_IS_LOCKED
        assert gin.query_parameter("%VOCAB_SIZE") == 512  # the demo's, not the checkpoint's
    finally:
        gin.clear_config()


def test_a_vocabulary_comes_from_the_flag_the_checkpoint_or_the_environment(imported, monkeypatch):
    from tasks import demo, vocab

    monkeypatch.delenv(vocab.FLAN_VOCAB_ENV, raising=False)
    loaded = model_loader.load(imported, partitioner())
    with pytest.raises(FileNotFoundError, match=r"vocabulary None not found; pass --vocabulary"):
        loaded.vocabulary()
    demo = demo.vocabulary().sentencepiece_model_file
    monkeypatch.setenv(vocab.FLAN_VOCAB_ENV, demo)
    assert loaded.vocabulary().sentencepiece_model_file == demo
    given = model_loader.load(imported, partitioner(), vocabulary_path=demo)
    assert given.vocabulary_path == demo
