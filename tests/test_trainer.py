import flax.linen as nn
import jax
import numpy as np
import pytest
from train_testing import make_trainer, run_steps


def test_loss_decreases_on_a_fixed_batch(tiny_config, fixed_batch):
    state, losses, metrics = run_steps(make_trainer(tiny_config), fixed_batch, 40)
    assert int(state.step) == 40
    assert losses[-1] < 0.3 * losses[0], losses
    assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
    assert float(metrics["nonpadding_fraction"]) == pytest.approx(
        fixed_batch["decoder_loss_weights"].mean()
    )
    assert float(metrics["grad_norm"]) > 0


def test_microbatches_give_the_same_update(tiny_config, fixed_batch):
    one, losses_one, _ = run_steps(make_trainer(tiny_config), fixed_batch, 2)
    four, losses_four, _ = run_steps(make_trainer(tiny_config, num_microbatches=4), fixed_batch, 2)
    np.testing.assert_allclose(losses_one, losses_four, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one.params, four.params
    )


def test_same_losses_on_every_mesh_shape(tiny_config, fixed_batch):
    _, reference, _ = run_steps(make_trainer(tiny_config, (8, 1)), fixed_batch, 5)
    for mesh_shape in [(4, 2), (2, 4), (1, 8)]:
        _, losses, _ = run_steps(make_trainer(tiny_config, mesh_shape), fixed_batch, 5)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(mesh_shape))
    # Two slices of (2, 2): data parallel across slices as well.
    _, losses, _ = run_steps(make_trainer(tiny_config, (2, 2), num_slices=2), fixed_batch, 5)
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg="2 slices")


def test_state_is_sharded_by_the_logical_rules(tiny_config):
    trainer = make_trainer(tiny_config, (4, 2))
    state = trainer.create_state(jax.random.key(0))
    logical = nn.get_partition_spec(jax.eval_shape(trainer.model.init, jax.random.key(0)))
    expected = trainer.partitioner.shardings(logical)
    checked = []

    def check(path, array, sharding, logical_spec):
        assert array.sharding.is_equivalent_to(sharding, array.ndim), path
        if "mlp" in logical_spec:  # e.g. the MLP kernels: split over `model`
            assert sharding.spec[tuple(logical_spec).index("mlp")] == "model"
            checked.append(path)

    jax.tree_util.tree_map_with_path(check, state.params, expected, logical)
    assert checked, "no parameter carries the `mlp` axis"
