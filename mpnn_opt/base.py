"""The contract every optimizer in mpnn_opt follows.

A :class:`GradientTransformation` is a pair of pure functions:

* ``init(params) -> state``
* ``update(updates, state, params=None, **extra_args) -> (updates, new_state)``

It is optax's type, not a copy of it: ours are instances of ``optax.GradientTransformation`` and
``optax.GradientTransformationExtraArgs``, so they go wherever flax, equinox and optax take an
optax transformation (and type checkers agree), and optax's sit inside :func:`chain` and our
wrappers. Extra keyword arguments (optax's ``value=loss`` for ``reduce_on_plateau``) are accepted
by every transform, passed to the members that take them and ignored by the others. optax is a
runtime dependency for this one reason (it is small and depends only on jax, chex and numpy).
States are named tuples of arrays; per-parameter fields mirror the params tree.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import optax

from mpnn_opt._tree import check_float_leaves, check_same_structure, compute_dtype

__all__ = [
    "ArrayTree",
    "Params",
    "Updates",
    "OptState",
    "Schedule",
    "ScalarOrSchedule",
    "Mask",
    "TransformInitFn",
    "TransformUpdateFn",
    "AnyTransformation",
    "GradientTransformation",
    "with_extra_args",
    "EmptyState",
    "init_empty_state",
    "identity",
    "chain",
    "apply_updates",
]

ArrayTree = Any
Params = ArrayTree
Updates = ArrayTree
OptState = Any
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[float, jax.Array, Schedule]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | a Callable)
Mask = Union[Any, Callable[[Params], Any]]  # noqa: UP007 (runtime alias); a bool pytree shaped like the params (or a prefix), or params -> one


TransformInitFn = optax.TransformInitFn
TransformUpdateFn = optax.TransformUpdateExtraArgsFn
AnyTransformation = optax.GradientTransformation  # what chain and the wrappers accept: ours or optax's
EmptyState = optax.EmptyState  # the state of a transform that keeps none (optax's, so both libraries agree)


def _accepts_extra_args(update: Callable) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)


class GradientTransformation(optax.GradientTransformationExtraArgs):
    """A pure ``(init, update)`` pair; see the module docstring. A subclass of optax's type.

    ``update`` may take ``(updates, state, params=None)`` only: it is then wrapped to accept (and
    ignore) optax's extra keyword arguments, as ``optax.with_extra_args_support`` does.
    """

    def __new__(cls, init: TransformInitFn, update: Callable) -> GradientTransformation:
        if _accepts_extra_args(update):
            return super().__new__(cls, init, update)
        plain_update = update

        @functools.wraps(plain_update)
        def accepting_extra_args(updates, state, params=None, **extra_args):
            del extra_args
            return plain_update(updates, state, params)

        return super().__new__(cls, init, accepting_extra_args)


def with_extra_args(transform: Any) -> optax.GradientTransformationExtraArgs:
    """``transform`` (ours, optax's, or any object with ``init`` and ``update``) taking extra keyword arguments."""
    return optax.with_extra_args_support(transform)


def init_empty_state(params: Params) -> EmptyState:
    """The ``init`` of every transform that keeps no state."""
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """Passes updates through unchanged: ``u' = u``."""

    def update_fn(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)


def chain(*transforms: Any) -> GradientTransformation:
    """Applies ``transforms`` one after the other; the state is a tuple of theirs.

    Any object with ``init`` and ``update`` methods of optax's signature is accepted,
    so optax transforms mix freely with ours. Extra keyword arguments given to ``update`` reach
    every member that takes them (``optax.contrib.reduce_on_plateau``'s ``value``).
    """
    for position, transform in enumerate(transforms):
        if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
            raise TypeError(
                f"chain: argument {position} must be a gradient transformation with init and update, "
                f"got {type(transform).__name__}"
            )

    def init_fn(params: Params) -> tuple:
        return tuple(transform.init(params) for transform in transforms)

    members = tuple(with_extra_args(transform) for transform in transforms)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(members):
            raise ValueError(
                f"chain: expected a state tuple of {len(members)} entries, got {type(state).__name__}"
                + (f" of {len(state)}" if isinstance(state, tuple) else "")
            )
        new_state = []
        for transform, inner_state in zip(members, state):
            updates, inner_state = transform.update(updates, inner_state, params, **extra_args)
            new_state.append(inner_state)
        return updates, tuple(new_state)

    return GradientTransformation(init_fn, update_fn)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates`` leaf by leaf, cast back to each parameter's dtype.

    The sum is computed in the wider of the two dtypes (so f32 updates on bf16 params are
    added in f32; float8 params, which have no implicit promotion, are added in float32) and then
    rounded once to the parameter's dtype. ``None`` leaves stay ``None``. Integer or bool params or
    updates raise ``TypeError`` naming the path: casting back would silently truncate every step.
    """
    check_same_structure(params, updates, expected_name="params", got_name="updates")
    check_float_leaves(params, "params")
    check_float_leaves(updates, "updates")

    def add(p, u):
        p, u = jnp.asarray(p), jnp.asarray(u)
        return (p.astype(_sum_dtype(p.dtype, u.dtype)) + u).astype(p.dtype)

    return jax.tree.map(lambda p, u: None if p is None else add(p, u), params, updates, is_leaf=lambda x: x is None)


def _sum_dtype(param_dtype: Any, update_dtype: Any) -> Any:
    if param_dtype == update_dtype:
        return param_dtype
    if min(jnp.dtype(param_dtype).itemsize, jnp.dtype(update_dtype).itemsize) == 1:  # float8: no implicit promotion
        return jnp.promote_types(compute_dtype(param_dtype), compute_dtype(update_dtype))
    return jnp.promote_types(param_dtype, update_dtype)
