"""Each building block against its formula worked out by hand in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt
from mpnn_opt._numerics import bias_correction, safe_increment

GRADS = [
    np.array([0.5, -1.0, 2.0], np.float32),
    np.array([-0.25, 0.0, 1.0], np.float32),
    np.array([1.5, 3.0, -2.0], np.float32),
]


def _run(tx, grads=GRADS, params=None):
    params = {"w": jnp.zeros(3)} if params is None else params
    state = tx.init(params)
    outputs = []
    for g in grads:
        updates, state = jax.jit(tx.update)({"w": jnp.asarray(g)}, state, params)
        outputs.append(np.asarray(updates["w"]))
    return outputs, state


def test_scale_by_learning_rate_negates_and_scales():
    outputs, state = _run(mpnn_opt.scale_by_learning_rate(0.1))
    for got, g in zip(outputs, GRADS):
        np.testing.assert_allclose(got, -0.1 * g, rtol=1e-7)
    assert state == mpnn_opt.EmptyState()  # a constant rate keeps no counter


def test_scale_by_learning_rate_reads_a_schedule_at_the_step_count():
    outputs, state = _run(mpnn_opt.scale_by_learning_rate(lambda count: 0.1 * (count + 1)))
    for step, (got, g) in enumerate(zip(outputs, GRADS)):
        np.testing.assert_allclose(got, -0.1 * (step + 1) * g, rtol=1e-6)
    assert int(state.count) == 3 and state.count.dtype == jnp.int32


def test_momentum_velocity_keeps_the_learning_rate_inside_the_buffer():
    outputs, state = _run(mpnn_opt.momentum_velocity(0.1, 0.9))
    v = np.zeros(3)
    for got, g in zip(outputs, GRADS):
        v = 0.9 * v - 0.1 * g
        np.testing.assert_allclose(got, v, rtol=1e-6)
    np.testing.assert_allclose(state.velocities["w"], v, rtol=1e-6)


def test_scale_by_rms_with_eps_in_sqrt_false_puts_eps_outside_the_root():
    outputs, state = _run(mpnn_opt.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False))
    c = np.zeros(3)
    for got, g in zip(outputs, GRADS):
        c = 0.9 * c + 0.1 * g**2
        np.testing.assert_allclose(got, g / (np.sqrt(c) + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(state.cache["w"], c, rtol=1e-6)


def test_rms_step_multiplies_by_the_learning_rate_before_dividing():
    outputs, state = _run(mpnn_opt.rms_step(0.1, 0.9, 1e-3))
    c = np.zeros(3, np.float32)
    for got, g in zip(outputs, GRADS):
        c = np.float32(0.9) * c + np.float32(0.1) * g**2
        np.testing.assert_allclose(got, -(np.float32(0.1) * g) / (np.sqrt(c) + np.float32(1e-3)), rtol=1e-6)
    np.testing.assert_allclose(state.cache["w"], c, rtol=1e-6)
    assert state._fields == ("cache",)  # a constant rate keeps no counter


def test_rms_step_equals_scale_by_rms_then_the_learning_rate_and_reads_a_schedule():
    schedule = lambda count: 0.1 / (count + 1)  # noqa: E731
    fused, state = _run(mpnn_opt.rms_step(schedule, 0.8, 1e-2))
    divide_first, _ = _run(
        mpnn_opt.chain(mpnn_opt.scale_by_rms(0.8, 1e-2, eps_in_sqrt=False), mpnn_opt.scale_by_learning_rate(schedule))
    )
    for got, want in zip(fused, divide_first):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert int(state.count) == 3


def _full_size_loops(tx, size=1 << 16):
    """How many loops of the compiled ``params + update`` step write a params-sized buffer."""
    params, grads = {"w": jnp.ones(size)}, {"w": jnp.full(size, 0.5)}

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    text = jax.jit(step, donate_argnums=(0, 2)).lower(params, grads, tx.init(params)).compile().as_text()
    entry = text[text.index("ENTRY") :].splitlines()
    return sum(1 for line in entry if f"f32[{size}]" in line.split("=", 1)[-1].split("(", 1)[0] and "fusion(" in line)


def test_rmsprop_with_a_coupled_penalty_compiles_to_as_many_loops_as_without():
    # Dividing first made XLA:CPU write g + wd * w to memory in a loop of its own (3 loops, 2x the time).
    assert (
        _full_size_loops(mpnn_opt.rmsprop(regularization="L2"))
        == _full_size_loops(mpnn_opt.rmsprop(regularization=None))
        == 2
    )


def test_scale_by_adam_bias_corrects_with_its_own_count():
    tx = mpnn_opt.chain(mpnn_opt.scale_by_learning_rate(1.0), mpnn_opt.scale_by_adam(0.8, 0.95, 1e-4))
    outputs, state = _run(tx)
    m = v = np.zeros(3)
    for t, (got, g) in enumerate(zip(outputs, GRADS), start=1):
        g = -g  # the learning-rate block ran first and flipped the sign
        m = 0.8 * m + 0.2 * g
        v = 0.95 * v + 0.05 * g**2
        np.testing.assert_allclose(got, (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-4), rtol=1e-6, atol=1e-7)
    assert int(state[1].count) == 3


def test_step_counter_saturates_instead_of_wrapping():
    top = jnp.iinfo(jnp.int32).max
    assert int(safe_increment(jnp.int32(top))) == top
    assert int(safe_increment(jnp.int32(top - 1))) == top
    tx = mpnn_opt.scale_by_adam()
    params = {"w": jnp.ones(2)}
    state = tx.init(params)._replace(count=jnp.int32(top))
    updates, state = tx.update({"w": jnp.array([1.0, -1.0])}, state, params)
    assert int(state.count) == top
    # the bias corrections are 1 by then: m = 0.1 * g, v = 0.001 * g^2, u = m / (sqrt(v) + eps)
    np.testing.assert_allclose(updates["w"], np.array([0.1, -0.1]) / (np.sqrt(0.001) + 1e-8), rtol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999, 0.9999])
def test_bias_correction_is_accurate_to_float32_rounding(decay):
    for t in [1, 2, 10, 1000, 100000]:
        exact = 1.0 - decay**t  # float64
        got = float(bias_correction(decay, jnp.int32(t)))
        assert abs(got - exact) <= 4e-7 * exact


def test_states_are_named_tuples_of_arrays_mirroring_params():
    params = {"layer": {"weights": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    state = mpnn_opt.scale_by_adam().init(params)
    assert state._fields == ("count", "momentums", "velocities")
    assert jax.tree.structure(state.momentums) == jax.tree.structure(params)
    assert jax.tree.structure(state.velocities) == jax.tree.structure(params)
