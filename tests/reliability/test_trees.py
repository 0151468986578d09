"""Trees users actually pass: another optimizer's state, malformed masks, Python floats, float8, integers.

Each case either works as optax does (numbers compared with optax or worked out by hand) or fails at
once with an error naming the argument and the path; never an AttributeError from deep inside.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import mpnn_opt

FACTORIES = {
    "sgd": lambda: mpnn_opt.sgd(0.1),
    "rmsprop": lambda: mpnn_opt.rmsprop(0.1),
    "adam": lambda: mpnn_opt.adam(0.1),
    "adam L1": lambda: mpnn_opt.adam(0.1, "L1"),
    "adam schedule": lambda: mpnn_opt.adam(lambda count: 0.1),
    "torch_sgd": lambda: mpnn_opt.torch_sgd(0.1, momentum=0.9),
    "torch_rmsprop centered": lambda: mpnn_opt.torch_rmsprop(0.1, centered=True),
    "torch_adamw amsgrad": lambda: mpnn_opt.torch_adamw(0.1, amsgrad=True),
    "torch_adagrad": lambda: mpnn_opt.torch_adagrad(0.1),
    "nadam": lambda: mpnn_opt.nadam(0.1),
    "lion": lambda: mpnn_opt.lion(0.1),
    "masked adam": lambda: mpnn_opt.masked(mpnn_opt.adam(0.1), {"weights": True, "bias": False}),
    "partition": lambda: mpnn_opt.partition(
        {"a": mpnn_opt.adam(0.1), "s": mpnn_opt.sgd(0.1)}, {"weights": "a", "bias": "s"}
    ),
    "accumulate": lambda: mpnn_opt.accumulate(mpnn_opt.adam(0.1), 2),
    "skip_non_finite": lambda: mpnn_opt.skip_non_finite(mpnn_opt.adam(0.1)),
    "inject": lambda: mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1),
}
PARAMS = {"weights": jnp.ones((2, 3)), "bias": jnp.zeros(3)}


def _stateful(name: str) -> bool:
    state = FACTORIES[name]().init(PARAMS)
    return any(leaf.ndim > 0 for leaf in jax.tree.leaves(state))


PAIRS = [(a, b) for a, b in itertools.permutations(sorted(FACTORIES), 2)]


@pytest.mark.parametrize("mine,other", PAIRS)
def test_a_state_from_another_optimizer_is_refused_at_once_naming_the_state(mine, other):
    tx = FACTORIES[mine]()
    foreign = FACTORIES[other]().init(PARAMS)
    if jax.tree.structure(foreign) == jax.tree.structure(tx.init(PARAMS)):
        pytest.skip("same state structure: the two optimizers keep the same state")
    with pytest.raises((TypeError, ValueError), match="state") as error:
        tx.update(PARAMS, foreign, PARAMS)
    assert not isinstance(error.value, AttributeError)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_an_update_applies_the_same_with_a_fresh_state_after_a_refused_one(name):
    # a refused call changes nothing: the optimizer keeps working on its own state
    tx = FACTORIES[name]()
    state = tx.init(PARAMS)
    with pytest.raises((TypeError, ValueError)):
        tx.update({"weights": jnp.ones((3, 2)), "bias": jnp.zeros(3)}, state, PARAMS)
    once, _ = tx.update(PARAMS, state, PARAMS)
    again, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    jax.tree.map(np.testing.assert_array_equal, once, again)


BAD_FLAGS = ["yes", None, 1, 0.5, np.array([True, False]), jnp.ones(3, jnp.int32)]


@pytest.mark.parametrize("flag", BAD_FLAGS, ids=repr)
@pytest.mark.parametrize(
    "build",
    [
        lambda mask: mpnn_opt.sgd(0.1, mask=mask),
        lambda mask: mpnn_opt.adam(0.1, mask=mask),
        lambda mask: mpnn_opt.adam(0.1, "L1", mask=mask),
        lambda mask: mpnn_opt.masked(mpnn_opt.sgd(0.1), mask),
        lambda mask: mpnn_opt.freeze(mask),
    ],
    ids=["sgd", "adam L2", "adam L1", "masked", "freeze"],
)
def test_a_malformed_mask_fails_at_once_naming_mask_and_the_path(build, flag):
    tx = build({"weights": flag, "bias": True})
    with pytest.raises(TypeError, match=r"mask.*\['weights'\]"):
        state = tx.init(PARAMS)
        tx.update(PARAMS, state, PARAMS)


def test_a_bool_array_mask_of_the_leafs_shape_is_accepted_elementwise():
    tx = mpnn_opt.sgd(
        0.1, "L2", 0.5, momentum=0.0, mask={"weights": jnp.array([[True, False, True]] * 2), "bias": False}
    )
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, PARAMS), tx.init(PARAMS), PARAMS)
    # by hand: -lr * wd * w = -0.05 where masked in, 0 elsewhere
    np.testing.assert_allclose(updates["weights"], [[-0.05, 0.0, -0.05]] * 2)
    np.testing.assert_array_equal(updates["bias"], 0.0)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: mpnn_opt.adam(0.1, None), lambda: optax.adam(0.1)),
        (lambda: mpnn_opt.sgd(0.1, None, momentum=0.9), lambda: optax.sgd(0.1, momentum=0.9)),
        (
            lambda: mpnn_opt.chain(mpnn_opt.clip_by_global_norm(0.5), mpnn_opt.rmsprop(0.1, None)),
            lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.rmsprop(0.1, eps_in_sqrt=False)),
        ),
        (lambda: mpnn_opt.accumulate(mpnn_opt.adam(0.1, None), 1), lambda: optax.adam(0.1)),
    ],
    ids=["adam", "sgd", "clip+rmsprop", "accumulate"],
)
def test_python_float_leaves_work_like_optax(ours, theirs):
    params, grads = {"w": 1.5, "b": -0.25}, {"w": 0.5, "b": -2.0}
    mine, optax_tx = ours(), theirs()
    updates, _ = mine.update(grads, mine.init(params), params)
    # optax itself fails on Python floats in some transforms (clip_by_global_norm: 'float' has no dtype): give it arrays
    as_arrays = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    expected, _ = optax_tx.update(as_arrays(grads), optax_tx.init(as_arrays(params)), as_arrays(params))
    for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        # optax forms 1 - b2^t naively in float32 (1.3e-5 off at t = 1): 6.6e-6 on Adam's first step
        np.testing.assert_allclose(got, want, rtol=1e-5)
    new = mpnn_opt.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1.5 + float(updates["w"]), rtol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "lion"])
def test_float8_params_update_with_float32_state_and_round_once(name, dtype):
    params = {"weights": jnp.asarray([1.0, -0.5, 2.0], dtype)}
    grads = {"weights": jnp.asarray([0.5, 0.25, -1.0], dtype)}
    tx = FACTORIES[name]()
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = mpnn_opt.apply_updates(params, updates)
    assert new["weights"].dtype == dtype
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.float32, jnp.int32)
    # oracle: the same optimizer on the float32 values, rounded once to float8 at the end
    wide_params = {"weights": params["weights"].astype(jnp.float32)}
    wide_updates, _ = tx.update({"weights": grads["weights"].astype(jnp.float32)}, tx.init(wide_params), wide_params)
    expected = np.asarray(wide_params["weights"] + np.asarray(updates["weights"], np.float32)).astype(
        ml_dtypes.finfo(dtype).dtype
    )
    np.testing.assert_array_equal(np.asarray(new["weights"]), expected)
    np.testing.assert_allclose(
        np.asarray(updates["weights"], np.float32),
        np.asarray(wide_updates["weights"]).astype(ml_dtypes.finfo(dtype).dtype).astype(np.float32),
    )


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_])
def test_apply_updates_refuses_integer_params_naming_the_path(dtype):
    with pytest.raises(TypeError, match=r"params at \['layer'\]\['w'\] has dtype"):
        mpnn_opt.apply_updates({"layer": {"w": jnp.ones(3, dtype)}}, {"layer": {"w": jnp.full(3, 0.4)}})


def test_apply_updates_refuses_integer_updates_naming_the_path():
    with pytest.raises(TypeError, match=r"updates at \['w'\] has dtype int32"):
        mpnn_opt.apply_updates({"w": jnp.ones(3)}, {"w": jnp.ones(3, jnp.int32)})


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_integer_gradients_fail_at_once_naming_updates_and_the_path(name):
    tx = FACTORIES[name]()
    grads = {"weights": jnp.ones((2, 3), jnp.int32), "bias": jnp.zeros(3)}
    with pytest.raises(TypeError, match=r"updates at \['weights'\] has dtype int32"):
        tx.update(grads, tx.init(PARAMS), PARAMS)
