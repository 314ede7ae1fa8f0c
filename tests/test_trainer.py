import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from loss_testing import FACTORS, packed_batch, t5x_loss
from train_testing import make_trainer, run_steps

from flan_jax.models import base


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


# --- LOSS_NORMALIZING_FACTOR: the step's gradient is T5X's full-batch one, microbatched or not ---


def gradient_recorder() -> optax.GradientTransformation:
    """Keeps each step's gradient as its state and leaves the parameters as they are."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def initial_params(model):
    """The parameters `Trainer.create_state(jax.random.key(0))` starts from."""
    return jax.jit(lambda rng: nn.unbox(model.init(rng)))(jax.random.key(0))


def t5x_training_loss(params, model, batch, factor):
    """T5X's loss of `model` (z-loss 1e-3, label smoothing 0.1) on `batch` under `factor`."""
    logits = model._logits(params, batch)
    return t5x_loss(logits, batch, factor, z_loss=1e-3, label_smoothing=0.1)[0]


@pytest.fixture(scope="module")
def t5x_reference(tiny_config):
    """T5X's loss and gradient for each factor on the whole packed batch, at the parameters
    every trainer below starts from."""
    model = base.EncoderDecoderModel(tiny_config, z_loss=1e-3, label_smoothing=0.1)
    batch = packed_batch(tiny_config.vocab_size)
    params = jax.device_get(initial_params(model))
    grad_fn = jax.value_and_grad(t5x_training_loss)
    references = {factor: grad_fn(params, model, batch, factor) for factor in FACTORS}
    return model, batch, params, references


@pytest.mark.parametrize(
    "factor, num_microbatches",
    [(factor, 4) for factor in FACTORS] + [("AVERAGE_PER_SEQUENCE", 1)],
)
def test_each_loss_normalizing_factor_gives_t5xs_gradient(
    tiny_config, t5x_reference, factor, num_microbatches
):
    model, batch, _, references = t5x_reference
    trainer = make_trainer(
        tiny_config,
        model=model,
        optimizer=gradient_recorder(),
        num_microbatches=num_microbatches,
        loss_normalizing_factor=factor,
    )
    state, _, metrics = run_steps(trainer, batch, 1)
    want_loss, want_grads = references[factor]
    np.testing.assert_allclose(metrics["normalized_loss"], want_loss, rtol=2e-5)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want_grads))
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale),
        jax.device_get(state.opt_state),
        want_grads,
    )
    # "loss" stays the mean over real target tokens whatever the factor.
    want_per_token, _ = references["NUM_REAL_TARGET_TOKENS"]
    np.testing.assert_allclose(metrics["loss"], want_per_token, rtol=2e-5)


@pytest.mark.parametrize("factor", ["NUM_REAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"])
def test_t5xs_own_microbatching_would_differ_on_this_batch(t5x_reference, factor):
    """T5X divides each microbatch's loss by that microbatch's factor and adds the gradients;
    on this batch that is not the full batch's loss (even after dividing by the number of
    microbatches), so the test above tells the two apart."""
    model, batch, params, references = t5x_reference
    microbatches = [{k: v[i::4] for k, v in batch.items()} for i in range(4)]
    summed = sum(float(t5x_training_loss(params, model, mb, factor)) for mb in microbatches)
    full = float(references[factor][0])
    assert abs(summed / 4 - full) > 1e-3 * full
