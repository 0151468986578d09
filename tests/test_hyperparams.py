"""Injected hyperparameters: changed between steps with no retrace, checked against mpneuralnetwork and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt.hyperparams import InjectHyperparamsState, inject_hyperparams, read_value, with_hyperparam
from oracles import SEED_ALIASES, SeedLayer, counting_step, random_tree, tree_relative_error

SEED_CLASSES = {name: seed_class for name, (_, seed_class) in SEED_ALIASES.items()}


@pytest.mark.parametrize("regularization", ["L1", "L2"])
@pytest.mark.parametrize("name", sorted(SEED_CLASSES))
def test_learning_rate_changed_mid_run_matches_the_seed_without_retracing(name, regularization, rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(30)]
    oracle = SEED_CLASSES[name](learning_rate=0.01, regularization=regularization, weight_decay=0.01)
    tx = inject_hyperparams(getattr(mpnn_opt, name))(
        learning_rate=0.01, regularization=regularization, weight_decay=0.01
    )
    step, traces = counting_step(tx)

    params = jax.tree.map(jnp.asarray, params0)
    seed_params = jax.tree.map(np.copy, params0)
    state = tx.init(params)
    for t, g in enumerate(grads):
        if t == 15:
            oracle.learning_rate = 0.002
            state = with_hyperparam(state, "learning_rate", 0.002)
        layers = [SeedLayer(seed_params[layer], jax.tree.map(np.copy, g[layer])) for layer in seed_params]
        oracle.step(layers)
        params, state = step(params, state, g)
        assert tree_relative_error(jax.tree.map(np.asarray, params), seed_params) <= 1e-6
    assert len(traces) == 1
    assert float(read_value(state, "learning_rate")) == pytest.approx(0.002)


def test_injected_adam_equals_optax_injected_adam_with_a_mid_run_change(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(20)]
    ours = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.01, regularization=None)
    theirs = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    p_ours, p_theirs = params0, params0
    s_ours, s_theirs = ours.init(params0), theirs.init(params0)
    for t, g in enumerate(grads):
        if t == 10:
            s_ours = with_hyperparam(s_ours, "learning_rate", 0.05)
            s_theirs.hyperparams["learning_rate"] = jnp.asarray(0.05)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = mpnn_opt.apply_updates(p_ours, u)
        u, s_theirs = theirs.update(g, s_theirs, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
    assert tree_relative_error(jax.tree.map(np.asarray, p_ours), jax.tree.map(np.asarray, p_theirs)) <= 1e-6


def test_hyperparameters_stay_float32_for_bfloat16_params_so_beta2_is_not_rounded_to_one():
    params = {"weights": jnp.array([1.0, -1.0], jnp.bfloat16)}
    tx = inject_hyperparams(mpnn_opt.adam)(learning_rate=0.01, beta2=0.999, regularization=None)
    state = tx.init(params)
    assert state.hyperparams["beta2"].dtype == jnp.float32
    assert float(state.hyperparams["beta2"]) == pytest.approx(0.999, rel=1e-7)
    updates, state = tx.update({"weights": jnp.array([0.5, -0.25], jnp.bfloat16)}, state, params)
    # first Adam step: m_hat = g, v_hat = g^2, so the update is -lr * sign(g)
    np.testing.assert_allclose(np.asarray(updates["weights"], np.float32), [-0.01, 0.01], rtol=1e-2)


def test_a_scheduled_hyperparameter_is_stored_at_its_current_value():
    schedule = mpnn_opt.schedules.linear_schedule(0.1, 0.0, 10)
    tx = inject_hyperparams(mpnn_opt.sgd)(learning_rate=schedule, regularization=None, momentum=0.0)
    params = {"w": jnp.array([1.0])}
    state = tx.init(params)
    w = 1.0
    for t in range(4):
        updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
        params = mpnn_opt.apply_updates(params, updates)
        w -= 0.1 * (1 - t / 10)
        assert float(read_value(state, "learning_rate")) == pytest.approx(0.1 * (1 - t / 10))
    np.testing.assert_allclose(params["w"], [w], rtol=1e-6)
    assert int(read_value(state, "count")) == 4


def test_read_value_finds_counts_inside_chains_and_says_what_exists():
    tx = mpnn_opt.chain(mpnn_opt.scale_by_adam(), mpnn_opt.scale_by_learning_rate(0.1))
    params = {"w": jnp.ones(2)}
    _, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    assert int(read_value(state, "count")) == 1
    with pytest.raises(KeyError, match="momentums"):
        read_value(state, "learning_rate")


def test_invalid_initial_hyperparameters_still_raise_at_construction():
    with pytest.raises(ValueError, match="beta1"):
        inject_hyperparams(mpnn_opt.adam)(beta1=1.5)
    with pytest.raises(TypeError, match="keyword"):
        inject_hyperparams(mpnn_opt.adam)(0.1)


def test_state_is_a_named_tuple():
    state = inject_hyperparams(mpnn_opt.rmsprop)(learning_rate=0.1).init({"w": jnp.ones(2)})
    assert isinstance(state, InjectHyperparamsState)
    # every numeric hyperparameter is injected, the defaults included
    assert set(state.hyperparams) == {"learning_rate", "weight_decay", "decay_rate", "epsilon"}
