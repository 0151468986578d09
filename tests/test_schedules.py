"""Schedules against optax's own, step by step, and inside an optimizer against a hand-run loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt import schedules

PAIRS = {
    "constant": (schedules.constant_schedule(0.3), optax.constant_schedule(0.3)),
    "linear": (schedules.linear_schedule(1.0, 0.1, 40, 5), optax.linear_schedule(1.0, 0.1, 40, 5)),
    "exponential": (schedules.exponential_decay(0.5, 10, 0.7, 3), optax.exponential_decay(0.5, 10, 0.7, 3)),
    "exponential staircase end": (
        schedules.exponential_decay(0.5, 10, 0.7, staircase=True, end_value=0.2),
        optax.exponential_decay(0.5, 10, 0.7, staircase=True, end_value=0.2),
    ),
    "cosine": (schedules.cosine_decay_schedule(0.2, 50, alpha=0.1), optax.cosine_decay_schedule(0.2, 50, alpha=0.1)),
    "warmup cosine": (
        schedules.warmup_cosine_decay_schedule(0.0, 1.0, 10, 60, end_value=0.05),
        optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 60, end_value=0.05),
    ),
    "piecewise": (
        schedules.piecewise_constant_schedule(1.0, {10: 0.5, 30: 0.1}),
        optax.piecewise_constant_schedule(1.0, {10: 0.5, 30: 0.1}),
    ),
    "join": (
        schedules.join_schedules([schedules.constant_schedule(0.1), schedules.linear_schedule(0.1, 0.0, 20)], [15]),
        optax.join_schedules([optax.constant_schedule(0.1), optax.linear_schedule(0.1, 0.0, 20)], [15]),
    ),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_schedule_equals_optax_at_every_step(name):
    ours, theirs = PAIRS[name]
    counts = jnp.arange(80)
    np.testing.assert_allclose(jax.vmap(ours)(counts), jax.vmap(theirs)(counts), rtol=1e-6, atol=1e-7)


def test_piecewise_constant_by_hand():
    schedule = schedules.piecewise_constant_schedule(2.0, {3: 0.5, 5: 0.1})
    assert [float(schedule(t)) for t in range(7)] == pytest.approx([2, 2, 2, 1, 1, 0.1, 0.1])


def test_a_schedule_drives_adam_like_a_hand_run_learning_rate():
    schedule = schedules.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10)
    params = {"weights": jnp.array([1.0, -2.0])}
    tx, state = mpnn_opt.adam(schedule, None), None
    state = tx.init(params)
    w, m, v = np.array([1.0, -2.0]), 0.0, 0.0
    for t in range(1, 9):
        g = np.array([0.3 * t, -0.1])
        updates, state = tx.update({"weights": jnp.asarray(g, jnp.float32)}, state, params)
        params = mpnn_opt.apply_updates(params, updates)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        w = w - float(optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10)(t - 1)) * (m / (1 - 0.9**t)) / (
            np.sqrt(v / (1 - 0.999**t)) + 1e-8
        )
        np.testing.assert_allclose(params["weights"], w, rtol=1e-5)


def test_bad_schedule_arguments_name_the_argument():
    with pytest.raises(ValueError, match="transition_steps"):
        schedules.linear_schedule(1.0, 0.0, 0)
    with pytest.raises(ValueError, match="decay_steps"):
        schedules.warmup_cosine_decay_schedule(0.0, 1.0, 10, 5)
    with pytest.raises(ValueError, match="boundaries"):
        schedules.join_schedules([schedules.constant_schedule(1.0)], [3])
