"""The HF <-> flan_jax command line: import, restore, export, against transformers' T5."""

import dataclasses
import filecmp
import json
import os

import jax
import numpy as np
import pytest
from hf_testing import TOL, hf_logits, padded_tokens, save_hf_dir, shift_right

from flan_jax import convert, model_loader, partitioning
from flan_jax.interop import hf_t5
from flan_jax.models.base import EncoderDecoderModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    targets = padded_tokens(rng, [9, 4], 9, eos=True)
    return {
        "encoder_input_tokens": padded_tokens(rng, [11, 6], 11),
        "decoder_input_tokens": shift_right(targets),
    }


def abstract_params(model):
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(), partitioning.logical_axis_rules()
    )
    return partitioning.abstract_params(model, partitioner)[0]


def restore(out):
    """(model, params) as a run with INITIAL_CHECKPOINT_PATH=out and out/model.gin gets them."""
    model, _ = model_loader.model_from_gin_file(os.path.join(out, "model.gin"))
    return model, model_loader.restore_params(out, model, abstract_params(model))


def test_imported_checkpoint_gives_hf_logits(imported, hf_model, batch):
    model, params = restore(imported)
    np.testing.assert_allclose(
        np.asarray(model._logits(params, batch)), hf_logits(hf_model, batch), **TOL
    )


def test_model_gin_builds_the_hf_config(imported, hf_dir):
    model, vocabulary = model_loader.model_from_gin_file(os.path.join(imported, "model.gin"))
    with open(os.path.join(hf_dir, "config.json")) as f:
        assert model.config == hf_t5.t5_config_from_hf(json.load(f))
    assert vocabulary == os.path.join(imported, "spiece.model")
    assert filecmp.cmp(vocabulary, os.path.join(hf_dir, "spiece.model"), shallow=False)


def test_sharded_safetensors_import_the_same_params(hf_model, hf_dir, tmp_path):
    sharded = save_hf_dir(tmp_path / "sharded", hf_model, max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    _, expected = hf_t5.read_hf_dir(hf_dir)
    _, params = hf_t5.read_hf_dir(sharded)
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_scan_layers_import_gives_hf_logits(hf_dir, hf_model, batch, tmp_path):
    convert.main(
        [
            "import",
            "--format",
            "hf",
            "--checkpoint",
            hf_dir,
            "--output",
            str(tmp_path),
            "--scan_layers",
        ]
    )
    model, params = restore(str(tmp_path))
    assert model.config.scan_layers
    assert params["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape[0] == 2
    np.testing.assert_allclose(
        np.asarray(model._logits(params, batch)), hf_logits(hf_model, batch), **TOL
    )


def test_export_loads_in_transformers_with_the_same_logits(imported, hf_model, batch, tmp_path):
    convert.main(["export", "--format", "hf", "--checkpoint", imported, "--output", str(tmp_path)])
    exported = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    assert exported.lm_head.weight.data_ptr() != exported.shared.weight.data_ptr()
    np.testing.assert_allclose(hf_logits(exported, batch), hf_logits(hf_model, batch), **TOL)
    assert os.path.exists(tmp_path / "spiece.model")


def test_params_to_hf_inverts_params_from_hf(hf_model):
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    config = hf_t5.t5_config_from_hf(hf_model.config.to_dict())
    for scan_layers in (False, True):
        c = dataclasses.replace(config, scan_layers=scan_layers)
        back = hf_t5.params_to_hf(hf_t5.params_from_hf(state, c), c)
        expected = {k: v for k, v in state.items() if not k.endswith("embed_tokens.weight")}
        assert back.keys() == expected.keys()
        for key in back:
            np.testing.assert_array_equal(back[key], expected[key], err_msg=key)


def test_import_refuses_a_config_it_cannot_represent(hf_dir, tmp_path):
    relu = tmp_path / "relu"
    relu.mkdir()
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = {**json.load(f), "feed_forward_proj": "relu", "is_gated_act": False}
    (relu / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="feed_forward_proj='relu'"):
        convert.main(
            [
                "import",
                "--format",
                "hf",
                "--checkpoint",
                str(relu),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out").exists()


def test_restoring_into_another_layout_names_the_missing_params(imported):
    model, _ = model_loader.model_from_gin_file(os.path.join(imported, "model.gin"))
    scanned = EncoderDecoderModel(dataclasses.replace(model.config, scan_layers=True))
    with pytest.raises(ValueError, match=r"\['decoder'\]\['layers'\].*scan_layers"):
        model_loader.restore_flan_jax_params(imported, abstract_params(scanned))
