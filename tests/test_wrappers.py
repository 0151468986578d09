"""Non-finite skipping and the params EMA, against hand-worked numbers and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt.wrappers import ema_params, params_ema_init, params_ema_update, skip_non_finite
from oracles import tree_relative_error


def test_a_non_finite_step_is_skipped_with_state_unchanged_and_counted():
    tx = skip_non_finite(mpnn_opt.adam(0.1, None))
    params = {"w": jnp.array([1.0, 2.0])}
    state = tx.init(params)
    step = jax.jit(tx.update)
    _, state = step({"w": jnp.array([0.5, -0.5])}, state, params)
    before = state.inner_state
    updates, state = step({"w": jnp.array([jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    jax.tree.map(np.testing.assert_array_equal, state.inner_state, before)
    assert int(state.skipped) == 1 and not bool(state.last_finite)
    updates, state = step({"w": jnp.array([jnp.inf, 1.0])}, state, params)
    assert int(state.skipped) == 2


def test_finite_steps_equal_the_inner_optimizer_and_optax_apply_if_finite(rng):
    grads = [{"w": jnp.asarray(rng.standard_normal(4).astype(np.float32))} for _ in range(6)]
    grads[2] = {"w": grads[2]["w"].at[1].set(jnp.nan)}
    ours = skip_non_finite(mpnn_opt.adam(0.01, None))
    theirs = optax.apply_if_finite(optax.adam(0.01), max_consecutive_errors=100)
    p_ours = p_theirs = {"w": jnp.ones(4)}
    s_ours, s_theirs = ours.init(p_ours), theirs.init(p_theirs)
    for g in grads:
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = mpnn_opt.apply_updates(p_ours, u)
        u, s_theirs = theirs.update(g, s_theirs, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
    assert tree_relative_error(p_ours, p_theirs) <= 1e-6
    assert int(s_ours.skipped) == int(s_theirs.total_notfinite) == 1
    inner, p_inner = mpnn_opt.adam(0.01, None), {"w": jnp.ones(4)}
    s_inner = inner.init(p_inner)
    for g in grads[:2] + grads[3:]:  # the same run with the bad step left out
        u, s_inner = inner.update(g, s_inner, p_inner)
        p_inner = mpnn_opt.apply_updates(p_inner, u)
    np.testing.assert_array_equal(p_ours["w"], p_inner["w"])


def test_skipping_needs_no_host_synchronization():
    tx = skip_non_finite(mpnn_opt.sgd(0.1))
    params = {"weights": jnp.ones(3)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    grads = {"weights": jnp.array([1.0, jnp.nan, 0.0])}
    step(grads, state, params)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        _, state = step(grads, state, params)
    assert int(state.skipped) == 1


def test_params_ema_by_hand_with_and_without_debiasing():
    ema = params_ema_init({"w": jnp.array([0.0], jnp.bfloat16)}, decay=0.5)
    averaged = 0.0
    for p in [1.0, 2.0, 4.0]:
        ema = params_ema_update(ema, {"w": jnp.array([p], jnp.bfloat16)})
        averaged = 0.5 * averaged + 0.5 * p
    np.testing.assert_allclose(ema_params(ema, debias=False)["w"], [averaged], rtol=1e-6)
    # the read uses the EMA's own decay (0.5): one source of truth, no second decay argument to get wrong
    np.testing.assert_allclose(ema_params(ema)["w"], [averaged / (1 - 0.5**3)], rtol=1e-6)
    assert ema.average["w"].dtype == jnp.float32
    assert ema_params(ema, like={"w": jnp.zeros(1, jnp.bfloat16)})["w"].dtype == jnp.bfloat16


def test_the_ema_decay_is_given_once():
    ema = params_ema_init({"w": jnp.zeros(1)}, decay=0.5)
    with pytest.raises(TypeError, match="decay"):
        params_ema_update(ema, {"w": jnp.ones(1)}, decay=0.9)
    with pytest.raises(TypeError, match="decay"):
        ema_params(ema, decay=0.9)


def test_params_ema_equals_optax_ema_of_the_same_sequence(rng):
    sequence = [{"w": jnp.asarray(rng.standard_normal(3).astype(np.float32))} for _ in range(10)]
    ema, theirs = params_ema_init(sequence[0], decay=0.9), optax.ema(0.9, debias=True)
    their_state = theirs.init(sequence[0])
    for p in sequence:
        ema = jax.jit(params_ema_update)(ema, p)
        their_value, their_state = theirs.update(p, their_state)
    assert tree_relative_error(ema_params(ema), their_value) <= 1e-6


def test_ema_refuses_a_params_tree_of_another_structure():
    ema = params_ema_init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="v"):
        params_ema_update(ema, {"v": jnp.ones(2)})
