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


@pytest.mark.parametrize("preset", ["flan_t5/small", "flan_palm/8b"])
def test_paper_presets_train_on_the_released_collection_in_proportion_b(preset):
    from flan_jax import inspect_mixture

    gin.clear_config()
    try:
        cli.parse([f"--gin_file=gin/runs/{preset}.gin", "--gin.MODEL_DIR='/tmp/x'"], "test")
        assert gin.query_parameter("%MIXTURE_PROPORTIONS") == "b"
        assert inspect_mixture.mixture_from_gin() == "flan2022_released_b"
    finally:
        gin.clear_config()


def test_paper_preset_without_released_dir_stops_before_compiling(tmp_path, monkeypatch):
    """No RELEASED_DIR: one message with the download commands and the size, before the
    model dir is written or a Trainer (which compiles) is built."""
    from flan_jax import train

    monkeypatch.delenv("FLAN_JAX_RELEASED_DIR", raising=False)
    monkeypatch.setattr(train, "Trainer", lambda *a, **k: pytest.fail("compiled"))
    run = tmp_path / "run"
    gin.clear_config()
    try:
        with pytest.raises(SystemExit) as stop:
            train.main(["--gin_file=gin/runs/flan_t5/small.gin", f"--gin.MODEL_DIR='{run}'"])
    finally:
        gin.clear_config()
    message = str(stop.value)
    assert message.startswith("Stopped before any work: could not read")
    assert "set $FLAN_JAX_RELEASED_DIR (or gin RELEASED_DIR)" in message
    for submix in ("flan2021", "t0", "niv2", "cot", "dialog"):
        assert (
            "huggingface-cli download --repo-type dataset "
            f"DataProvenanceInitiative/{submix}_submix_original" in message
        )
    assert "17.26M rows: flan2021 5.36M, t0 1.65M, niv2 10.07M, cot 0.18M, plus dialog" in message
    assert "mixtures/flan2022_handbuilt.gin" in message
    assert not run.exists()


def test_aot_fit_check_of_a_paper_preset_needs_no_data(monkeypatch):
    """The fit check compiles the program, not the input: it reads no RELEASED_DIR, so
    it runs on a laptop before the collection is fetched."""
    pytest.importorskip("libtpu", reason="AOT compiles for TPU need libtpu (the `tpu` extra)")
    from flan_jax import aot

    monkeypatch.delenv("FLAN_JAX_RELEASED_DIR", raising=False)
    gin.clear_config()
    try:
        report = aot.check_fit(
            [
                "--gin_file=runs/flan_t5/small.gin",
                "--gin_file=models/t5_1_1/tiny.gin",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
                "--gin.BATCH_SIZE=8",
            ],
            "v4:2x2x1",
            decode=False,
        )
    finally:
        gin.clear_config()
    assert report.fits
