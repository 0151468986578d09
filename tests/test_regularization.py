"""Coupled L1/L2, decoupled decay, and the masks that choose the regularized leaves."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from mpneuralnetwork import optimizers as seed

import mpnn_opt

W = np.array([[1.5, -2.0, 0.0]], np.float32)
G = np.array([[0.25, 0.5, -1.0]], np.float32)


@pytest.mark.parametrize("regularization, penalty", [("L2", W), ("L1", np.sign(W))])
def test_add_regularization_adds_the_penalty_gradient(regularization, penalty):
    tx = mpnn_opt.add_regularization(regularization, 0.1)
    params = {"weights": jnp.asarray(W)}
    updates, _ = tx.update({"weights": jnp.asarray(G)}, tx.init(params), params)
    np.testing.assert_allclose(updates["weights"], G + 0.1 * penalty, rtol=1e-7)


@pytest.mark.parametrize("regularization", ["L1", "L2"])
def test_add_regularization_equals_the_seeds_apply_regularization(regularization):
    oracle = seed.SGD(regularization=regularization, weight_decay=0.1)
    names = ["weights", "biases", "kernels", "gamma", "beta", "running_mean"]
    params = {name: jnp.asarray(W) for name in names}
    updates, _ = mpnn_opt.add_regularization(regularization, 0.1).update(
        {name: jnp.asarray(G) for name in names}, mpnn_opt.EmptyState(), params
    )
    for name in names:
        np.testing.assert_allclose(updates[name], G + oracle.apply_regularization(name, W), rtol=1e-7)


def test_regularization_none_leaves_updates_alone():
    tx = mpnn_opt.add_regularization(None, 0.1)
    updates, _ = tx.update({"weights": jnp.asarray(G)}, tx.init({}), {"weights": jnp.asarray(W)})
    np.testing.assert_array_equal(updates["weights"], G)


def test_decoupled_weight_decay_shrinks_the_stepped_weight():
    tx = mpnn_opt.add_decoupled_weight_decay(0.1, 0.5)
    params = {"weights": jnp.asarray(W)}
    updates, state = tx.update({"weights": jnp.asarray(G)}, tx.init(params), params)
    stepped = W + G
    np.testing.assert_allclose(W + np.asarray(updates["weights"]), stepped - 0.1 * 0.5 * stepped, rtol=1e-6)
    assert state == mpnn_opt.EmptyState()  # a constant learning rate needs no step counter


def test_decoupled_weight_decay_follows_a_learning_rate_schedule():
    tx = mpnn_opt.add_decoupled_weight_decay(lambda count: 0.1 * (count + 1), 0.5)
    params = {"weights": jnp.asarray(W)}
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update({"weights": jnp.zeros_like(params["weights"])}, state, params)
        np.testing.assert_allclose(updates["weights"], -0.1 * (step + 1) * 0.5 * W, rtol=1e-6)
    assert int(state.count) == 3


def test_seed_name_mask_uses_the_last_key_of_each_path():
    params = {
        "bias_block": {"weights": 1.0},
        "dense": {"biases": 1.0, "W": 1.0},
        "norm": [{"gamma": 1.0}, {"beta": 1.0}],
        "list": [1.0],
    }
    assert mpnn_opt.regularization.seed_name_mask(params) == {
        "bias_block": {"weights": True},
        "dense": {"biases": False, "W": True},
        "norm": [{"gamma": False}, {"beta": False}],
        "list": [True],
    }


@pytest.mark.parametrize("mask_kind", ["tree", "prefix", "callable"])
def test_a_mask_overrides_the_name_rule(mask_kind):
    params = {"a": {"bias": jnp.asarray(W)}, "b": {"weights": jnp.asarray(W)}}
    tree_mask = {"a": {"bias": True}, "b": {"weights": False}}
    mask = {"tree": tree_mask, "prefix": {"a": True, "b": False}, "callable": lambda p: tree_mask}[mask_kind]
    tx = mpnn_opt.add_regularization("L2", 0.1, mask=mask)
    updates, _ = tx.update({"a": {"bias": jnp.asarray(G)}, "b": {"weights": jnp.asarray(G)}}, tx.init(params), params)
    np.testing.assert_allclose(updates["a"]["bias"], G + 0.1 * W, rtol=1e-7)
    np.testing.assert_array_equal(updates["b"]["weights"], G)


def test_a_mask_of_the_wrong_shape_is_refused():
    tx = mpnn_opt.add_regularization("L2", 0.1, mask={"x": True})
    params = {"weights": jnp.asarray(W)}
    with pytest.raises(ValueError, match="mask"):
        tx.update({"weights": jnp.asarray(G)}, tx.init(params), params)


def test_regularization_without_params_says_so():
    tx = mpnn_opt.add_regularization("L2", 0.1)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update({"weights": jnp.asarray(G)}, tx.init({}))
