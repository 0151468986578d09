"""A jitted update step moves nothing between host and device, and really consumes donated buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt
from mpnn_opt.packed import Packed, pack, unpack
from oracles import random_tree, run_transform, tree_relative_error

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


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("name", ALIASES)
def test_the_update_traces_to_a_jaxpr_with_no_host_callback(name, regularization, rng):
    # Tracing fails on any float(x), bool(x) or np.asarray(x) of a value computed from the inputs (a
    # concretization error), and a host round trip would show up as a callback primitive: an update
    # that traces cleanly and has neither cannot sync with the host, eager or jitted. (On CPU,
    # jax.transfer_guard does not see device-to-host reads, so it cannot check this.)
    tx = getattr(mpnn_opt, name)(0.01, regularization, 0.01)
    params = jax.tree.map(jnp.asarray, random_tree(rng))
    grads = jax.tree.map(jnp.asarray, random_tree(rng))
    jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(grads, tx.init(params), params)
    primitives = {equation.primitive.name for equation in jaxpr.jaxpr.eqns}
    assert not {name for name in primitives if "callback" in name}, primitives
