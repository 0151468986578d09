"""Step counters and scalar-or-schedule hyperparameters."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mpnn_opt.base import ScalarOrSchedule

_INT32_MAX = jnp.iinfo(jnp.int32).max


def zero_count() -> jax.Array:
    """A fresh step counter: an int32 zero."""
    return jnp.zeros([], jnp.int32)


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the largest int32 instead of wrapping to a negative number."""
    count = jnp.asarray(count, jnp.int32)
    return jnp.where(count < _INT32_MAX, count + 1, _INT32_MAX)


def schedule_count(value: ScalarOrSchedule) -> jax.Array | None:
    """A fresh counter for a transform that reads ``value`` at each step, or ``None`` for a constant.

    A constant needs no counter, and an int32 counter costs a few microseconds a step on small models.
    """
    return zero_count() if callable(value) else None


def advance(count: jax.Array | None) -> jax.Array | None:
    """:func:`safe_increment` for a :func:`schedule_count` counter; ``None`` stays ``None``."""
    return None if count is None else safe_increment(count)


def value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The hyperparameter's value at step ``count`` (0-based): ``value(count)`` for a schedule."""
    return value(count) if callable(value) else value


def bias_correction(decay: float | jax.Array, count: jax.Array) -> jax.Array:
    """``1 - decay**count`` in float32 without the cancellation of the naive form.

    Computed as ``-expm1(count * log(decay))`` with ``log(decay)`` taken in double precision when
    ``decay`` is a Python float: ``1 - 0.999**1`` comes out right to float32 rounding, where the naive
    float32 form is off by about 1e-5 relative (optax and torch use the naive form).
    """
    if isinstance(decay, (int, float)):
        if decay == 0:
            return jnp.ones([], jnp.float32)
        log_decay = jnp.float32(math.log(decay))
    else:
        log_decay = jnp.log(jnp.asarray(decay, jnp.float32))
    return -jnp.expm1(count.astype(jnp.float32) * log_decay)
