"""Step counters and scalar-or-schedule hyperparameters."""

from __future__ import annotations

import math
from typing import Any

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


def value_at(value: ScalarOrSchedule, count: jax.Array | None) -> Any:
    """The hyperparameter's value at step ``count`` (0-based): ``value(count)`` for a schedule.

    Raises ``TypeError`` when the state's counter does not fit: a state made for a constant rate has
    no counter (``None``) and one made for a schedule has one, so a state from the other kind of
    optimizer is refused instead of silently restarting or ignoring a schedule.
    """
    if callable(value) != (count is not None):
        made_for, given = ("a constant", "a schedule") if count is None else ("a schedule", "a constant")
        raise TypeError(
            f"the optimizer state was made for {made_for} learning rate but this transform has {given}; "
            "use the state from this transform's own init"
        )
    return value(count) if callable(value) else value  # type: ignore[arg-type]  # count is an Array when value is callable (checked above)


def bias_correction(decay: float | jax.Array, count: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``1 - decay**count`` in ``dtype`` (float32 by default) without the cancellation of the naive form.

    Computed as ``-expm1(count * log(decay))`` with ``log(decay)`` taken in double precision when
    ``decay`` is a Python float: ``1 - 0.999**1`` comes out right to ``dtype``'s rounding, where the
    naive float32 form is off by about 1e-5 relative (optax and torch use the naive form). Pass
    ``dtype=float64`` (under ``jax_enable_x64``) for float64-accurate Adam.
    """
    dtype = jnp.promote_types(dtype, jnp.float32)
    if isinstance(decay, (int, float)):
        if decay == 0:
            return jnp.ones([], dtype)
        log_decay = jnp.asarray(math.log(decay), dtype)
    else:
        log_decay = jnp.log(jnp.asarray(decay, dtype))
    return -jnp.expm1(count.astype(dtype) * log_decay)


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose derivative at 0 is 0 instead of infinity.

    The same values as ``jnp.sqrt`` for ``x >= 0``; a negative ``x`` (a rounding error, as in centered
    RMSprop's ``s - a^2``) gives 0, not NaN. With the plain root, differentiating through an update
    (e.g. with respect to the learning rate) gives ``inf * 0 = NaN`` wherever a gradient entry is 0.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def safe_epsilon(epsilon: Any, dtype: Any) -> jax.Array:
    """``epsilon`` in ``dtype``, raised to ``dtype``'s smallest normal number if it rounds below it.

    A positive epsilon such as 1e-50 is 0 in float32; a zero gradient would then give ``0 / 0 = NaN``.
    Normal values (1e-8 in float32) are returned unchanged.
    """
    return jnp.maximum(jnp.asarray(epsilon, dtype), jnp.finfo(dtype).tiny)
