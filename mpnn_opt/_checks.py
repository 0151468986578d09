"""Validation of hyperparameters at construction time.

Each check names the argument and the value it refused. Schedules (callables) and traced
values cannot be checked when the transform is built and pass through untouched.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax

REGULARIZATIONS = ("L1", "L2", None)


def _concrete_number(value: Any) -> float | None:
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"expected a number, got {value!r} of type {type(value).__name__}") from None


def non_negative(name: str, value: Any) -> None:
    """Refuses ``value < 0`` (and NaN)."""
    number = _concrete_number(value)
    if number is not None and not number >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def positive(name: str, value: Any) -> None:
    """Refuses ``value <= 0`` (and NaN)."""
    number = _concrete_number(value)
    if number is not None and not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def in_unit_interval(name: str, value: Any) -> None:
    """Refuses values outside ``[0, 1)``."""
    number = _concrete_number(value)
    if number is not None and not 0 <= number < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def regularization(value: Any) -> None:
    """Refuses anything but ``'L1'``, ``'L2'`` or ``None``."""
    if value not in REGULARIZATIONS:
        raise ValueError(f"regularization must be 'L1', 'L2' or None, got {value!r}")
