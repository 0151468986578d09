"""Pytree helpers shared by the transforms: paths, structure checks, dtypes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_is_none = lambda x: x is None  # noqa: E731


def path_str(path: tuple) -> str:
    """A readable path such as ``['dense']['weights']``; the root is ``<root>``."""
    return jax.tree_util.keystr(path) or "<root>"


def key_name(key: Any) -> str:
    """One path entry as plain text: a dict key, an attribute name or a sequence index."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def parameter_path(path: tuple) -> tuple:
    """``path`` without a trailing ``.value`` attribute: the parameter's own path.

    flax.nnx variables (``nnx.state``, ``nnx.split``) and flax's ``Partitioned`` boxes hold the array
    in a ``value`` attribute, so the same parameter is ``['linear']['kernel'].value`` in a state of
    variables and ``['linear']['kernel']`` in its pure arrays (``nnx.Optimizer`` inits on the first and
    updates on the second). Names and path masks read the parameter's path, so both agree.
    """
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        return path[:-1]
    return path


def leaf_name(path: tuple) -> str:
    """The leaf's own name: the last key of its :func:`parameter_path`, as a string."""
    path = parameter_path(path)
    return key_name(path[-1]) if path else ""


def leaves_with_paths(tree: Any) -> list[tuple[tuple, Any]]:
    """``(path, leaf)`` pairs, counting ``None`` as a leaf so that it keeps its place."""
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]


def map_with_path(fn: Callable, tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` whose ``fn`` also receives the leaf's path first; ``None`` leaves stay ``None``."""

    def visit(path, leaf, *others):
        return None if leaf is None else fn(path, leaf, *others)

    return jax.tree_util.tree_map_with_path(visit, tree, *rest, is_leaf=_is_none)


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` that leaves ``None`` leaves (absent parameters) as ``None``."""
    return jax.tree.map(lambda x, *others: None if x is None else fn(x, *others), tree, *rest, is_leaf=_is_none)


def check_same_structure(expected: Any, got: Any, *, expected_name: str, got_name: str) -> None:
    """Raises ``ValueError`` naming the first path where ``got`` differs from ``expected``.

    Structures are static under ``jit``, so this costs nothing at run time. Leaf shapes are
    compared too, because a wrongly shaped gradient would otherwise broadcast silently.
    """
    expected_leaves = leaves_with_paths(expected)
    got_leaves = leaves_with_paths(got)
    for (expected_path, expected_leaf), (got_path, got_leaf) in zip(expected_leaves, got_leaves):
        if expected_path != got_path:
            raise ValueError(
                f"{got_name} do not match the structure of {expected_name}: first difference at "
                f"{path_str(expected_path)} in {expected_name} vs {path_str(got_path)} in {got_name}"
            )
        if (expected_leaf is None) != (got_leaf is None):
            raise ValueError(
                f"{got_name} do not match the structure of {expected_name} at {path_str(got_path)}: one side is None"
            )
        if expected_leaf is not None and np.shape(expected_leaf) != np.shape(got_leaf):
            raise ValueError(
                f"{got_name} at {path_str(got_path)} has shape {np.shape(got_leaf)}, "
                f"but {expected_name} there has shape {np.shape(expected_leaf)}"
            )
    if len(expected_leaves) != len(got_leaves):
        longer, name = (
            (expected_leaves, expected_name) if len(expected_leaves) > len(got_leaves) else (got_leaves, got_name)
        )
        extra_path = longer[min(len(expected_leaves), len(got_leaves))][0]
        raise ValueError(
            f"{got_name} do not match the structure of {expected_name}: {path_str(extra_path)} exists only in {name}"
        )
    expected_def = jax.tree.structure(expected, is_leaf=_is_none)
    got_def = jax.tree.structure(got, is_leaf=_is_none)
    if expected_def != got_def:
        raise ValueError(
            f"{got_name} do not match the structure of {expected_name}: same paths but different "
            f"container types ({got_def} vs {expected_def})"
        )


def check_state(state: Any, expected: type, transform: str) -> None:
    """Raises ``TypeError`` when ``state`` is not an ``expected`` (e.g. another optimizer's state)."""
    if not isinstance(state, expected):
        raise TypeError(
            f"{transform}: expected a state of type {expected.__name__} (from this transform's init), got "
            f"{type(state).__name__}; was the state made by another optimizer's init?"
        )


def check_float_leaves(tree: Any, what: str) -> None:
    """Raises ``TypeError`` naming the first leaf whose dtype is not floating point.

    Integer or bool parameters would be silently truncated by an update, so they are refused.
    """
    for path, leaf in leaves_with_paths(tree):
        if leaf is None:
            continue
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{what} at {path_str(path)} has dtype {dtype}; mpnn_opt optimizes floating-point "
                f"arrays only (cast it to a float dtype, or keep it out of the optimized tree)"
            )


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype the arithmetic runs in: at least float32, so that eps and beta2 do not round away.

    float64 stays float64; every narrower float (float16, bfloat16, the float8 types, which have no
    implicit promotion) computes in float32.
    """
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else jnp.dtype(jnp.float32)


def zeros_like_tree(params: Any, dtype: Any | None) -> Any:
    """Zeros shaped like each parameter, in ``dtype`` or else the parameter's :func:`compute_dtype`.

    The default keeps per-parameter state of float16/bfloat16/float8 params in float32, as the seed
    keeps its state: in float16 a squared gradient of 1e4 overflows to inf (the parameter then stops
    moving) and one of 1e-4 underflows to 0 (Adam's step then grows 5x).
    """
    return tree_map(lambda p: jnp.zeros(jnp.shape(p), dtype or compute_dtype(jnp.result_type(p))), params)


def as_arrays(tree: Any) -> Any:
    """``tree`` with every non-None leaf a JAX array (Python and NumPy scalars become 0-d arrays)."""
    return tree_map(lambda leaf: leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf), tree)


def broadcast_mask(mask: Any, params: Any, argument: str = "mask") -> Any:
    """Expands ``mask`` (a bool pytree, a prefix of ``params``, or a callable on ``params``) to a full tree.

    Returns a tree with the structure of ``params`` whose leaves are bools (or bool arrays).
    """
    if callable(mask):
        mask = mask(params)
    try:
        return jax.tree.map(
            lambda flag, subtree: jax.tree.map(lambda _: flag, subtree, is_leaf=_is_none),
            mask,
            params,
            is_leaf=_is_none,
        )
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{argument} must be a pytree of bools shaped like the params (or a prefix of them): {error}"
        ) from None


def check_bool_flags(flags: Any, params: Any, argument: str = "mask") -> None:
    """Raises ``TypeError`` naming the path of the first flag that is not a bool for a (non-None) leaf.

    A flag is a Python or NumPy bool, or a bool array of the leaf's shape (or 0-d); strings, numbers
    and ``None`` are refused, so that a malformed mask fails here rather than deep inside an update.
    """
    for (path, flag), (_, leaf) in zip(leaves_with_paths(flags), leaves_with_paths(params)):
        if leaf is None or isinstance(flag, (bool, np.bool_)):
            continue
        is_bool_array = isinstance(flag, (np.ndarray, jax.Array)) and jnp.result_type(flag) == jnp.bool_
        if not is_bool_array or np.shape(flag) not in ((), np.shape(leaf)):
            shape = f" of shape {np.shape(flag)}" if hasattr(flag, "shape") else ""
            raise TypeError(
                f"{argument} at {path_str(path)} must be a bool (or a bool array of the leaf's shape {np.shape(leaf)}), "
                f"got {flag!r} of type {type(flag).__name__}{shape}"
            )


def unzip(reference: Any, tree_of_tuples: Any, count: int) -> tuple[Any, ...]:
    """Splits a tree whose leaves (at ``reference``'s leaf positions) are ``count``-tuples into ``count`` trees."""
    return tuple(tree_map(lambda _, entry, i=i: entry[i], reference, tree_of_tuples) for i in range(count))
