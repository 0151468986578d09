"""masked, path_mask, partition and freeze against optax's masked / multi_transform and by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt.masking import freeze, masked, partition, path_mask
from oracles import random_tree, run_transform, tree_relative_error


def test_path_mask_matches_glob_patterns_on_slash_joined_paths():
    params = {"encoder": {"dense": {"weights": 1.0, "bias": 1.0}}, "head": [{"weights": 1.0}]}
    assert path_mask("encoder/*/bias", "head/0/*")(params) == {
        "encoder": {"dense": {"weights": False, "bias": True}},
        "head": [{"weights": True}],
    }


def test_masked_adam_equals_optax_masked_adam(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(10)]
    mask = lambda p: {layer: {n: layer != "norm" for n in leaves} for layer, leaves in p.items()}  # noqa: E731
    ours = masked(mpnn_opt.adam(0.01, None), mask)
    theirs = optax.masked(optax.adam(0.01), mask)
    got = run_transform(ours, params0, grads)
    expected = run_transform(theirs, params0, grads, apply=optax.apply_updates)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


def test_masked_out_leaves_pass_through_unchanged_and_keep_no_state():
    tx = masked(mpnn_opt.scale_by_learning_rate(0.1), {"a": True, "b": False})
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    state = tx.init(params)
    updates, _ = tx.update({"a": jnp.array([1.0, 2.0]), "b": jnp.array([3.0, 4.0])}, state, params)
    np.testing.assert_allclose(updates["a"], [-0.1, -0.2], rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], [3.0, 4.0])
    adam_state = masked(mpnn_opt.scale_by_adam(), {"a": True, "b": False}).init(params).inner_state
    assert adam_state.momentums["b"] is None


def test_partition_gives_each_group_its_own_learning_rate_like_optax_multi_transform(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(10)]
    labels = lambda p: {
        layer: {n: "slow" if layer == "conv" else "fast" for n in leaves} for layer, leaves in p.items()
    }  # noqa: E731
    ours = partition(
        {"fast": mpnn_opt.sgd(0.1, None, momentum=0.9), "slow": mpnn_opt.sgd(0.001, None, momentum=0.9)}, labels
    )
    theirs = optax.multi_transform(
        {"fast": optax.sgd(0.1, momentum=0.9), "slow": optax.sgd(0.001, momentum=0.9)}, labels
    )
    got = run_transform(ours, params0, grads)
    expected = run_transform(theirs, params0, grads, apply=optax.apply_updates)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


def test_partition_names_the_path_of_an_unknown_label():
    tx = partition({"a": mpnn_opt.identity()}, {"x": "a", "y": "b"})
    with pytest.raises(ValueError, match=r"\['y'\].*'b'"):
        tx.init({"x": jnp.ones(1), "y": jnp.ones(1)})


def test_freeze_keeps_frozen_leaves_fixed_through_training(rng):
    tx = mpnn_opt.chain(mpnn_opt.adam(0.1), freeze(path_mask("norm/*")))
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(5)]
    final = run_transform(tx, params0, grads)[-1]
    np.testing.assert_array_equal(final["norm"]["gamma"], params0["norm"]["gamma"])
    assert not np.array_equal(final["dense"]["weights"], params0["dense"]["weights"])


def test_a_mask_must_give_python_bools():
    tx = masked(mpnn_opt.identity(), {"a": jnp.array(True)})
    with pytest.raises(TypeError, match="Python bool"):
        tx.init({"a": jnp.ones(1)})
