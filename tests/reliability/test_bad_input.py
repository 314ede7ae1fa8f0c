"""Item 6: each kind of bad input stops before any training with a message that names the
value, the constraint and the fix."""

import json

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from train_testing import run_from_repo_root, train_in_process  # noqa: F401

from flan_jax import cli, data, infer
from flan_jax.interop import hf_t5


@pytest.mark.parametrize(
    "bindings, message",
    [
        pytest.param(
            ["--gin.MIXTURE_OR_TASK_NAME='demo_sortt'"],
            r"'demo_sortt'.*Closest registered names: demo_sort",
            id="unknown task",
        ),
        pytest.param(
            ["--gin.TRAIN_STEPZ=5"],
            r"--gin.TRAIN_STEPZ=5: no loaded gin file uses the "
            r"macro TRAIN_STEPZ.*Did you mean TRAIN_STEPS\?",
            id="unknown macro",
        ),
        pytest.param(
            ["--gin.train.train.stepz=5"],
            r"'train.train' doesn't have a parameter named 'stepz'",
            id="unknown parameter",
        ),
        pytest.param(
            ["--gin.BATCH_SIZE=6"],
            r"batch size 6 is not divisible by the data-parallel "
            r"size 8 .*use a multiple of 8",
            id="batch size",
        ),
        pytest.param(
            ["--gin.MODEL_PARALLEL_SIZE=3"],
            r"model_parallel_size=3 must divide the 8 "
            r"devices of a slice; pick one of \[1, 2, 4, 8\]",
            id="mesh",
        ),
        # tiny T5 has 4 heads; 8-way model parallelism cannot split them.
        pytest.param(
            ["--gin.MODEL_PARALLEL_SIZE=8"],
            r"\['encoder'\]\['layers_0'\]\['attention'\]"
            r"\['query'\]\['kernel'\] shape \(128, 4, 32\): dimension 4 is not divisible by "
            r"mesh axes \('model',\) of size 8",
            id="parameter vs mesh axis",
        ),
        pytest.param(
            ["--gin.VOCAB_SIZE=256"],
            r"feature 'inputs' uses a vocabulary of 512 ids but "
            r"the model's VOCAB_SIZE is 256: ids past 255 have no embedding",
            id="task vocabulary vs model",
        ),
    ],
)
def test_bad_run_settings_are_refused_before_training(tmp_path, bindings, message):
    with pytest.raises(ValueError, match=message):
        train_in_process(tmp_path, 1, *bindings)


def test_missing_required_macro_says_how_to_set_it():
    gin.clear_config()
    try:
        with pytest.raises(
            ValueError,
            match=r"MODEL_DIR is required by gin/models/t5_1_1/tiny.gin, gin/runs/finetune.gin "
            r"but was not set: pass --gin.MODEL_DIR=VALUE",
        ):
            cli.parse(
                [
                    "--gin_file=gin/models/t5_1_1/tiny.gin",
                    "--gin_file=gin/runs/finetune.gin",
                    "--gin.MIXTURE_OR_TASK_NAME='flan_demo'",
                    "--gin.TRAIN_STEPS=1",
                    "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
                ],
                description="test",
            )
    finally:
        gin.clear_config()


def test_examples_longer_than_the_feature_lengths_are_counted():
    message = data.check_lengths("demo_sort", {"inputs": 12, "targets": 4}, examples_per_task=20)
    assert message.startswith("warning: ")
    # Every sort example's targets (sorted digits + EOS) are longer than 4 tokens.
    assert "demo_sort targets 20 (longest" in message
    assert "of the 20 examples checked (the first 20 of each task's 'train' split)" in message
    assert "TASK_FEATURE_LENGTHS {'inputs': 12, 'targets': 4} and will be truncated" in message
    assert (
        data.check_lengths("demo_sort", {"inputs": 512, "targets": 512}, examples_per_task=20)
        is None
    )


def test_hf_configs_flan_jax_cannot_represent_are_refused():
    good = hf_t5.hf_config_from_t5(
        hf_t5.T5Config(vocab_size=64, d_model=8, num_heads=2, d_kv=4, d_ff=16)
    )
    hf_t5.t5_config_from_hf(good)
    refused = {
        "model_type": ("bart", r"model_type='bart' is not supported: only T5 v1.1-style"),
        "feed_forward_proj": ("relu", r"feed_forward_proj='relu' is not supported: .*'gated-gelu'"),
        "dense_act_fn": ("relu", r"dense_act_fn='relu' is not supported"),
        "scale_decoder_outputs": (True, r"scale_decoder_outputs=True is not supported: .*T5 v1.0"),
        "eos_token_id": (
            2,
            r"eos_token_id=2 is not supported: flan_jax hard-codes eos_token_id = 1",
        ),
    }
    for field, (value, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            hf_t5.t5_config_from_hf({**good, field: value})


def test_hf_dir_without_safetensors_is_refused(tmp_path):
    good = hf_t5.hf_config_from_t5(
        hf_t5.T5Config(vocab_size=64, d_model=8, num_heads=2, d_kv=4, d_ff=16)
    )
    (tmp_path / "config.json").write_text(json.dumps(good))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(
        FileNotFoundError,
        match=r"neither model.safetensors nor "
        r"model.safetensors.index.json; only safetensors weights are read",
    ):
        hf_t5.read_hf_dir(str(tmp_path))


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"inputs": "cut', "not valid JSON"),
        ('{"input": "typo"}', 'each line must be a JSON object with a string "inputs"'),
        ('{"inputs": "x", "targets": 3}', '"targets" must be a string'),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "in.jsonl"
    path.write_text('{"inputs": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: {problem}"):
        infer.read_jsonl(str(path))


@pytest.fixture
def empty_task():
    name = "reliability_empty_task"
    vocabulary = seqio.PassThroughVocabulary(size=16)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {"inputs": np.zeros((0, 3), np.int32), "targets": np.zeros((0, 3), np.int32)}
            ),
            splits=("train",),
        ),
        output_features={"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)},
    )
    yield name
    seqio.TaskRegistry.remove(name)


def test_empty_data_source_is_refused(empty_task):
    with pytest.raises(
        ValueError,
        match=r"task 'reliability_empty_task' has no examples in split "
        r"'train': its data source is empty \(FunctionDataSource\)",
    ):
        data.check_lengths(empty_task, {"inputs": 8, "targets": 8})


def test_a_data_stream_that_runs_dry_stops_with_the_step(empty_task, tmp_path):
    # Without the start-up check, the loop itself notices that no batch ever came.
    with pytest.raises(
        RuntimeError,
        # Steps are numbered as the checkpoints are (from INITIAL_CHECKPOINT_PATH's step).
        match=r"the data of 'reliability_empty_task' ran out after step 0 "
        r"of 3; the training split is empty or smaller than one batch of 8",
    ):
        train_in_process(
            tmp_path,
            3,
            f"--gin.MIXTURE_OR_TASK_NAME='{empty_task}'",
            "--gin.LENGTH_CHECK_EXAMPLES=0",
        )
