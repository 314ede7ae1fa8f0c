import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import optim


def test_constant_schedule_is_the_papers():
    schedule = optim.learning_rate_schedule(5e-4)
    assert [float(schedule(s)) for s in (0, 10, 10_000)] == pytest.approx([5e-4] * 3)


def test_linear_warmup_then_constant():
    schedule = optim.learning_rate_schedule(1e-2, warmup_steps=4)
    np.testing.assert_allclose(
        [schedule(s) for s in range(6)], [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2], rtol=1e-6
    )


def test_rsqrt_decay_is_continuous_after_warmup():
    schedule = optim.learning_rate_schedule(1e-2, decay="rsqrt", warmup_steps=100)
    assert float(schedule(99)) == pytest.approx(1e-2)
    assert float(schedule(399)) == pytest.approx(1e-2 * np.sqrt(100 / 400))


def test_bad_schedules_name_the_fix():
    with pytest.raises(ValueError, match="unknown learning-rate decay 'cosine'"):
        optim.learning_rate_schedule(1e-3, decay="cosine")
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        optim.learning_rate_schedule(1e-3, decay="rsqrt")


def test_adafactor_factors_large_matrices_only():
    params = {"big": jnp.zeros((256, 128)), "small": jnp.zeros((8, 8))}
    state = optim.adafactor(1e-3).init(params)[0]
    assert state.v_row["big"].shape == (128,) and state.v_col["big"].shape == (256,)
    assert state.v["small"].shape == (8, 8)
