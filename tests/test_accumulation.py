"""Accumulation against optax MultiSteps and against the inner optimizer on averaged gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt.accumulation import accumulate
from oracles import random_tree, run_transform, tree_relative_error


def test_accumulated_adam_equals_optax_multisteps(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(12)]
    got = run_transform(accumulate(mpnn_opt.adam(0.01, None), 3), params0, grads)
    theirs = optax.MultiSteps(optax.adam(0.01), every_k_schedule=3)
    expected = run_transform(theirs, params0, grads, apply=optax.apply_updates)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


def test_every_kth_step_is_the_inner_step_on_the_mean_gradient(rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(8)]
    got = run_transform(accumulate(mpnn_opt.adam(0.01, "L2", 0.1), 4), params0, grads)
    means = [jax.tree.map(lambda *g: np.mean(g, axis=0), *grads[i : i + 4]) for i in (0, 4)]
    expected = run_transform(mpnn_opt.adam(0.01, "L2", 0.1), params0, means)
    assert tree_relative_error(got[3], expected[0]) <= 1e-6 and tree_relative_error(got[7], expected[1]) <= 1e-6
    for micro in (0, 1, 2):  # params do not move on micro-steps, decay included
        assert tree_relative_error(got[micro], params0) == 0.0


def test_the_inner_optimizer_does_not_run_on_micro_steps():
    tx = accumulate(mpnn_opt.scale_by_adam(), 3)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    for step in range(1, 7):
        _, state = jax.jit(tx.update)({"w": jnp.ones(2)}, state, params)
        assert int(state.inner_state.count) == step // 3
        assert int(state.micro_step) == step % 3


def test_every_k_must_be_positive():
    with pytest.raises(ValueError, match="every_k"):
        accumulate(mpnn_opt.identity(), 0)
