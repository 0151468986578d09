"""Composition helpers with one source of truth: the EMA's decay, read_value, inject_hyperparams.

Oracles: optax (ema, adam with other betas), the seed's formulas worked out in the test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt import schedules
from mpnn_opt.hyperparams import inject_hyperparams, read_value, with_hyperparam
from mpnn_opt.wrappers import ema_params, params_ema_init, params_ema_update


def test_the_ema_decay_given_at_init_is_the_one_the_read_uses():
    # the case: updates with decay 0.5 read back with a default decay were 290x off
    ema = params_ema_init({"w": jnp.zeros(1)}, decay=0.5)
    theirs = optax.ema(0.5, debias=True)
    their_state = theirs.init({"w": jnp.zeros(1)})
    for value in (1.0, 2.0, 4.0):
        ema = params_ema_update(ema, {"w": jnp.array([value])})
        their_value, their_state = theirs.update({"w": jnp.array([value])}, their_state)
    np.testing.assert_allclose(ema_params(ema)["w"], their_value["w"], rtol=1e-6)
    # by hand: a_3 = 0.5*(0.5*(0.5*1) + 0.5*2) + 0.5*4 = 2.625, debiased by 1 - 0.5^3
    np.testing.assert_allclose(ema_params(ema)["w"], [2.625 / 0.875], rtol=1e-6)


def test_read_value_refuses_an_ambiguous_name_and_names_the_paths():
    tx = mpnn_opt.chain(
        inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1), inject_hyperparams(mpnn_opt.sgd)(learning_rate=0.2)
    )
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"ambiguous.*state\[0\].*state\[1\]"):
        read_value(state, "learning_rate")
    assert float(read_value(state[0], "learning_rate")) == pytest.approx(0.1)
    assert float(read_value(state[1], "learning_rate")) == pytest.approx(0.2)


def test_read_value_takes_the_outermost_match_and_raises_keyerror_when_absent():
    state = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1).init({"w": jnp.ones(2)})
    _, state = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1).update(
        {"w": jnp.ones(2)}, state, {"w": jnp.ones(2)}
    )
    assert int(read_value(state, "count")) == 1  # the wrapper's count, above adam's own (also 1)
    with pytest.raises(KeyError, match="no value named 'momentum'"):
        read_value(state, "momentum")


def test_a_schedule_in_two_stages_makes_count_ambiguous_rather_than_a_silent_pick():
    tx = mpnn_opt.adam(schedules.linear_schedule(0.1, 0.0, 10))  # scale_by_adam and scale_by_learning_rate both count
    with pytest.raises(ValueError, match="ambiguous"):
        read_value(tx.init({"w": jnp.ones(2)}), "count")


def test_inject_hyperparams_injects_the_defaults_so_with_hyperparam_changes_beta1_like_optax():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = [{"w": jnp.array([0.5, -1.0, 0.25]) * k} for k in (1.0, -2.0, 0.5, 3.0)]
    ours = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.01, regularization=None)  # beta1 not passed
    state = with_hyperparam(ours.init(params), "beta1", 0.5)
    theirs = optax.adam(0.01, b1=0.5)
    their_state = theirs.init(params)
    p_ours, p_theirs = params, params
    for g in grads:
        u, state = ours.update(g, state, p_ours)
        p_ours = mpnn_opt.apply_updates(p_ours, u)
        v, their_state = theirs.update(g, their_state, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, v)
    np.testing.assert_allclose(p_ours["w"], p_theirs["w"], rtol=1e-6)
    assert set(state.hyperparams) == {"learning_rate", "weight_decay", "beta1", "beta2", "epsilon"}


@pytest.mark.parametrize("state_dtype", [jnp.bfloat16, jnp.float32, np.float32, "bfloat16"])
def test_inject_hyperparams_keeps_a_dtype_static_instead_of_taking_it_for_a_schedule(state_dtype):
    tx = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1, state_dtype=state_dtype)
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3, jnp.bfloat16)}, state, params)
    assert state.inner_state[0].momentums["w"].dtype == jnp.dtype(state_dtype)
    assert "state_dtype" not in state.hyperparams


def test_inject_hyperparams_keeps_a_callable_mask_static():
    tx = inject_hyperparams(mpnn_opt.sgd)(learning_rate=0.1, momentum=0.0, mask=lambda params: {"a": True, "b": False})
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    updates, _ = tx.update({"a": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(params), params)
    # by hand: only 'a' is decayed, -lr * wd * w = -0.1 * 0.001 * 1
    np.testing.assert_allclose(updates["a"], [-1e-4, -1e-4], rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], 0.0)


def test_inject_hyperparams_with_a_structural_default_still_builds():
    # torch_rmsprop decides whether it has a momentum buffer from momentum > 0: kept static, not injected
    tx = inject_hyperparams(mpnn_opt.torch_rmsprop)(learning_rate=0.01)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.array([1.0, -1.0])}, state, params)
    assert "momentum" not in state.hyperparams and "decay_rate" in state.hyperparams
    # by hand: torch RMSprop first step, s = (1 - 0.99) g^2, u = -lr * g / (sqrt(s) + eps) = -0.1 * sign(g)
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-5)


def test_schedules_take_numpy_integer_counts_and_steps():
    for count in (np.int32(3), np.int64(3), 3):
        assert float(schedules.linear_schedule(1.0, 0.0, np.int64(10))(count)) == pytest.approx(0.7)
        assert float(optax.cosine_decay_schedule(1.0, 10)(3)) == pytest.approx(
            float(schedules.cosine_decay_schedule(1.0, np.int32(10))(count))
        )


def test_a_callable_for_a_hyperparameter_that_takes_no_schedule_is_refused_at_construction():
    with pytest.raises(TypeError, match="beta1 .*callable.*inject_hyperparams"):
        mpnn_opt.adam(beta1=lambda count: 0.9)
    # through inject_hyperparams a schedule for beta1 works: the factory sees its value at each step
    tx = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1, beta1=lambda count: 0.5)
    assert float(read_value(tx.init({"w": jnp.ones(1)}), "beta1")) == 0.5


def test_setting_a_scheduled_hyperparameter_is_refused_instead_of_silently_ignored():
    tx = inject_hyperparams(mpnn_opt.sgd)(learning_rate=schedules.linear_schedule(0.1, 0.0, 10), regularization=None)
    params = {"w": jnp.ones(1)}
    _, state = tx.update({"w": jnp.ones(1)}, tx.init(params), params)
    with pytest.raises(ValueError, match="'learning_rate' follows a schedule"):
        with_hyperparam(state, "learning_rate", 0.5)
    assert float(read_value(state, "learning_rate")) == pytest.approx(0.1)  # the value the step used (count 0)
    assert float(read_value(with_hyperparam(state, "momentum", 0.5), "momentum")) == 0.5  # the numbers stay settable
