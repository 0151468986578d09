"""Validation of hyperparameters at construction time.

Each check names the argument as the user spelled it and shows the value it refused.

A number is a Python ``int`` or ``float``, a NumPy scalar, or a 0-d NumPy or JAX array of a real dtype.
Anything else is a ``TypeError``: strings (even ``"0.1"``), ``None``, bools, complex values. An array
of another shape, NaN, +-inf and a value out of range are a ``ValueError``. A count (``every_k``,
``transition_steps``) must be an integer (``int``, a NumPy integer or a 0-d integer array), never a
float or a bool; a flag (``nesterov``, ``staircase``) must be a bool, never ``1`` or ``"yes"``.

Schedules (callables) for ``learning_rate``, the one argument that takes them, and traced values
cannot be checked when the transform is built and pass through untouched (a callable anywhere else
is a ``TypeError``): :func:`mpnn_opt.hyperparams.inject_hyperparams` rebuilds factories from traced
values inside ``update``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

REGULARIZATIONS = ("L1", "L2", None)

_ARRAY_TYPES = (np.ndarray, np.generic, jax.Array)


SCHEDULABLE = ("learning_rate",)  # the arguments annotated ScalarOrSchedule; others are read as numbers


def _unchecked(name: str, value: Any) -> bool:
    """A traced value, or a schedule for an argument that takes one, cannot be checked here."""
    if isinstance(value, Tracer):
        return True
    if callable(value) and not isinstance(value, type):
        if name in SCHEDULABLE:
            return True
        raise TypeError(
            f"{name} must be a finite real number, got the callable {value!r}; only {', '.join(SCHEDULABLE)} "
            f"takes a schedule (wrap the factory with mpnn_opt.inject_hyperparams to schedule {name})"
        )
    return False


def _type_name(value: Any) -> str:
    return type(value).__name__


def _has_dtype_kind(value: Any, kind: type) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, _ARRAY_TYPES):
        return bool(jnp.issubdtype(value.dtype, kind))
    return isinstance(value, numbers.Integral if kind is jnp.integer else numbers.Real)


def _is_real(value: Any) -> bool:
    return _has_dtype_kind(value, jnp.integer) or _has_dtype_kind(value, jnp.floating)


def _scalar_shape(expected: str, value: Any) -> None:
    if np.ndim(value) != 0:
        raise ValueError(f"{expected} (a scalar or 0-d array), got {value!r} of shape {np.shape(value)}")


def _number(name: str, value: Any, requirement: str) -> float | None:
    """``value`` as a finite float, or ``None`` for a schedule or a traced value.

    ``requirement`` completes "``name`` must be a finite real number ..." in the messages.
    """
    if _unchecked(name, value):
        return None
    expected = f"{name} must be a finite real number{requirement}"
    if not _is_real(value):
        raise TypeError(f"{expected}, got {value!r} of type {_type_name(value)}")
    _scalar_shape(expected, value)
    try:
        number = float(value)
    except OverflowError:  # a Python int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{expected}, got {value!r}")
    return number


def finite(name: str, value: Any) -> None:
    """Refuses anything but a finite real number (any sign)."""
    _number(name, value, "")


def non_negative(name: str, value: Any) -> None:
    """Refuses ``value < 0``, NaN and +-inf."""
    number = _number(name, value, " >= 0")
    if number is not None and not number >= 0:
        raise ValueError(f"{name} must be a finite real number >= 0, got {value!r}")


def positive(name: str, value: Any) -> None:
    """Refuses ``value <= 0``, NaN and +-inf."""
    number = _number(name, value, " > 0")
    if number is not None and not number > 0:
        raise ValueError(f"{name} must be a finite real number > 0, got {value!r}")


def in_unit_interval(name: str, value: Any) -> None:
    """Refuses values outside ``[0, 1)``."""
    number = _number(name, value, " in [0, 1)")
    if number is not None and not 0 <= number < 1:
        raise ValueError(f"{name} must be a finite real number in [0, 1), got {value!r}")


def integer(name: str, value: Any, minimum: int = 1) -> None:
    """Refuses anything but an integer ``>= minimum``: floats (even ``3.0``), bools and strings included."""
    if isinstance(value, Tracer):
        return
    expected = f"{name} must be an int >= {minimum}"
    if not _has_dtype_kind(value, jnp.integer):
        raise TypeError(f"{expected}, got {value!r} of type {_type_name(value)}")
    _scalar_shape(expected, value)
    if not int(value) >= minimum:
        raise ValueError(f"{expected}, got {value!r}")


def flag(name: str, value: Any) -> None:
    """Refuses anything but ``True`` or ``False`` (a NumPy bool too): ``1``, ``"yes"`` or ``None`` are not flags."""
    if isinstance(value, Tracer) or isinstance(value, (bool, np.bool_)):
        return
    raise TypeError(f"{name} must be a bool (True or False), got {value!r} of type {_type_name(value)}")


def state_dtype(value: Any, name: str = "state_dtype") -> None:
    """Refuses anything but ``None`` (the default: float32, or float64 for float64 params) or a floating dtype (``jnp.float32``, ``'bfloat16'``, ...).

    ``name`` is the argument's (``state_dtype``, ``mu_dtype``, ``nu_dtype``).
    """
    if value is None:
        return
    expected = f"{name} must be None or a floating dtype such as jnp.float32 or 'bfloat16'"
    if isinstance(value, (bool, *_ARRAY_TYPES)):
        raise TypeError(f"{expected}, got {value!r} of type {_type_name(value)}")
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"{expected}, got {value!r} of type {_type_name(value)}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{expected}, got {value!r} (dtype {dtype})")


def regularization(value: Any) -> None:
    """Refuses anything but ``'L1'``, ``'L2'`` or ``None``."""
    if not (value is None or (isinstance(value, str) and value in REGULARIZATIONS)):
        raise ValueError(f"regularization must be 'L1', 'L2' or None, got {value!r}")


def nesterov_momentum(nesterov: Any, momentum: Any) -> None:
    """torch refuses Nesterov momentum without momentum ("Nesterov momentum requires a momentum and zero dampening")."""
    number = _number("momentum", momentum, "")
    if number == 0 and isinstance(nesterov, (bool, np.bool_)) and nesterov:
        raise ValueError(f"nesterov=True requires momentum > 0 (as torch.optim.SGD), got momentum={momentum!r}")


def decay_end_value(init_value: Any, decay_rate: Any, end_value: Any) -> None:
    """Refuses an ``end_value`` on the far side of ``init_value``: a decay from ``init_value >= 0`` clipped
    below at a larger ``end_value`` (or a growth clipped above at a smaller one) is ``end_value`` from step 0."""
    init = _number("init_value", init_value, "")
    rate = _number("decay_rate", decay_rate, "")
    end = _number("end_value", end_value, "")
    if init is None or rate is None or end is None or init < 0:
        return
    if rate < 1 and end > init:
        raise ValueError(
            f"end_value must be <= init_value when decay_rate < 1, got end_value={end_value!r}, init_value={init_value!r}"
        )
    if rate > 1 and end < init:
        raise ValueError(
            f"end_value must be >= init_value when decay_rate > 1, got end_value={end_value!r}, init_value={init_value!r}"
        )


def zero_end_at_zero_peak(peak_value: Any, end_value: Any) -> None:
    """The cosine part scales ``peak_value``: with a zero peak it cannot end anywhere but 0."""
    peak, end = _number("peak_value", peak_value, ""), _number("end_value", end_value, "")
    if peak == 0 and end is not None and end != 0:
        raise ValueError(
            f"end_value must be 0 when peak_value is 0 (the cosine decays from the peak), got end_value={end_value!r}"
        )


def schedule(name: str, value: Any) -> None:
    """Refuses anything but a callable ``count -> value``."""
    if not callable(value):
        raise TypeError(
            f"{name} must be a schedule (a callable count -> value), got {value!r} of type {_type_name(value)}"
        )


def mapping(name: str, value: Any) -> None:
    """Refuses anything but ``None`` or a dict-like mapping."""
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be None or a dict, got {value!r} of type {_type_name(value)}")
