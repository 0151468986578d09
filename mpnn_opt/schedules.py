"""Learning-rate schedules: pure functions ``schedule(count) -> value`` of the 0-based step count.

Each works on a Python int or a traced int32 count and returns a float32 value, so it can be passed
wherever a ``learning_rate`` is accepted. The formulas are optax's (same names, same defaults);
``join_schedules`` restarts each piece's count at its boundary, as optax ``join_schedules`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt.base import Schedule

__all__ = [
    "constant_schedule",
    "linear_schedule",
    "exponential_decay",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "piecewise_constant_schedule",
    "join_schedules",
]


def _steps(name: str, value: int) -> None:
    _checks.integer(name, value, minimum=1)


def constant_schedule(value: float) -> Schedule:
    """``lr(t) = value``."""
    _checks.finite("value", value)
    return lambda count: jnp.full([], value, jnp.float32)


def linear_schedule(init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0) -> Schedule:
    """``lr(t) = init + (end - init) * clip((t - begin) / steps, 0, 1)``."""
    _checks.finite("init_value", init_value)
    _checks.finite("end_value", end_value)
    _steps("transition_steps", transition_steps)
    _checks.integer("transition_begin", transition_begin, minimum=0)

    def schedule(count):
        fraction = jnp.clip((jnp.asarray(count, jnp.float32) - transition_begin) / transition_steps, 0.0, 1.0)
        return jnp.float32(init_value) + (end_value - init_value) * fraction

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """``lr(t) = init * decay_rate ** (max(t - begin, 0) / steps)`` (the exponent floored if ``staircase``),
    clipped at ``end_value`` when given (from below if decaying, from above if growing)."""
    _checks.finite("init_value", init_value)
    _steps("transition_steps", transition_steps)
    _checks.positive("decay_rate", decay_rate)
    _checks.integer("transition_begin", transition_begin, minimum=0)
    _checks.flag("staircase", staircase)
    if end_value is not None:
        _checks.decay_end_value(init_value, decay_rate, end_value)

    def schedule(count):
        exponent = jnp.maximum(jnp.asarray(count, jnp.float32) - transition_begin, 0.0) / transition_steps
        if staircase:
            exponent = jnp.floor(exponent)
        value = jnp.float32(init_value) * jnp.power(jnp.float32(decay_rate), exponent)
        if end_value is not None:
            value = jnp.maximum(value, end_value) if decay_rate < 1 else jnp.minimum(value, end_value)
        return value

    return schedule


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0) -> Schedule:
    """``lr(t) = init * ((1 - alpha) * (0.5 * (1 + cos(pi * min(t, steps) / steps))) ** exponent + alpha)``."""
    _checks.finite("init_value", init_value)
    _steps("decay_steps", decay_steps)
    _checks.finite("alpha", alpha)
    _checks.positive("exponent", exponent)

    def schedule(count):
        progress = jnp.minimum(jnp.asarray(count, jnp.float32), decay_steps) / decay_steps
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.float32(init_value) * ((1.0 - alpha) * cosine**exponent + alpha)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` from ``boundaries[i-1]`` on, with its count restarted at 0 there."""
    for position, piece in enumerate(schedules):
        _checks.schedule(f"schedules[{position}]", piece)
    for position, boundary in enumerate(boundaries):
        _checks.integer(f"boundaries[{position}]", boundary, minimum=0)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"join_schedules needs len(schedules) == len(boundaries) + 1, got {len(schedules)} and {len(boundaries)}"
        )
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing, got {list(boundaries)!r}")

    def schedule(count):
        count = jnp.asarray(count)
        value = schedules[0](count)
        for boundary, piece in zip(boundaries, schedules[1:]):
            value = jnp.where(count < boundary, value, piece(count - boundary))
        return value

    return schedule


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then a cosine decay to
    ``end_value`` reached at step ``decay_steps`` (which counts the warm-up, as in optax)."""
    _checks.finite("init_value", init_value)
    _checks.finite("peak_value", peak_value)
    _checks.finite("end_value", end_value)
    _checks.zero_end_at_zero_peak(peak_value, end_value)
    _checks.positive("exponent", exponent)
    _steps("warmup_steps", warmup_steps)
    _steps("decay_steps", decay_steps)
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps must be an int greater than warmup_steps ({warmup_steps}), got {decay_steps!r}")
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha=alpha, exponent=exponent),
        ],
        [warmup_steps],
    )


def piecewise_constant_schedule(init_value: float, boundaries_and_scales: dict[int, float] | None = None) -> Schedule:
    """``lr(t) = init * prod(scale for boundary, scale in items if t >= boundary)``."""
    _checks.finite("init_value", init_value)
    _checks.mapping("boundaries_and_scales", boundaries_and_scales)
    for boundary in boundaries_and_scales or {}:
        _checks.integer(f"boundaries_and_scales key {boundary!r}", boundary, minimum=0)
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale in items:
        _checks.non_negative(f"boundaries_and_scales[{boundary}]", scale)

    def schedule(count):
        count = jnp.asarray(count)
        value = jnp.float32(init_value)
        for boundary, scale in items:
            value = jnp.where(count >= boundary, value * scale, value)
        return value

    return schedule
