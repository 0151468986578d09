"""Choosing which leaves a transform touches: masks, labelled groups, and freezing.

* :func:`masked` runs a transform on the masked-in leaves only; the others pass through unchanged.
* :func:`path_mask` builds a mask from glob patterns on leaf paths such as ``'encoder/*/bias'``.
* :func:`partition` routes each labelled group of leaves to its own transform (per-group learning rates).
* :func:`freeze` zeroes the updates of the masked-in leaves.

The inner states keep the full params structure, with ``None`` where a leaf is masked out, so every
state still mirrors the params tree.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from mpnn_opt._tree import (
    broadcast_mask,
    check_state,
    key_name,
    leaves_with_paths,
    map_with_path,
    parameter_path,
    path_str,
    tree_map,
)
from mpnn_opt.base import (
    AnyTransformation,
    GradientTransformation,
    Mask,
    OptState,
    Params,
    init_empty_state,
    with_extra_args,
)

__all__ = ["MaskedState", "masked", "path_mask", "PartitionState", "partition", "freeze"]


def _path_text(path: tuple) -> str:
    return "/".join(key_name(key) for key in parameter_path(path))


def path_mask(*patterns: str) -> Callable[[Params], Any]:
    """A callable mask: ``True`` where the leaf's path (keys joined by ``/``) matches any glob pattern."""
    if not patterns:
        raise ValueError("path_mask needs at least one pattern")
    return lambda params: map_with_path(
        lambda path, _: any(fnmatch.fnmatchcase(_path_text(path), p) for p in patterns), params
    )


def _static_flags(mask: Mask, params: Params, argument: str) -> Any:
    """The mask as one Python bool per leaf (it chooses the state's structure, so it must be concrete)."""
    flags = broadcast_mask(mask, params, argument)
    for (path, flag), (_, leaf) in zip(leaves_with_paths(flags), leaves_with_paths(params)):
        if leaf is not None and not isinstance(flag, (bool, np.bool_)):
            raise TypeError(
                f"{argument} must give a Python bool per leaf; got {flag!r} of type {type(flag).__name__} at {path_str(path)}"
            )
    return tree_map(lambda _, flag: bool(flag), params, flags)


def _select(tree: Any, flags: Any, wanted: Any = True) -> Any:
    return tree_map(lambda leaf, flag: leaf if flag == wanted else None, tree, flags)


def _merge(base: Any, replacement: Any, flags: Any, wanted: Any = True) -> Any:
    return tree_map(lambda leaf, new, flag: new if flag == wanted else leaf, base, replacement, flags)


class MaskedState(NamedTuple):
    """The state of :func:`masked`."""

    inner_state: OptState  # the inner transform's state over the masked-in leaves (None elsewhere)


def masked(inner: AnyTransformation, mask: Mask) -> GradientTransformation:
    """``inner`` on the leaves where ``mask`` is True; the other updates pass through unchanged.

    ``mask`` is a bool pytree (or a prefix of one) or a callable ``params -> bools``, such as
    :func:`path_mask`. Like optax ``masked``.
    """

    inner = with_extra_args(inner)

    def init_fn(params: Params) -> MaskedState:
        return MaskedState(inner.init(_select(params, _static_flags(mask, params, "mask"))))

    def update_fn(updates, state, params=None, **extra_args):
        check_state(state, MaskedState, "masked")
        flags = _static_flags(mask, updates if params is None else params, "mask")
        chosen_params = None if params is None else _select(params, flags)
        new_updates, inner_state = inner.update(_select(updates, flags), state.inner_state, chosen_params, **extra_args)
        return _merge(updates, new_updates, flags), MaskedState(inner_state)

    return GradientTransformation(init_fn, update_fn)


class PartitionState(NamedTuple):
    """The state of :func:`partition`."""

    inner_states: dict  # label -> that group's transform state


def partition(transforms: Mapping[Any, AnyTransformation], labels: Any) -> GradientTransformation:
    """Each leaf goes to ``transforms[label]``, its label given by ``labels`` (a pytree of labels shaped
    like the params, a prefix of one, or a callable ``params -> labels``). Like optax ``multi_transform``
    (``partition``); an unknown label raises naming the path.
    """

    def resolve(params: Params) -> Any:
        tree = broadcast_mask(labels, params, "labels")
        for path, label in leaves_with_paths(tree):
            if label is not None and label not in transforms:
                raise ValueError(
                    f"labels at {path_str(path)} is {label!r}, which has no transform; known: {sorted(map(str, transforms))}"
                )
        return tree

    def init_fn(params: Params) -> PartitionState:
        tree = resolve(params)
        return PartitionState({label: tx.init(_select(params, tree, label)) for label, tx in transforms.items()})

    transforms = {label: with_extra_args(tx) for label, tx in transforms.items()}

    def update_fn(updates, state, params=None, **extra_args):
        check_state(state, PartitionState, "partition")
        tree = resolve(updates if params is None else params)
        new_updates, new_states = updates, {}
        for label, tx in transforms.items():
            chosen_params = None if params is None else _select(params, tree, label)
            group, new_states[label] = tx.update(
                _select(updates, tree, label), state.inner_states[label], chosen_params, **extra_args
            )
            new_updates = _merge(new_updates, group, tree, label)
        return new_updates, PartitionState(new_states)

    return GradientTransformation(init_fn, update_fn)


def freeze(mask: Mask) -> GradientTransformation:
    """Zero updates on the leaves where ``mask`` is True (put it last in a chain to keep them fixed)."""

    def update_fn(updates, state, params=None):
        flags = _static_flags(mask, updates if params is None else params, "mask")
        return tree_map(lambda u, flag: jnp.zeros_like(u) if flag else u, updates, flags), state

    return GradientTransformation(init_empty_state, update_fn)
