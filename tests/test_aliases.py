"""The aliases against their oracles: mpneuralnetwork 1.1.1 itself, and optax where the math coincides."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpnn_opt
from oracles import SEED_ALIASES, SEED_SETTINGS, random_tree, run_seed, run_transform, tree_relative_error

STEPS = 50
ALIASES, SETTINGS = SEED_ALIASES, SEED_SETTINGS


def _max_step_error(ours, theirs) -> float:
    return max(tree_relative_error(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("regularization", ["L1", "L2"])
@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_reproduces_mpneuralnetwork_for_50_steps(name, regularization, rng):
    alias, seed_class = ALIASES[name]
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    kwargs = dict(SETTINGS[name], regularization=regularization)
    expected = run_seed(seed_class(**kwargs), params0, grads)
    got = run_transform(alias(**kwargs), params0, grads)
    assert _max_step_error(got, expected) <= 1e-6


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_regularization_none_is_the_seed_with_zero_weight_decay(name, rng):
    alias, seed_class = ALIASES[name]
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    kwargs = dict(SETTINGS[name])
    expected = run_seed(seed_class(**dict(kwargs, weight_decay=0.0)), params0, grads)
    got = run_transform(alias(**dict(kwargs, regularization=None)), params0, grads)
    assert _max_step_error(got, expected) <= 1e-6


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_defaults_are_the_seeds(name):
    alias, seed_class = ALIASES[name]
    ours = {k: p.default for k, p in inspect.signature(alias).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
    theirs = {k: p.default for k, p in inspect.signature(seed_class).parameters.items()}
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_defaults_reproduce_mpneuralnetwork_defaults(name, rng):
    alias, seed_class = ALIASES[name]
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(10)]
    assert _max_step_error(run_transform(alias(), params0, grads), run_seed(seed_class(), params0, grads)) <= 1e-6


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (mpnn_opt.adam(0.01, None, beta1=0.8, beta2=0.99, epsilon=1e-7), optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-7)),
        (
            mpnn_opt.rmsprop(0.01, None, decay_rate=0.95, epsilon=1e-6),
            optax.rmsprop(0.01, decay=0.95, eps=1e-6, eps_in_sqrt=False),
        ),
        (mpnn_opt.sgd(0.05, None, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
    ],
    ids=["adam", "rmsprop", "sgd"],
)
def test_alias_without_regularization_matches_optax(ours, theirs, rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    got = run_transform(ours, params0, grads)
    expected = run_transform(theirs, params0, grads, apply=optax.apply_updates)
    assert _max_step_error(got, expected) <= 1e-6


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(ALIASES)),
    regularization=st.sampled_from(["L1", "L2"]),
    learning_rate=st.floats(1e-4, 0.1),
    weight_decay=st.floats(0.0, 0.1),
    decay=st.floats(0.0, 0.99),
    seed_value=st.integers(0, 2**16),
)
def test_alias_matches_mpneuralnetwork_for_any_hyperparameters(
    name, regularization, learning_rate, weight_decay, decay, seed_value
):
    alias, seed_class = ALIASES[name]
    decay_argument = {"sgd": "momentum", "rmsprop": "decay_rate", "adam": "beta1"}[name]
    kwargs = {
        "learning_rate": learning_rate,
        "regularization": regularization,
        "weight_decay": weight_decay,
        decay_argument: decay,
    }
    rng = np.random.default_rng(seed_value)
    shapes = {"layer": {"weights": (4, 3), "bias": (3,)}}
    params0 = random_tree(rng, shapes)
    grads = [random_tree(rng, shapes) for _ in range(8)]
    expected = run_seed(seed_class(**kwargs), params0, grads)
    got = run_transform(alias(**kwargs), params0, grads)
    assert _max_step_error(got, expected) <= 1e-6


def test_adam_l2_decays_the_stepped_weight_by_hand():
    # One step from w=2, g=0.5: m_hat = g, v_hat = g^2, so s = w - lr * g / (|g| + eps) and w' = s - lr*wd*s.
    lr, wd, eps = 0.1, 0.5, 1e-8
    # weights are 2-D as every seed weight is (the default rule decays leaves of at least 2 dimensions)
    params = {"weights": jnp.array([[2.0]]), "bias": jnp.array([2.0])}
    grads = {"weights": jnp.array([[0.5]]), "bias": jnp.array([0.5])}
    tx = mpnn_opt.adam(lr, "L2", wd, epsilon=eps)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = mpnn_opt.apply_updates(params, updates)
    stepped = 2.0 - lr * 0.5 / (0.5 + eps)
    np.testing.assert_allclose(new["weights"], [[stepped - lr * wd * stepped]], rtol=1e-6)
    np.testing.assert_allclose(new["bias"], [stepped], rtol=1e-6)  # 'bias' is never decayed


def test_sgd_with_a_schedule_reads_it_at_each_step_by_hand():
    schedule = lambda count: 0.1 / (1.0 + count)  # noqa: E731
    tx = mpnn_opt.sgd(schedule, None, momentum=0.5)
    params = {"w": jnp.array([1.0])}
    state = tx.init(params)
    velocity, weight = 0.0, 1.0
    for step, g in enumerate([1.0, -2.0, 3.0]):
        updates, state = tx.update({"w": jnp.array([g])}, state, params)
        params = mpnn_opt.apply_updates(params, updates)
        velocity = 0.5 * velocity - 0.1 / (1.0 + step) * g
        weight += velocity
        np.testing.assert_allclose(params["w"], [weight], rtol=1e-6)
