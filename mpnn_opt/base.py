"""The contract every optimizer in mpnn_opt follows.

A :class:`GradientTransformation` is a pair of pure functions:

* ``init(params) -> state``
* ``update(updates, state, params=None) -> (updates, new_state)``

It is the same protocol as optax's ``GradientTransformation``: a transform from
optax can sit inside :func:`chain`, and one of ours inside ``optax.chain``.
States are named tuples of arrays; per-parameter fields mirror the params tree.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, Union

import jax
import jax.numpy as jnp

from mpnn_opt._tree import check_float_leaves, check_same_structure, compute_dtype

__all__ = [
    "ArrayTree",
    "Params",
    "Updates",
    "OptState",
    "Schedule",
    "ScalarOrSchedule",
    "TransformInitFn",
    "TransformUpdateFn",
    "GradientTransformation",
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
ScalarOrSchedule = Union[float, jax.Array, Schedule]


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pure ``(init, update)`` pair; see the module docstring."""

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


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
    so optax transforms mix freely with ours.
    """
    for position, transform in enumerate(transforms):
        if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
            raise TypeError(
                f"chain: argument {position} must be a gradient transformation with init and update, "
                f"got {type(transform).__name__}"
            )

    def init_fn(params: Params) -> tuple:
        return tuple(transform.init(params) for transform in transforms)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain: expected a state tuple of {len(transforms)} entries, got {type(state).__name__}"
                + (f" of {len(state)}" if isinstance(state, tuple) else "")
            )
        new_state = []
        for transform, inner_state in zip(transforms, state):
            if extra_args:
                updates, inner_state = transform.update(updates, inner_state, params, **extra_args)
            else:
                updates, inner_state = transform.update(updates, inner_state, params)
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
