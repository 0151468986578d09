"""The contract: chain, apply_updates, identity, and interchangeability with optax in both directions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from oracles import random_tree, run_transform, tree_relative_error


def test_optax_transform_inside_our_chain_gives_optax_numbers(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(20)]
    ours = mpnn_opt.chain(optax.clip(0.5), mpnn_opt.scale_by_adam(), mpnn_opt.scale_by_learning_rate(0.01))
    theirs = optax.chain(optax.clip(0.5), optax.scale_by_adam(), optax.scale_by_learning_rate(0.01))
    got = run_transform(ours, params0, grads)
    expected = run_transform(theirs, params0, grads, apply=optax.apply_updates)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


def test_our_alias_inside_optax_chain_gives_our_numbers(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(20)]
    inside_optax = optax.chain(optax.identity(), mpnn_opt.adam(0.01, "L2", 0.1))
    alone = mpnn_opt.adam(0.01, "L2", 0.1)
    got = run_transform(inside_optax, params0, grads, apply=optax.apply_updates)
    expected = run_transform(alone, params0, grads)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) == 0.0


def test_chain_applies_transforms_in_order_by_hand():
    # scale by -lr first, then clip: g=3 -> -0.3 (lr 0.1) -> clip to 0.25 -> -0.25
    tx = mpnn_opt.chain(mpnn_opt.scale_by_learning_rate(0.1), optax.clip(0.25))
    params = {"w": jnp.array([1.0, 1.0])}
    updates, state = tx.update({"w": jnp.array([3.0, 1.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.25, -0.1], rtol=1e-7)
    assert isinstance(state, tuple) and len(state) == 2


def test_chain_refuses_something_that_is_not_a_transform():
    with pytest.raises(TypeError, match="argument 1"):
        mpnn_opt.chain(mpnn_opt.identity(), "adam")


def test_chain_refuses_a_state_of_the_wrong_length():
    tx = mpnn_opt.chain(mpnn_opt.identity(), mpnn_opt.identity())
    with pytest.raises(ValueError, match="2 entries"):
        tx.update({"w": jnp.ones(2)}, (mpnn_opt.EmptyState(),))


def test_identity_and_empty_state():
    tx = mpnn_opt.identity()
    state = tx.init({"w": jnp.ones(3)})
    assert state == mpnn_opt.EmptyState()
    updates, _ = tx.update({"w": jnp.array([1.0, 2.0, 3.0])}, state)
    np.testing.assert_array_equal(updates["w"], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_apply_updates_adds_in_the_wider_dtype_and_casts_back(dtype):
    params = {"w": jnp.array([1.0, 256.0], dtype)}
    updates = {"w": jnp.array([0.25, 0.5], jnp.float32)}
    new = mpnn_opt.apply_updates(params, updates)
    assert new["w"].dtype == dtype
    expected = (np.array([1.0, 256.0], np.float32) + np.array([0.25, 0.5], np.float32)).astype(dtype)
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), np.asarray(expected, np.float32))


def test_apply_updates_keeps_none_leaves_and_matches_optax():
    params = {"a": jnp.array([1.0, 2.0]), "b": None, "c": (jnp.array(3.0),)}
    updates = {"a": jnp.array([0.5, -0.5]), "b": None, "c": (jnp.array(-1.0),)}
    ours = mpnn_opt.apply_updates(params, updates)
    theirs = optax.apply_updates(params, updates)
    assert ours["b"] is None
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_apply_updates_names_the_path_of_a_mismatch():
    with pytest.raises(ValueError, match=r"\['b'\]"):
        mpnn_opt.apply_updates({"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": jnp.ones(2), "c": jnp.ones(2)})
