"""The run presets parse, carry the paper's hyperparameters and build the paper's models."""

import math

import flax.linen as nn
import gin
import jax
import pytest

from flan_jax import aot, cli
from flan_jax.models import base

# Parameter counts of the google/flan-t5-* checkpoints.
FLAN_T5 = {
    "small": (98_000, 76_961_152),
    "base": (84_000, 247_577_856),
    "large": (64_000, 783_150_080),
    "xl": (38_000, 2_849_757_184),
    "xxl": (14_000, 11_135_332_352),
}
FLAN_PALM = {"8b": (40_000, 3e-3, 0.05), "62b": (40_000, 3e-3, 0.05), "540b": (21_000, 1e-3, 0.1)}


@pytest.fixture
def parse_preset():
    def parse(path):
        gin.clear_config()
        cli.parse(
            [f"--gin_file={path}", "--gin.MIXTURE_OR_TASK_NAME='any'", "--gin.MODEL_DIR='/tmp/x'"],
            description="test",
        )
        return lambda macro: gin.query_parameter(f"%{macro}")

    yield parse
    gin.clear_config()


def param_count(model) -> int:
    shapes = jax.eval_shape(lambda r: nn.unbox(model.init(r)), jax.random.key(0))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("size", FLAN_T5)
def test_flan_t5_presets(size, parse_preset):
    macro = parse_preset(f"gin/runs/flan_t5/{size}.gin")
    steps, params = FLAN_T5[size]
    assert (macro("TRAIN_STEPS"), macro("BATCH_SIZE"), macro("LEARNING_RATE")) == (steps, 64, 5e-4)
    assert macro("DROPOUT_RATE") == 0.05 and macro("LEARNING_RATE_DECAY") == "constant"
    assert macro("LOSS_NORMALIZING_FACTOR") == "NUM_REAL_TARGET_TOKENS"
    model = gin.get_configurable(base.EncoderDecoderModel)()
    assert model.config.dropout_rate == 0.05
    assert param_count(model) == params


@pytest.mark.parametrize("size", FLAN_PALM)
def test_flan_palm_presets(size, parse_preset):
    macro = parse_preset(f"gin/runs/flan_palm/{size}.gin")
    steps, learning_rate, dropout = FLAN_PALM[size]
    assert (macro("TRAIN_STEPS"), macro("BATCH_SIZE")) == (steps, 32)
    assert macro("LEARNING_RATE") == learning_rate
    assert sum(macro("TASK_FEATURE_LENGTHS").values()) == 2048
    model = gin.get_configurable(base.DecoderOnlyModel)()
    assert model.config.dropout_rate == dropout


@pytest.mark.parametrize(
    "binding, want",
    [
        ((), "NUM_REAL_TARGET_TOKENS"),
        (("LOSS_NORMALIZING_FACTOR=None",), None),
        (("LOSS_NORMALIZING_FACTOR=233472",), 233472),
        (("LOSS_NORMALIZING_FACTOR='AVERAGE_PER_SEQUENCE'",), "AVERAGE_PER_SEQUENCE"),
    ],
)
def test_loss_normalizing_factor_reaches_the_train_step(binding, want):
    run = aot.load_run(
        ["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin"],
        jax.devices(),
        ["TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", *binding],
    )
    assert run.loss_normalizing_factor == want
