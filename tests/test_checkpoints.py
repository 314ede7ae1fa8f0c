import jax
import numpy as np
import pytest
from train_testing import assert_trees_equal, make_trainer, run_steps

from flan_jax import checkpoints, model_loader


@pytest.fixture(scope="module")
def trained(tiny_config, fixed_batch):
    trainer = make_trainer(tiny_config, (4, 2))
    state, _, _ = run_steps(trainer, fixed_batch, 2)
    return trainer, state


def test_save_then_restore_gives_identical_state(trained, tmp_path):
    trainer, state = trained
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    checkpointer.save(2, state, {"step": 2, "seed": 0})
    checkpointer.wait_until_finished()
    restored, data_state = checkpointer.restore(trainer.abstract_state)
    assert data_state == {"step": 2, "seed": 0}
    assert int(restored.step) == 2
    assert_trees_equal(state.params, restored.params)
    assert_trees_equal(state.opt_state, restored.opt_state)


def test_restore_onto_another_mesh_reshards(trained, tiny_config, fixed_batch, tmp_path):
    trainer, state = trained
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    checkpointer.save(2, state, {"step": 2})
    checkpointer.wait_until_finished()
    other = make_trainer(tiny_config, (2, 4))
    restored, _ = checkpointer.restore(other.abstract_state)
    assert_trees_equal(state.params, restored.params)
    jax.tree.map(
        lambda array, sharding: (
            array.sharding.is_equivalent_to(sharding, array.ndim) or pytest.fail()
        ),
        restored.params,
        other.params_shardings,
    )
    # Training continues identically on the new mesh.
    batch = jax.device_put(fixed_batch, trainer.partitioner.batch_sharding())
    _, on_old = trainer.train_step(jax.tree.map(lambda x: x.copy(), state), batch)
    _, on_new = other.train_step(
        restored, jax.device_put(fixed_batch, other.partitioner.batch_sharding())
    )
    np.testing.assert_allclose(float(on_old["loss"]), float(on_new["loss"]), rtol=1e-6)


def test_keeps_the_newest_checkpoints(trained, tmp_path):
    _, state = trained
    checkpointer = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
    for step in (1, 2, 3):
        checkpointer.save(step, state, {"step": step})
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == [2, 3]
    assert checkpointer.latest_step() == 3


def test_params_for_finetuning_come_from_a_model_dir(trained, tmp_path):
    trainer, state = trained
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    checkpointer.save(2, state, {"step": 2})
    checkpointer.wait_until_finished()
    params = model_loader.restore_flan_jax_params(str(tmp_path), trainer.abstract_state.params)
    assert_trees_equal(state.params, params)
    fresh = trainer.state_from_params(params)
    assert int(fresh.step) == 0
    assert_trees_equal(fresh.opt_state, trainer.optimizer.init(params))


def test_missing_initial_checkpoint_names_the_path(trained, tmp_path):
    trainer, _ = trained
    with pytest.raises(FileNotFoundError, match=r"INITIAL_CHECKPOINT_PATH .*nothing_here"):
        model_loader.restore_flan_jax_params(
            str(tmp_path / "nothing_here"), trainer.abstract_state.params
        )
