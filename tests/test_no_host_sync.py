"""A jitted update step moves nothing between host and device, and really consumes donated buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt
from oracles import random_tree, run_transform, tree_relative_error
from mpnn_opt.packed import Packed, pack, unpack

ALIASES = ("sgd", "rmsprop", "adam")
REGULARIZATIONS = ("L1", "L2", None)
STEPS = 3


def _step(tx):
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 2))


def _as_tree(params):
    return unpack(params) if isinstance(params, Packed) else params


@pytest.mark.parametrize("packed", [False, True], ids=["tree", "packed"])
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("name", ALIASES)
def test_jitted_donated_step_runs_under_disallowed_transfers_and_consumes_its_inputs(name, regularization, packed, rng):
    tx = getattr(mpnn_opt, name)(0.05, regularization, 0.01)
    params0 = random_tree(rng)
    grads_seq = [random_tree(rng) for _ in range(STEPS)]
    expected = run_transform(tx, params0, grads_seq)[-1]  # the same alias, undonated and unguarded
    convert = pack if packed else (lambda tree: jax.tree.map(jnp.asarray, tree))
    device_grads = [convert(grads) for grads in grads_seq]
    params = convert(params0)
    state = tx.init(params)
    step = _step(tx)
    with jax.transfer_guard("disallow"):  # covers tracing and compiling too: the first call does both
        for grads in device_grads:
            donated = jax.tree.leaves((params, state))
            params, state = step(params, grads, state)
            # a state leaf the step never read would be pruned by jit (keep_unused=False) and escape donation
            assert all(leaf.is_deleted() for leaf in donated)
    assert tree_relative_error(jax.tree.map(np.asarray, _as_tree(params)), expected) <= 1e-6


def test_non_jitted_update_refuses_nothing_from_the_host_once_inputs_are_on_device(rng):
    # Eager update (no jit) must not pull values to the host either: e.g. no float(count) or bool(x).
    tx = mpnn_opt.adam(0.01, "L2")
    params = jax.tree.map(jnp.asarray, random_tree(rng))
    grads = jax.tree.map(jnp.asarray, random_tree(rng))
    state = tx.init(params)
    with jax.transfer_guard_device_to_host("disallow"):
        updates, state = tx.update(grads, state, params)
        new_params = mpnn_opt.apply_updates(params, updates)
    expected = run_transform(tx, jax.tree.map(np.asarray, params), [jax.tree.map(np.asarray, grads)])[-1]
    assert tree_relative_error(jax.tree.map(np.asarray, new_params), expected) <= 1e-6
