"""jit, vmap, eval_shape, arbitrary pytrees, recompilation and dtypes."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from oracles import SEED_ALIASES, counting_step, relative_error, run_seed

ALL = {name: alias for name, (alias, _) in SEED_ALIASES.items()}
OPTAX_TWINS = {
    "sgd": (mpnn_opt.sgd(0.1, None, momentum=0.9), optax.sgd(0.1, momentum=0.9)),
    "rmsprop": (mpnn_opt.rmsprop(0.01, None), optax.rmsprop(0.01, eps_in_sqrt=False)),
    "adam": (mpnn_opt.adam(0.01, None), optax.adam(0.01)),
}


class Pair(NamedTuple):
    weights: jax.Array
    bias: jax.Array


def _exotic_tree(rng):
    f = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    return {
        "dict": {"w": f(3, 2)},
        "list": [f(4), f()],
        "tuple": (f(2, 2), None),
        "named": Pair(f(3), f(3)),
        "scalar": f(),
    }


@pytest.mark.parametrize("name", sorted(OPTAX_TWINS))
def test_any_pytree_under_jit_matches_optax_leaf_by_leaf(name, rng):
    ours, theirs = OPTAX_TWINS[name]
    params = _exotic_tree(rng)
    grads = [_exotic_tree(rng) for _ in range(5)]

    def trajectory(tx, apply):
        p, s = params, tx.init(params)
        step = jax.jit(lambda p, g, s: (lambda u_s: (apply(p, u_s[0]), u_s[1]))(tx.update(g, s, p)))
        for g in grads:
            p, s = step(p, g, s)
        return p

    got, expected = trajectory(ours, mpnn_opt.apply_updates), trajectory(theirs, optax.apply_updates)
    assert got["tuple"][1] is None
    assert jax.tree.structure(got) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert relative_error(a, b) <= 1e-6


@pytest.mark.parametrize("name", sorted(ALL))
def test_a_second_call_with_the_same_shapes_does_not_retrace(name, rng):
    tx = ALL[name]()
    step, traces = counting_step(tx)
    params = {"weights": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    state = tx.init(params)
    for _ in range(3):
        params, state = step(params, state, {"weights": jnp.full((3, 2), 0.5), "bias": jnp.ones(2)})
    assert len(traces) == 1


@pytest.mark.parametrize("name", sorted(ALL))
def test_vmap_over_independent_problems_equals_solving_each(name, rng):
    tx = ALL[name](0.05, "L1", 0.01)
    params = {"weights": jnp.asarray(rng.standard_normal((4, 3, 2)).astype(np.float32))}
    grads = {"weights": jnp.asarray(rng.standard_normal((4, 3, 2)).astype(np.float32))}

    def solve(p, g):
        state = tx.init(p)
        for _ in range(3):
            updates, state = tx.update(g, state, p)
            p = mpnn_opt.apply_updates(p, updates)
        return p

    batched = jax.jit(jax.vmap(solve))(params, grads)
    for i in range(4):
        one = solve({"weights": params["weights"][i]}, {"weights": grads["weights"][i]})
        assert relative_error(batched["weights"][i], one["weights"]) <= 1e-6


@pytest.mark.parametrize("name", sorted(ALL))
def test_init_under_eval_shape_matches_real_init(name):
    tx = ALL[name]()
    params = {"weights": jnp.ones((5, 4)), "bias": jnp.ones(4, jnp.bfloat16)}
    abstract = jax.eval_shape(tx.init, jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
    real = tx.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
        assert (a.shape, a.dtype) == (r.shape, r.dtype)


def _f64_context():
    return jax.enable_x64(True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_params_keep_their_dtype_state_is_at_least_float32_and_the_numbers_follow_the_seed(name, dtype):
    # oracle: mpneuralnetwork's own optimizer on float64 params (its state is float32, so 1e-6 is its rounding)
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((8, 1))
    grads = [rng.standard_normal((8, 1)) for _ in range(5)]
    seed_optimizer = SEED_ALIASES[name][1](learning_rate=0.01, regularization="L2", weight_decay=0.01)
    reference = run_seed(seed_optimizer, {"layer": {"weights": w0}}, [{"layer": {"weights": g}} for g in grads])[-1]
    with _f64_context():
        dtype = jnp.dtype(dtype)
        tx = ALL[name](0.01, "L2", 0.01)
        params = {"weights": jnp.asarray(w0, dtype)}
        state = tx.init(params)
        for g in grads:
            updates, state = jax.jit(tx.update)({"weights": jnp.asarray(g, dtype)}, state, params)
            params = mpnn_opt.apply_updates(params, updates)
        assert params["weights"].dtype == dtype
        state_dtype = (
            jnp.float64 if dtype == jnp.float64 else jnp.float32
        )  # the seed keeps f32 state for narrower params
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (state_dtype, jnp.int32)
        tolerance = {"bfloat16": 2e-2, "float16": 2e-3, "float32": 1e-6, "float64": 1e-6}[dtype.name]
        assert relative_error(np.asarray(params["weights"], np.float64), reference["layer"]["weights"]) <= tolerance


def test_state_dtype_float32_for_bfloat16_params_tracks_float32_more_closely():
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((64,)).astype(np.float32)
    grads = [rng.standard_normal((64,)).astype(np.float32) for _ in range(20)]

    def final_moments(param_dtype, state_dtype):
        tx = mpnn_opt.adam(0.01, None, state_dtype=state_dtype)
        params = {"weights": jnp.asarray(w0, param_dtype)}
        state = tx.init(params)
        for g in grads:
            _, state = jax.jit(tx.update)({"weights": jnp.asarray(g, param_dtype)}, state, params)
        return state[1].velocities["weights"]

    wide = final_moments(jnp.bfloat16, None)  # the default: float32 state
    narrow = final_moments(jnp.bfloat16, jnp.bfloat16)
    reference = final_moments(jnp.float32, None)
    assert wide.dtype == jnp.float32 and narrow.dtype == jnp.bfloat16
    # with f32 moments only the bf16 rounding of the gradients is left; bf16 moments add their own on top
    assert relative_error(wide, reference) < relative_error(narrow, reference)
