"""Numerics that do not quietly go wrong: low-precision params, zero gradients, tiny epsilons,
derivatives through an update, huge gradients under clipping, float64 Adam.

Oracles: a float32 (or float64) run of the same optimizer, optax, and formulas worked out in the test
with Python floats (float64).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt

# every optimizer factory, built with weight decay off so that a zero gradient must give a zero update
OPTIMIZERS = {
    "sgd": lambda lr=0.1: mpnn_opt.sgd(lr, None, momentum=0.9),
    "rmsprop": lambda lr=0.1: mpnn_opt.rmsprop(lr, None),
    "adam": lambda lr=0.1: mpnn_opt.adam(lr, None),
    "adam L1": lambda lr=0.1: mpnn_opt.adam(lr, "L1", 0.0),
    "torch_sgd nesterov": lambda lr=0.1: mpnn_opt.torch_sgd(lr, momentum=0.9, nesterov=True),
    "torch_rmsprop centered momentum": lambda lr=0.1: mpnn_opt.torch_rmsprop(lr, centered=True, momentum=0.5),
    "torch_adamw amsgrad": lambda lr=0.1: mpnn_opt.torch_adamw(lr, weight_decay=0.0, amsgrad=True),
    "torch_adagrad": lambda lr=0.1: mpnn_opt.torch_adagrad(lr),
    "nadam": lambda lr=0.1: mpnn_opt.nadam(lr),
    "lion": lambda lr=0.1: mpnn_opt.lion(lr, weight_decay=0.0),
    "rms eps in sqrt": lambda lr=0.1: mpnn_opt.chain(
        mpnn_opt.scale_by_rms(eps_in_sqrt=True), mpnn_opt.scale_by_learning_rate(lr)
    ),
    "keras adam": lambda lr=0.1: mpnn_opt.chain(
        mpnn_opt.scale_by_adam(epsilon_hat=True), mpnn_opt.scale_by_learning_rate(lr)
    ),
    "clip global + sgd": lambda lr=0.1: mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.sgd(lr, None)),
    "clip leaf + adam": lambda lr=0.1: mpnn_opt.chain(mpnn_opt.clip_by_leaf_norm(1.0), mpnn_opt.adam(lr, None)),
}
LOW_PRECISION = [jnp.float16, jnp.bfloat16]


def _adam_steps(params, grads, **kwargs):
    tx = mpnn_opt.adam(0.01, None, **kwargs)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = mpnn_opt.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_params_keep_float32_state_so_a_large_gradient_does_not_freeze_them(dtype):
    # in float16 (1e4)^2 overflows: with float16 moments v = inf and every later step is 0
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [np.full(3, 1e4 * sign, np.float32) for sign in (1, -1, 1, 1, -1)]
    params, state = _adam_steps({"w": jnp.asarray(w0, dtype)}, [{"w": jnp.asarray(g, dtype)} for g in grads])
    reference, _ = _adam_steps({"w": jnp.asarray(w0)}, [{"w": jnp.asarray(g)} for g in grads])
    assert state[1].velocities["w"].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(state[1].velocities["w"])))
    # the params moved as the float32 run's did, to the params' own rounding
    np.testing.assert_allclose(np.asarray(params["w"], np.float32), reference["w"], rtol=1e-2)
    assert not np.array_equal(np.asarray(params["w"], np.float32), w0)


def test_float16_params_with_a_tiny_gradient_take_adams_normal_step_not_a_5x_one():
    # g = 1e-4: g^2 = 1e-8 is below float16's smallest subnormal (6e-8), so float16 moments give v = 0 and a
    # step of lr * m_hat / eps-dominated denominator; with float32 state the first Adam step is lr * sign(g)
    params = {"w": jnp.ones(4, jnp.float16)}
    grads = [{"w": jnp.full(4, 1e-4, jnp.float16)}]
    new, state = _adam_steps(params, grads)
    step = float(new["w"][0]) - 1.0
    assert state[1].velocities["w"].dtype == jnp.float32
    assert step == pytest.approx(-0.01, rel=0.1)  # float16 spacing near 1 is 1e-3, so 10% is its rounding


def test_state_dtype_still_chooses_low_precision_state():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    _, state = _adam_steps(params, [{"w": jnp.ones(3, jnp.bfloat16)}], state_dtype=jnp.bfloat16)
    assert state[1].momentums["w"].dtype == jnp.bfloat16 and state[1].velocities["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_zero_gradient_gives_an_exactly_zero_update(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        tx = OPTIMIZERS[name]()
        params = {"w": jnp.asarray([1.0, -2.0, 0.0], dtype), "b": jnp.zeros((2, 2), dtype)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        state = tx.init(params)
        for _ in range(3):  # the first step and later ones, where the moments are still zero
            updates, state = jax.jit(tx.update)(zeros, state, params)
            for leaf in jax.tree.leaves(updates):
                assert leaf.dtype == jnp.dtype(dtype)
                np.testing.assert_array_equal(np.asarray(leaf, np.float64), 0.0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: mpnn_opt.adam(0.1, None, epsilon=1e-50),
        lambda: mpnn_opt.rmsprop(0.1, None, epsilon=1e-50),
        lambda: mpnn_opt.torch_adagrad(0.1, epsilon=1e-60),
        lambda: mpnn_opt.nadam(0.1, epsilon=1e-45),
        lambda: mpnn_opt.torch_adamw(0.1, epsilon=1e-50, weight_decay=0.0, amsgrad=True),
        lambda: mpnn_opt.torch_rmsprop(0.1, epsilon=1e-50, centered=True),
        lambda: mpnn_opt.chain(
            mpnn_opt.scale_by_rms(epsilon=1e-300, eps_in_sqrt=True), mpnn_opt.scale_by_learning_rate(0.1)
        ),
    ],
    ids=["adam", "rmsprop", "adagrad", "nadam", "amsgrad", "centered", "rms eps in sqrt"],
)
def test_an_epsilon_too_small_for_float32_gives_no_nan_on_a_zero_gradient(build):
    # 1e-50 is 0 in float32: sqrt(0) + eps would be 0 and the update 0 / 0
    tx = build()
    params = {"w": jnp.ones(3)}
    updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    updates, _ = tx.update({"w": jnp.array([0.0, 1e-3, -2.0])}, state, params)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))


def _loss_after_two_steps(build, lr):
    """A loss of the params after two steps, as a function of the learning rate; one gradient entry is always 0."""
    tx = build(lr)
    params = {"w": jnp.array([1.0, 0.0, 2.0, -1.5]), "z": jnp.zeros(2)}
    state = tx.init(params)
    for _ in range(2):
        grads = {"w": params["w"] * jnp.array([1.0, 0.0, 1.0, 1.0]), "z": jnp.zeros(2)}
        updates, state = tx.update(grads, state, params)
        params = mpnn_opt.apply_updates(params, updates)
    return jnp.sum(params["w"] ** 2) + jnp.sum(params["z"] ** 2)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_derivative_through_an_update_with_respect_to_the_learning_rate_is_finite_and_right(name):
    # oracle: a central finite difference of the same function in float64
    with jax.enable_x64(True):
        build = lambda lr: OPTIMIZERS[name](lr)  # noqa: E731
        lr = 0.01
        derivative = float(jax.grad(lambda rate: _loss_after_two_steps(build, rate))(jnp.float64(lr)))
        h = 1e-6
        difference = (float(_loss_after_two_steps(build, lr + h)) - float(_loss_after_two_steps(build, lr - h))) / (
            2 * h
        )
    assert math.isfinite(derivative)
    assert derivative == pytest.approx(difference, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("clip", ["global", "leaf"])
def test_clipping_a_huge_finite_gradient_keeps_its_direction(clip, dtype):
    big = float(jnp.finfo(dtype).max) / 2
    values = np.array([big, -big, big / 4, 0.0])
    grads = {"w": jnp.asarray(values, dtype)}
    tx = mpnn_opt.clip_by_global_norm(2.0) if clip == "global" else mpnn_opt.clip_by_leaf_norm(2.0)
    clipped, _ = tx.update(grads, tx.init(grads))
    exact = np.asarray(grads["w"], np.float64)
    expected = 2.0 * exact / np.linalg.norm(exact)  # worked out in float64
    tolerance = {jnp.float32: 1e-6, jnp.float16: 2e-3, jnp.bfloat16: 1e-2}[dtype]
    np.testing.assert_allclose(np.asarray(clipped["w"], np.float64), expected, rtol=tolerance, atol=tolerance)


def test_global_norm_of_a_huge_gradient_is_not_infinite_when_it_fits():
    grads = {"a": jnp.full(4, 1e20), "b": jnp.full(1, -1e20)}
    assert float(mpnn_opt.global_norm(grads)) == pytest.approx(math.sqrt(5) * 1e20, rel=1e-6)


def test_clipping_under_jit_and_eagerly_agree_and_match_optax_on_ordinary_gradients(rng):
    grads = {
        "w": jnp.asarray(rng.standard_normal((5, 3)).astype(np.float32) * 10),
        "b": jnp.asarray(rng.standard_normal(3).astype(np.float32)),
    }
    ours = mpnn_opt.clip_by_global_norm(1.0)
    theirs = optax.clip_by_global_norm(1.0)
    eager, _ = ours.update(grads, ours.init(grads))
    jitted, _ = jax.jit(ours.update)(grads, ours.init(grads))
    expected, _ = theirs.update(grads, theirs.init(grads))
    for a, b, c in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, c, rtol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-6)


def _adam_by_hand(w, grads, lr, b1, b2, eps):
    """Adam in Python floats (float64), bias corrections without cancellation."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        bc1, bc2 = -math.expm1(t * math.log(b1)), -math.expm1(t * math.log(b2))
        w = w - lr * (m / bc1) / (math.sqrt(v) / math.sqrt(bc2) + eps)
    return w


def test_float64_adam_is_float64_accurate_bias_correction_included():
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(50)]
    with jax.enable_x64(True):
        tx = mpnn_opt.adam(0.01, None)
        params = {"w": jnp.asarray(w0, jnp.float64)}
        state = tx.init(params)
        step = jax.jit(lambda p, s, g: tx.update(g, s, p))
        for g in grads:
            updates, state = step(params, state, {"w": jnp.asarray(g, jnp.float64)})
            params = mpnn_opt.apply_updates(params, updates)
        got = np.asarray(params["w"])
    assert got.dtype == np.float64
    expected = np.array([_adam_by_hand(w0[i], [g[i] for g in grads], 0.01, 0.9, 0.999, 1e-8) for i in range(6)])
    # float32 bias corrections would leave ~1e-8 here
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
