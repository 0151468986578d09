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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt._numerics import safe_increment, zero_count
from mpnn_opt._tree import check_state
from mpnn_opt.base import GradientTransformation, OptState, Params, with_extra_args

__all__ = ["InjectHyperparamsState", "inject_hyperparams", "read_value", "with_hyperparam"]


class InjectHyperparamsState(NamedTuple):
    """The state of :func:`inject_hyperparams`."""

    count: jax.Array  # int32 steps taken; schedules are read at this value
    hyperparams: dict[str, jax.Array]  # float32 scalars, the values the next step uses; with_hyperparam sets them
    inner_state: OptState
    scheduled: dict[
        str, jax.Array
    ] = {}  # float32, each schedule's value at the last step (read-only: recomputed every step)


def _is_numeric(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    return (
        isinstance(value, (jax.Array, np.ndarray))
        and jnp.ndim(value) == 0
        and jnp.issubdtype(jnp.result_type(value), jnp.number)
    )


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
        arguments = {
            **{name: value for name, value in defaults.items() if takes_number(name) and _is_numeric(value)},
            **kwargs,
        }
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

        def update_fn(updates, state, params=None, **extra_args):
            check_state(state, InjectHyperparamsState, f"inject_hyperparams({factory.__name__})")
            scheduled = scheduled_at(state.count)
            inner = with_extra_args(factory(**static, **state.hyperparams, **scheduled))
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            return updates, InjectHyperparamsState(
                safe_increment(state.count), state.hyperparams, inner_state, scheduled
            )

        return GradientTransformation(init_fn, update_fn)

    return wrapped


def _children(state: Any) -> list[tuple[str, Any, Any]]:
    """``(path text, key, child)`` for each child of a state node: named-tuple fields, tuple and list
    positions, dict keys (``key`` rebuilds the node, see :func:`_with_child`)."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return [(f".{field}", field, getattr(state, field)) for field in state._fields]  # pyright: ignore[reportAttributeAccessIssue]  # a named tuple (checked above)
    if isinstance(state, (tuple, list)):
        return [(f"[{index}]", index, child) for index, child in enumerate(state)]
    if isinstance(state, dict):
        return [(f"[{key!r}]", key, child) for key, child in state.items()]
    return []


def _with_child(node: Any, key: Any, child: Any) -> Any:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return node._replace(**{key: child})  # pyright: ignore[reportAttributeAccessIssue]  # a named tuple
    if isinstance(node, tuple):
        return node[:key] + (child,) + node[key + 1 :]
    if isinstance(node, list):
        return node[:key] + [child] + node[key + 1 :]
    return {**node, key: child}


def _injected(node: Any) -> dict[str, dict]:
    """The hyperparameter dicts of an injected state, ours or optax's (``hyperparams`` and, for
    schedules, our ``scheduled`` or optax's ``hyperparams_states``); ``{}`` for any other node."""
    if not (hasattr(node, "_fields") and isinstance(getattr(node, "hyperparams", None), dict)):
        return {}
    found = {"hyperparams": node.hyperparams}
    for kind in ("scheduled", "hyperparams_states"):
        if isinstance(getattr(node, kind, None), dict):
            found[kind] = getattr(node, kind)
    return found


def _is_scheduled(node: Any, name: str) -> bool:
    return any(name in values for kind, values in _injected(node).items() if kind != "hyperparams")


def _nearest(state: OptState, name: str, matches_in) -> tuple[tuple, str, Any]:
    """Breadth first, the one match of ``name`` nearest the top: ``(keys from the top, path text, value)``.

    ``matches_in(node, path)`` lists ``(path text, value)`` matches at a node. Raises ``ValueError``
    for two matches at the same depth and ``KeyError`` (naming what exists) for none.
    """
    level, seen = [((), "state", state)], set()
    while level:
        matches, next_level = [], []
        for keys, path, node in level:
            seen.update(getattr(node, "_fields", ()))
            for values in _injected(node).values():
                seen.update(values)
            matches.extend((keys, text, value) for text, value in matches_in(node, path))
            next_level.extend((keys + (key,), path + text, child) for text, key, child in _children(node))
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(
                f"{name!r} is ambiguous in this state: found at {', '.join(text for _, text, _ in matches)}; "
                "use the sub-state you mean"
            )
        level = next_level
    raise KeyError(f"no value named {name!r} in this state; it has {sorted(map(str, seen))}")


def read_value(state: OptState, name: str) -> jax.Array:
    """The value called ``name`` in ``state``: an injected hyperparameter or a state field.

    Searches breadth first through chains and wrappers, so ``read_value(state, 'learning_rate')`` and
    ``read_value(state, 'count')`` work on the state of any composition, optax's included (its
    ``inject_hyperparams`` states too). The match nearest the top wins (an injected wrapper's
    ``count`` over its inner optimizer's). Two matches at that same depth (two injected optimizers
    in one chain, or a chain whose stages both count steps) raise ``ValueError`` naming their paths:
    read from the sub-state you mean (``state[1]``). Raises ``KeyError`` naming what was found when
    nothing matches.
    """

    def matches_in(node, path):
        found = [
            (f"{path}.{kind}[{name!r}]", values[name])
            for kind, values in _injected(node).items()
            if kind != "hyperparams_states" and name in values
        ]
        fields = getattr(node, "_fields", ())
        if name in fields and getattr(node, name) is not None:
            found.append((f"{path}.{name}", getattr(node, name)))
        return found[:1]  # optax keeps a scheduled value in hyperparams and its schedule state beside it

    return _nearest(state, name, matches_in)[2]


def with_hyperparam(state: OptState, name: str, value: float) -> OptState:
    """``state`` with the injected hyperparameter ``name`` set to ``value`` for the next steps.

    Works on the states of our :func:`inject_hyperparams` (float32) and optax's (the stored dtype),
    wherever they sit in a composition; the nearest match to the top is set, two at the same depth
    raise ``ValueError``. A scheduled hyperparameter is recomputed from its schedule at every step:
    setting it would have no effect, so it raises ``ValueError`` (inject a number to set it by hand).
    """

    def matches_in(node, path):
        return (
            [(f"{path}.hyperparams[{name!r}]", node)]
            if any(name in values for values in _injected(node).values())
            else []
        )

    keys, _, injected = _nearest(state, name, matches_in)
    if _is_scheduled(injected, name):
        raise ValueError(
            f"{name!r} follows a schedule in this state, so setting it would have no effect; inject a number instead"
        )
    old = injected.hyperparams[name]
    dtype = jnp.float32 if isinstance(injected, InjectHyperparamsState) else jnp.result_type(old)
    replaced = injected._replace(hyperparams={**injected.hyperparams, name: jnp.asarray(value, dtype)})

    def rebuild(node: Any, remaining: tuple) -> Any:
        if not remaining:
            return replaced
        key = remaining[0]
        child = next(child for _, child_key, child in _children(node) if child_key == key)
        return _with_child(node, key, rebuild(child, remaining[1:]))

    return rebuild(state, keys)
