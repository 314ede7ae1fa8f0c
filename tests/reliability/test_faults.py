"""Items 3-5: corrupt or truncated checkpoints, NaN/inf losses and a full disk. Nothing loads
garbage silently, and the last good checkpoint always survives."""

import glob
import os
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest
from damage import flip_a_byte, truncate
from train_testing import (  # noqa: F401
    REPO,
    assert_trees_equal,
    make_trainer,
    run_from_repo_root,
    train_command,
    train_in_process,
)

from flan_jax import checkpoint_integrity, checkpoints, hooks, model_loader

QUICK = ("--gin.LENGTH_CHECK_EXAMPLES=0", "--gin.EVAL_EVERY=None")
NAN_LOSS = "--gin.t5.T5Config.layer_norm_epsilon=-1e6"  # rsqrt of a negative: NaN activations


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4, and its final state."""
    model_dir = tmp_path_factory.mktemp("trained")
    os.chdir(REPO)
    state, _ = train_in_process(model_dir, 4, *QUICK)
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"]
    return model_dir, state


@pytest.fixture
def run_dir(trained, tmp_path):
    """A copy of the trained run that a test may damage."""
    shutil.copytree(trained[0], tmp_path / "run")
    return tmp_path / "run"


def largest_file(step_dir):
    files = glob.glob(f"{step_dir}/state/**/*", recursive=True)
    return max((f for f in files if os.path.isfile(f)), key=os.path.getsize)


@pytest.mark.parametrize(
    "damage, named, problem",
    [
        # A chunk failing its CRC32C: named by its key in the state item's OCDBT database.
        (
            flip_a_byte,
            r"/state/[\w.]+/c/[\d/]+",
            r"bytes missing, short or changed since it was saved \(DATA_LOSS: .*\)",
        ),
        (truncate, "", r"\d+ bytes, \d+ when saved \(truncated or overwritten\)"),
        (os.remove, "", "file missing"),
    ],
)
def test_corrupt_latest_checkpoint_is_refused_naming_step_and_path(run_dir, damage, named, problem):
    damaged = largest_file(run_dir / "checkpoints" / "4")
    damage(damaged)
    path = re.escape(str(run_dir / "checkpoints" / "4")) + named if named else re.escape(damaged)
    with pytest.raises(
        checkpoints.CorruptCheckpointError,
        match=rf"checkpoint step 4 is corrupt: {path}: {problem}\. "
        r"Nothing was loaded from it\. Set --gin.CHECKPOINT_FALLBACK=True",
    ):
        train_in_process(run_dir, 6, *QUICK)
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]  # nothing moved or written


def test_missing_integrity_record_is_refused(run_dir):
    manifest = run_dir / "checkpoints" / "4" / "state" / checkpoint_integrity.RECORD_FILE
    os.remove(manifest)
    with pytest.raises(
        checkpoints.CorruptCheckpointError,
        match=rf"checkpoint step 4 is corrupt: {re.escape(str(manifest))}: missing",
    ):
        model_loader.restore_flan_jax_params(str(run_dir), None)


def test_fallback_resumes_from_the_previous_step_and_trains_the_same(run_dir, trained, caplog):
    flip_a_byte(largest_file(run_dir / "checkpoints" / "4"))
    state, _ = train_in_process(run_dir, 4, *QUICK, "--gin.CHECKPOINT_FALLBACK=True")
    assert "checkpoint step 4 is corrupt" in caplog.text and "falling back" in caplog.text
    names = sorted(os.listdir(run_dir / "checkpoints"))
    assert names[:2] == ["2", "4"] and re.fullmatch(r"4\.corrupt-[\d-]+", names[2]), names
    # Steps 3-4 were trained again from step 2: the same state as the first time.
    assert_trees_equal(state.params, trained[1].params)
    checkpoint_integrity.verify(str(run_dir / "checkpoints" / "4"), 4)


def test_trainer_skips_a_nonfinite_update_leaving_the_state_unchanged(tiny_config, fixed_batch):
    trainer = make_trainer(tiny_config)
    trainer.nonfinite = "skip"  # read when the first call traces the step
    batch = jax.device_put(fixed_batch, trainer.partitioner.batch_sharding())
    healthy, metrics = trainer.train_step(trainer.create_state(jax.random.key(0)), batch)
    assert float(metrics["finite"]) == 1.0
    params = jax.tree.map(np.array, jax.device_get(healthy.params))  # writable copies
    params["decoder"]["decoder_norm"]["scale"][0] = np.nan
    poisoned = healthy.replace(params=jax.device_put(params, trainer.params_shardings))
    before = jax.device_get(poisoned)
    after, metrics = trainer.train_step(poisoned, batch)
    assert float(metrics["finite"]) == 0.0 and np.isnan(float(metrics["loss"]))
    assert int(after.step) == int(before.step) + 1
    assert_trees_equal(jax.device_get(after.params), before.params)
    assert_trees_equal(jax.device_get(after.opt_state), before.opt_state)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(run_dir, trained):
    with pytest.raises(
        hooks.NonFiniteLossError,
        match=r"step 5: the loss, gradients or update is NaN or infinite \(loss nan.*"
        r"Stopped without saving this state; the last checkpoint, step 4 in .*, is "
        r"intact.*--gin.NONFINITE=\"'skip'\"",
    ):
        train_in_process(run_dir, 8, *QUICK, NAN_LOSS)
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
    checkpoint_integrity.verify(str(run_dir / "checkpoints" / "4"), 4)


def test_nan_loss_with_skip_drops_those_updates(run_dir, trained, capsys):
    state, _ = train_in_process(run_dir, 6, *QUICK, NAN_LOSS, "--gin.NONFINITE='skip'")
    out = capsys.readouterr().out
    assert "step 5: non-finite loss, gradients or update (loss nan" in out
    assert "NONFINITE='skip' dropped the updates of 2 steps: [5, 6]" in out
    assert int(state.step) == 6
    assert_trees_equal(jax.device_get(state.params), jax.device_get(trained[1].params))


def with_file_size_limit(kib, command):
    """`command` under `ulimit -f`, SIGXFSZ ignored: a write past the limit fails with EFBIG."""
    return ["bash", "-c", f"trap '' XFSZ; ulimit -f {kib}; exec \"$@\"", "bash", *command]


@pytest.mark.slow
def test_full_disk_while_saving_is_a_clear_error_and_keeps_earlier_checkpoints(run_dir):
    # Writing a file past 256 KiB fails (EFBIG) as writing on a full disk does (ENOSPC): the
    # save's array files are larger, the run's other files (config, events) stay under it.
    assert os.path.getsize(largest_file(run_dir / "checkpoints" / "4")) > 256 * 1024
    result = subprocess.run(
        with_file_size_limit(256, train_command(run_dir, 6, *QUICK)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    # Orbax's event loop may complain at exit after the failed save; show the rest.
    errors = "\n".join(line for line in result.stderr.splitlines() if "Event loop" not in line)
    assert result.returncode == 1, errors[-3000:]
    assert re.search(
        r"CheckpointWriteError: saving checkpoint step 6 to .*/checkpoints failed: the disk is "
        r"full .*File too large.*Earlier checkpoints \[2, 4\] are intact; free space",
        result.stderr,
    ), errors[-3000:]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]  # partial save removed
    for step in (2, 4):
        checkpoint_integrity.verify(str(run_dir / "checkpoints" / str(step)), step)


def test_checkpoint_of_another_vocabulary_names_each_parameter(trained, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"checkpoint step 4 at .*/checkpoints/4 does not fit this "
        r"model: \['decoder'\]\['logits_dense'\]\['kernel'\] saved \(128, 512\), "
        r"model \(128, 1024\); \['token_embedder'\]\['embedding'\] saved \(512, 128\), "
        r"model \(1024, 128\)\. A differing token_embedder/logits dimension is the "
        r"vocabulary size",
    ):
        train_in_process(
            tmp_path,
            1,
            *QUICK,
            f"--gin.INITIAL_CHECKPOINT_PATH='{trained[0]}'",
            "--gin.VOCAB_SIZE=1024",
        )
