"""Shardings for optimizer state, derived from the parameters' shardings.

Every transform in mpnn_opt keeps its per-parameter state (velocities, moments, caches) in trees
with the structure and shapes of the params, and everything else in scalars (step counts). So the
layout of the state follows from the layout of the params:

* :func:`state_shardings` returns, for a transform ``tx``, a tree shaped like ``tx.init(params)``
  whose leaves are ``NamedSharding`` s: each per-parameter leaf gets its parameter's sharding,
  every other leaf (counts, scalars, leaves whose shape differs from the parameter's) is
  replicated over the mesh. A per-parameter record in place of a leaf (the 8-bit state's
  ``QuantizedBlocks``) is laid out by its own ``shardings_for`` (blocks follow the parameter's shards). It never runs ``init``: it reads the state's structure with
  ``jax.eval_shape``, so ``params`` may be real arrays or ``jax.ShapeDtypeStruct`` s.
* ``zero_axis='data'`` (ZeRO stage 1) additionally splits each per-parameter state leaf over that
  mesh axis, on its first dimension that is not sharded yet and whose size the axis divides;
  leaves with no such dimension keep their parameter's sharding. Params stay as they are
  (typically replicated over ``'data'``), and each device holds ``1 / axis_size`` of the state.

Use the result as ``out_shardings`` of a jitted ``init`` and as the in/out shardings of the
jitted step::

    p_shard = {"w": NamedSharding(mesh, P(None, "model")), ...}
    s_shard = mpnn_opt.state_shardings(tx, params, p_shard, zero_axis="data")
    state = jax.jit(tx.init, out_shardings=s_shard)(params)
    step = jax.jit(step_fn, in_shardings=(p_shard, s_shard, ...), out_shardings=(p_shard, s_shard))

With the state laid out like the params, an update is elementwise per device and compiles with
no cross-device communication; ZeRO-1 adds one all-gather of the updates per step (XLA inserts
it where the replicated params meet the sharded update). Transforms that reduce over all
parameters (global-norm clipping) need an all-reduce whatever the layout.

With ``zero_axis=None`` this gives what ``optax.tree_map_params(tx, lambda _, s: s, state,
param_shardings, transform_non_params=lambda _: replicated)`` gives (the tests check that); here
no state is needed, only shapes, and ZeRO-1 is one argument. Matching is by tree structure, not
by position in a flat list, so a chain of several stateful transforms is handled.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mpnn_opt.base import GradientTransformation, Params

__all__ = ["state_shardings", "per_device_nbytes"]


def state_shardings(
    tx: GradientTransformation,
    params: Params,
    param_shardings: Any,
    *,
    zero_axis: str | None = None,
) -> Any:
    """Shardings for ``tx.init(params)``: per-parameter leaves follow ``param_shardings``.

    ``params`` are arrays or ``jax.ShapeDtypeStruct`` s; ``param_shardings`` is a tree of
    ``NamedSharding`` with the structure of ``params`` (all on one mesh). ``zero_axis`` names a
    mesh axis over which per-parameter state is split as well (ZeRO-1, see the module docstring).
    """
    params_def = jax.tree.structure(params)
    params_def_with_none = jax.tree.structure(params, is_leaf=_is_none)
    shardings_def = jax.tree.structure(param_shardings)
    if params_def != shardings_def:
        raise ValueError(
            f"param_shardings must have the structure of params: expected {params_def}, got {shardings_def}"
        )
    flat_shardings = jax.tree.leaves(param_shardings)
    mesh = _common_mesh(flat_shardings)
    if zero_axis is not None and zero_axis not in mesh.shape:
        raise ValueError(f"zero_axis {zero_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    abstract_state = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())

    def mirrors_params(node: Any) -> bool:
        # a per-parameter state tree: the params' structure, with None where a mask left a leaf out
        # (masked and partition keep such trees), so None counts as a leaf here; or a tree of
        # per-parameter records (the 8-bit state's QuantizedBlocks) in place of the params' leaves
        if node is None:
            return False
        return (
            jax.tree.structure(node) == params_def
            or jax.tree.structure(node, is_leaf=_is_none) == params_def_with_none
            or jax.tree.structure(node, is_leaf=_is_none_or_record) == params_def_with_none
        )

    def for_subtree(node: Any) -> Any:
        if not mirrors_params(node):
            return jax.tree.map(lambda _: replicated, node)
        is_leaf = _is_none if jax.tree.structure(node, is_leaf=_is_none) == params_def_with_none else _is_none_or_record
        state_leaves = jax.tree.leaves(node, is_leaf=is_leaf)
        leaves = [
            None if state_leaf is None else _leaf_sharding(state_leaf, param, sharding, zero_axis, replicated)
            for state_leaf, param, sharding in zip(state_leaves, flat_params_with_none, flat_shardings_with_none)
        ]
        return jax.tree.unflatten(jax.tree.structure(node, is_leaf=is_leaf), leaves)

    flat_params_with_none = jax.tree.leaves(params, is_leaf=_is_none)
    flat_shardings_with_none = _align_with_none(flat_params_with_none, flat_shardings)
    return jax.tree.map(for_subtree, abstract_state, is_leaf=mirrors_params)


def _is_none(node: Any) -> bool:
    return node is None


def _is_none_or_record(node: Any) -> bool:
    return node is None or (isinstance(node, tuple) and hasattr(node, "_fields"))


def _align_with_none(flat_params_with_none: list, flat_shardings: list) -> list:
    """The shardings placed at the params' leaf positions, ``None`` where a param is ``None``."""
    shardings = iter(flat_shardings)
    return [None if param is None else next(shardings) for param in flat_params_with_none]


def per_device_nbytes(tree: Any) -> dict[Any, int]:
    """Bytes each device holds of ``tree``'s arrays: the sum of its addressable shards' sizes."""
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


def _common_mesh(flat_shardings: list) -> Any:
    if not flat_shardings:
        raise ValueError("param_shardings has no leaves; there is no mesh to lay the state out on")
    for sharding in flat_shardings:
        if not isinstance(sharding, NamedSharding):
            raise TypeError(f"param_shardings leaves must be NamedSharding, got {type(sharding).__name__}")
    mesh = flat_shardings[0].mesh
    if any(sharding.mesh != mesh for sharding in flat_shardings):
        raise ValueError("all param_shardings must use the same mesh")
    return mesh


def _leaf_sharding(state_leaf, param, sharding: NamedSharding, zero_axis, replicated) -> Any:
    """The parameter's sharding for a same-shaped state leaf, plus ``zero_axis`` where it fits.

    A per-parameter record (a named tuple, such as the 8-bit state's ``QuantizedBlocks``) lays itself
    out with its ``shardings_for(param_shape, sharding)``, which returns the record with a sharding per
    field; a record without one is replicated.
    """
    if _is_none_or_record(state_leaf):
        shardings_for = getattr(state_leaf, "shardings_for", None)
        if shardings_for is None:
            return jax.tree.map(lambda _: replicated, state_leaf)
        laid_out = shardings_for(tuple(np.shape(param)), sharding)
        if zero_axis is None:
            return laid_out
        return jax.tree.map(
            lambda leaf, field: NamedSharding(field.mesh, _add_axis(field.spec, leaf.shape, zero_axis, field.mesh)),
            state_leaf,
            laid_out,
        )
    if tuple(state_leaf.shape) != tuple(np.shape(param)):
        return replicated
    if zero_axis is None:
        return sharding
    return NamedSharding(sharding.mesh, _add_axis(sharding.spec, state_leaf.shape, zero_axis, sharding.mesh))


def _add_axis(spec: PartitionSpec, shape: tuple, axis: str, mesh) -> PartitionSpec:
    """``spec`` with ``axis`` on the first free dimension that ``axis`` divides, if any."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    used = {name for entry in entries for name in (entry if isinstance(entry, tuple) else (entry,))}
    if axis in used:
        return spec
    for dim, (entry, size) in enumerate(zip(entries, shape)):
        if entry is None and size % mesh.shape[axis] == 0:
            entries[dim] = axis
            return PartitionSpec(*entries)
    return spec
