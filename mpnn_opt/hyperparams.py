"""Hyperparameters held in the optimizer state, changeable between steps without recompiling.

``inject_hyperparams(mpnn_opt.adam)(learning_rate=1e-3, weight_decay=1e-4)`` returns a transform whose
state is :class:`InjectHyperparamsState`: every numeric argument lives in ``hyperparams`` as a float32
array (whatever the params' dtype: optax keeps them in the params' dtype, where bfloat16 rounds
``beta2=0.999`` to 1.0 and the first Adam step is NaN), and the inner transform is rebuilt from them
inside each ``update``. A schedule argument is evaluated at the step count and its current value is
stored in ``hyperparams`` too, so it can be read back. Strings, bools, ``None``, masks and dtypes stay static.

:func:`read_value` finds a named value (``'learning_rate'``, ``'count'``, ...) anywhere in a state;
:func:`with_hyperparam` returns a state with one injected hyperparameter replaced.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt._numerics import safe_increment, zero_count
from mpnn_opt._tree import check_state
from mpnn_opt.base import GradientTransformation, OptState, Params

__all__ = ["InjectHyperparamsState", "inject_hyperparams", "read_value", "with_hyperparam"]


class InjectHyperparamsState(NamedTuple):
    count: jax.Array  # int32 steps taken; schedules are read at this value
    hyperparams: dict[str, jax.Array]  # float32 scalars, the values the next step uses; with_hyperparam sets them
    inner_state: OptState
    scheduled: dict[str, jax.Array] = {}  # float32, each schedule's value at the last step (read-only: recomputed every step)


def _is_numeric(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, (jax.Array, np.ndarray)) and jnp.ndim(value) == 0 and jnp.issubdtype(jnp.result_type(value), jnp.number)


def _is_schedule(value: Any) -> bool:
    # a dtype class (jnp.float32) or a dtype object is callable, but it is never a schedule
    return callable(value) and not isinstance(value, (type, np.dtype))


def _scalar_parameters(factory: Callable) -> tuple[set[str] | None, dict[str, Any]]:
    """The names of ``factory``'s parameters that take a number or a schedule, and its defaults.

    A parameter takes a number when its default is a number (not a bool) or its annotation names
    ``float``/``int``/``ScalarOrSchedule``; ``None`` for the names when the signature says nothing
    (``**kwargs``), where any numeric value or callable counts.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None, {}
    names, defaults, open_ended = set(), {}, False
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
            continue
        if parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
        annotation = str(parameter.annotation)
        if _is_numeric(parameter.default) or any(word in annotation for word in ("float", "int", "ScalarOrSchedule")):
            names.add(name)
    return (None if open_ended else names), defaults


def inject_hyperparams(
    factory: Callable[..., GradientTransformation], static_args: tuple[str, ...] = ()
) -> Callable[..., GradientTransformation]:
    """Wraps ``factory`` (e.g. :func:`mpnn_opt.adam`) so its numeric and scheduled arguments live in the state.

    Every numeric hyperparameter of the factory is injected, the ones left at their defaults
    included (as optax does), so ``with_hyperparam(state, "beta1", 0.8)`` works without passing
    ``beta1`` first. A callable is a schedule only for a parameter that takes a number; masks,
    dtypes (``state_dtype=jnp.float32``: a dtype class is callable), strings, bools and ``None`` stay
    static. Arguments named in ``static_args``, or in the factory's ``static_hyperparameters``
    attribute (those that choose the structure of the transform, such as ``momentum`` in
    :func:`mpnn_opt.presets.torch_rmsprop`), stay Python values.

    The factory is called once with the initial values, so invalid hyperparameters still raise at
    construction. Unlike optax's ``inject_hyperparams``, the arrays are always float32.
    """
    scalar_names, defaults = _scalar_parameters(factory)
    static_names = set(static_args) | set(getattr(factory, "static_hyperparameters", ()))

    def takes_number(name: str) -> bool:
        return name not in static_names and (scalar_names is None or name in scalar_names)

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        if args:
            raise TypeError(f"inject_hyperparams({factory.__name__}): pass hyperparameters by keyword")
        arguments = {**{name: value for name, value in defaults.items() if takes_number(name) and _is_numeric(value)}, **kwargs}
        schedules = {name: value for name, value in arguments.items() if takes_number(name) and _is_schedule(value)}
        numeric = {name: value for name, value in arguments.items() if takes_number(name) and _is_numeric(value)}
        static = {name: value for name, value in arguments.items() if name not in schedules and name not in numeric}
        initial = factory(**static, **numeric, **{name: float(schedule(0)) for name, schedule in schedules.items()})

        def scheduled_at(count: jax.Array) -> dict[str, jax.Array]:
            return {name: jnp.asarray(schedule(count), jnp.float32) for name, schedule in schedules.items()}

        def init_fn(params: Params) -> InjectHyperparamsState:
            count = zero_count()
            hyperparams = {name: jnp.asarray(value, jnp.float32) for name, value in numeric.items()}
            return InjectHyperparamsState(count, hyperparams, initial.init(params), scheduled_at(count))

        def update_fn(updates, state, params=None):
            check_state(state, InjectHyperparamsState, f"inject_hyperparams({factory.__name__})")
            scheduled = scheduled_at(state.count)
            inner = factory(**static, **state.hyperparams, **scheduled)
            updates, inner_state = inner.update(updates, state.inner_state, params)
            return updates, InjectHyperparamsState(safe_increment(state.count), state.hyperparams, inner_state, scheduled)

        return GradientTransformation(init_fn, update_fn)

    return wrapped


def _children(state: Any) -> list[tuple[str, Any]]:
    """``(path entry, child)`` pairs of a state node: named-tuple fields, tuple positions, dict keys."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return [(f".{field}", getattr(state, field)) for field in state._fields]
    if isinstance(state, (tuple, list)):
        return [(f"[{index}]", child) for index, child in enumerate(state)]
    if isinstance(state, dict):
        return [(f"[{key!r}]", child) for key, child in state.items()]
    return []


def read_value(state: OptState, name: str) -> jax.Array:
    """The value called ``name`` in ``state``: an injected hyperparameter or a state field.

    Searches breadth first through chains and wrappers, so ``read_value(state, 'learning_rate')`` and
    ``read_value(state, 'count')`` work on the state of any composition. The match nearest the top
    wins (an injected wrapper's ``count`` over its inner optimizer's). Two matches at that same
    depth (two injected optimizers in one chain, or a chain whose stages both count steps) raise
    ``ValueError`` naming their paths: read from the sub-state you mean (``state[1]``). Raises
    ``KeyError`` naming what was found when nothing matches.
    """
    level, seen_fields = [("state", state)], set()
    while level:
        matches, next_level = [], []
        for path, node in level:
            if isinstance(node, InjectHyperparamsState):
                for kind in ("hyperparams", "scheduled"):
                    values = getattr(node, kind)
                    seen_fields.update(values)
                    if name in values:
                        matches.append((f"{path}.{kind}[{name!r}]", values[name]))
            fields = getattr(node, "_fields", ())
            seen_fields.update(fields)
            if name in fields and getattr(node, name) is not None:
                matches.append((f"{path}.{name}", getattr(node, name)))
            next_level.extend((path + entry, child) for entry, child in _children(node))
        if len(matches) == 1:
            return matches[0][1]
        if matches:
            raise ValueError(f"{name!r} is ambiguous in this state: found at {', '.join(p for p, _ in matches)}; read it from the sub-state you mean")
        level = next_level
    raise KeyError(f"no value named {name!r} in this state; it has {sorted(seen_fields)}")


def with_hyperparam(state: OptState, name: str, value: float) -> OptState:
    """``state`` with the injected hyperparameter ``name`` set to ``value`` (float32) for the next steps.

    A scheduled hyperparameter is recomputed from its schedule at every step: setting it would have no
    effect, so it raises ``ValueError`` (build the optimizer with a number to set it by hand).
    """
    if isinstance(state, InjectHyperparamsState) and name in state.scheduled:
        raise ValueError(f"{name!r} follows a schedule in this state, so setting it would have no effect; inject a number instead")
    if isinstance(state, InjectHyperparamsState) and name in state.hyperparams:
        return state._replace(hyperparams={**state.hyperparams, name: jnp.asarray(value, jnp.float32)})
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        for position, child in enumerate(state):
            try:
                replaced = with_hyperparam(child, name, value)
            except KeyError:
                continue
            return state[:position] + (replaced,) + state[position + 1 :]
    if isinstance(state, InjectHyperparamsState):
        try:
            return state._replace(inner_state=with_hyperparam(state.inner_state, name, value))
        except KeyError:
            pass
    raise KeyError(f"no injected hyperparameter named {name!r} in this state")
