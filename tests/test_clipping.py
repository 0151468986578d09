"""Clipping against optax, torch and a hand-worked norm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpnn_opt import clipping
from oracles import random_tree, tree_relative_error


def _apply(tx, grads):
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
    return jax.tree.map(np.asarray, updates)


@pytest.mark.parametrize("limit", [0.1, 1.0, 1e3])
def test_clip_by_value_and_by_global_norm_equal_optax(limit, rng):
    grads = jax.tree.map(jnp.asarray, random_tree(rng))
    assert tree_relative_error(_apply(clipping.clip(limit), grads), _apply(optax.clip(limit), grads)) == 0.0
    assert (
        tree_relative_error(
            _apply(clipping.clip_by_global_norm(limit), grads), _apply(optax.clip_by_global_norm(limit), grads)
        )
        <= 1e-6
    )


def test_global_norm_by_hand():
    grads = {"a": jnp.array([3.0, 0.0]), "b": (jnp.array([[4.0]]), None)}
    assert float(clipping.global_norm(grads)) == pytest.approx(5.0)
    updates = _apply(clipping.clip_by_global_norm(1.0), grads)
    np.testing.assert_allclose(updates["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(updates["b"][0], [[0.8]], rtol=1e-6)
    assert updates["b"][1] is None


def test_clip_by_leaf_norm_scales_each_leaf_on_its_own_by_hand():
    grads = {"big": jnp.array([3.0, 4.0]), "small": jnp.array([0.3, 0.4]), "zero": jnp.zeros(2)}
    updates = _apply(clipping.clip_by_leaf_norm(1.0), grads)
    np.testing.assert_allclose(updates["big"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(updates["small"], [0.3, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(updates["zero"], [0.0, 0.0])


def test_clip_by_global_norm_matches_torch_clip_grad_norm(rng):
    torch = pytest.importorskip("torch")
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (3,), (7,)]]
    tensors = [torch.nn.Parameter(torch.zeros(a.shape)) for a in arrays]
    for t, a in zip(tensors, arrays):
        t.grad = torch.tensor(a)
    torch.nn.utils.clip_grad_norm_(tensors, 0.5)
    ours = _apply(clipping.clip_by_global_norm(0.5), [jnp.asarray(a) for a in arrays])
    for got, t in zip(ours, tensors):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-5)  # torch divides by norm + 1e-6


def test_bad_limits_name_the_argument():
    with pytest.raises(ValueError, match="max_norm"):
        clipping.clip_by_global_norm(0.0)
    with pytest.raises(ValueError, match="max_delta"):
        clipping.clip(-1.0)
