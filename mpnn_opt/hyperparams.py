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

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt._numerics import safe_increment, zero_count
from mpnn_opt.base import GradientTransformation, OptState, Params

__all__ = ["InjectHyperparamsState", "inject_hyperparams", "read_value", "with_hyperparam"]


class InjectHyperparamsState(NamedTuple):
    count: jax.Array  # int32 steps taken; schedules are read at this value
    hyperparams: dict[str, jax.Array]  # float32 scalars, the values the next step uses
    inner_state: OptState


def _is_numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Real) or (isinstance(value, jax.Array) and jnp.ndim(value) == 0)


def inject_hyperparams(
    factory: Callable[..., GradientTransformation], static_args: tuple[str, ...] = ()
) -> Callable[..., GradientTransformation]:
    """Wraps ``factory`` (e.g. :func:`mpnn_opt.adam`) so its numeric and scheduled arguments live in the state.

    Arguments named in ``static_args`` stay Python values (for those that choose the structure of the
    transform, such as ``momentum`` in :func:`mpnn_opt.presets.torch_rmsprop`).

    The factory is called once with the initial values, so invalid hyperparameters still raise at
    construction. Unlike optax's ``inject_hyperparams``, the arrays are always float32.
    """

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        if args:
            raise TypeError(f"inject_hyperparams({factory.__name__}): pass hyperparameters by keyword")
        schedules = {name: value for name, value in kwargs.items() if callable(value) and name not in static_args}
        numeric = {name: value for name, value in kwargs.items() if _is_numeric(value) and name not in static_args}
        static = {name: value for name, value in kwargs.items() if name not in schedules and name not in numeric}
        initial = factory(**static, **numeric, **{name: float(schedule(0)) for name, schedule in schedules.items()})

        def values_at(count: jax.Array, stored: dict[str, jax.Array]) -> dict[str, jax.Array]:
            current = dict(stored)
            current.update({name: jnp.asarray(schedule(count), jnp.float32) for name, schedule in schedules.items()})
            return current

        def init_fn(params: Params) -> InjectHyperparamsState:
            count = zero_count()
            hyperparams = values_at(count, {name: jnp.asarray(value, jnp.float32) for name, value in numeric.items()})
            return InjectHyperparamsState(count, hyperparams, initial.init(params))

        def update_fn(updates, state, params=None):
            hyperparams = values_at(state.count, state.hyperparams)
            inner = factory(**static, **hyperparams)
            updates, inner_state = inner.update(updates, state.inner_state, params)
            return updates, InjectHyperparamsState(safe_increment(state.count), hyperparams, inner_state)

        return GradientTransformation(init_fn, update_fn)

    return wrapped


def _children(state: Any) -> list:
    if isinstance(state, (tuple, list)):
        return list(state)
    if isinstance(state, dict):
        return list(state.values())
    return []


def read_value(state: OptState, name: str) -> jax.Array:
    """The first value called ``name`` in ``state``: an injected hyperparameter or a state field.

    Searches depth first through chains and wrappers, so ``read_value(state, 'learning_rate')`` and
    ``read_value(state, 'count')`` work on the state of any composition. Raises ``KeyError`` naming
    what was found when nothing matches.
    """
    pending, seen_fields = [state], set()
    while pending:
        node = pending.pop(0)
        if isinstance(node, InjectHyperparamsState) and name in node.hyperparams:
            return node.hyperparams[name]
        fields = getattr(node, "_fields", ())
        seen_fields.update(fields)
        if name in fields and getattr(node, name) is not None:
            return getattr(node, name)
        if isinstance(node, InjectHyperparamsState):
            seen_fields.update(node.hyperparams)
        pending.extend(_children(node))
    raise KeyError(f"no value named {name!r} in this state; it has {sorted(seen_fields)}")


def with_hyperparam(state: OptState, name: str, value: float) -> OptState:
    """``state`` with the injected hyperparameter ``name`` set to ``value`` (float32) for the next steps.

    A scheduled hyperparameter is recomputed from its schedule at every step, so setting it has no effect.
    """
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
