"""Packed parameters: every leaf of one dtype and one regularization group in one flat buffer.

A model with hundreds of small arrays pays a fixed cost per array on every jitted optimizer step
(each array is a separate input, output and loop). :func:`pack` copies a params tree once into a
:class:`Packed` object holding a few contiguous 1-D buffers, one per (dtype, regularized) group;
the model reads its arrays back with :func:`unpack`, which under ``jit`` is one split per buffer
and reshapes, fused by XLA into their consumers (no copy). ``jax.grad`` taken with
respect to the :class:`Packed` object returns the gradients packed the same way (the backward pass
assembles each buffer's gradient with one concatenate, the transpose of the split), so optimizer
state and the update run on the few buffers with no concatenate or split of their own::

    packed = mpnn_opt.pack(params)              # once
    tx = mpnn_opt.adam(1e-3)
    state = tx.init(packed)

    @jax.jit
    def step(packed, state, x, y):
        grads = jax.grad(lambda p: loss(mpnn_opt.unpack(p), x, y))(packed)   # a Packed
        updates, state = tx.update(grads, state, packed)
        return mpnn_opt.apply_updates(packed, updates), state

:class:`Packed` is a pytree whose children are the group buffers and whose static part is the
layout, so every transform and alias works on it unchanged. ``pack`` groups the leaves by the
optimizers' default rule (:func:`mpnn_opt.regularization.default_mask`) or by its ``mask``, and the
optimizers' default mask reads those groups back from the :class:`Packed` (its
``regularized_mask``), so the packed run regularizes the same leaves as the per-leaf one. Each
buffer's key names its group: ``'float32_regularized'`` and
``'float32_unregularized_bias_beta_gamma'`` (which the seed's name rule alone also classifies
right).

Unlike ``optax.flatten``, which concatenates the gradients and splits the updates inside every
update, the packing here is paid once, when the params are packed. Without regularization the
groups do not matter: ``pack(params, mask=False)`` gives one buffer per dtype, the fewest loops.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from mpnn_opt._tree import broadcast_mask, check_float_leaves, leaves_with_paths, path_str
from mpnn_opt.base import Mask
from mpnn_opt.regularization import default_mask

__all__ = ["LeafSlot", "PackedLayout", "Packed", "pack", "unpack", "regularized_mask"]


class LeafSlot(NamedTuple):
    """Where one leaf of the original tree lives: ``buffers[group][offset : offset + size]``."""

    group: int
    offset: int
    shape: tuple[int, ...]


class PackedLayout(NamedTuple):
    """The static part of a :class:`Packed`: group names and flags, leaf slots, the tree shape."""

    names: tuple[str, ...]  # one per group buffer, e.g. 'float32_regularized'
    regularized: tuple[bool, ...]  # one per group buffer
    slots: tuple[LeafSlot | None, ...]  # one per leaf of the original tree; None for a None leaf
    treedef: Any  # the original tree's structure, None leaves counted as leaves


def _group_name(dtype: np.dtype, regularized: bool) -> str:
    return f"{np.dtype(dtype).name}_{'regularized' if regularized else 'unregularized_bias_beta_gamma'}"


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True, eq=False)
class Packed:
    """Group buffers (the pytree children) plus their :class:`PackedLayout` (static aux data).

    ``buffers[i]`` is a 1-D array holding every leaf of group ``i`` end to end. Transforms see the
    buffers as leaves named ``layout.names[i]``. Build one with :func:`pack`; read the original
    arrays with :func:`unpack`. Any children are accepted (JAX rebuilds pytrees with placeholders,
    bools or tuples in them), so the constructor does not validate.
    """

    buffers: tuple[Any, ...]
    layout: PackedLayout

    def tree_flatten_with_keys(self):
        keyed = tuple((jax.tree_util.DictKey(name), buffer) for name, buffer in zip(self.layout.names, self.buffers))
        return keyed, self.layout

    @classmethod
    def tree_unflatten(cls, layout: PackedLayout, buffers) -> Packed:
        return cls(tuple(buffers), layout)

    def regularized_mask(self) -> Packed:
        """Each group's regularization flag as ``pack`` decided it; the optimizers' default mask uses it."""
        return regularized_mask(self)

    @property
    def size(self) -> int:
        """The number of parameters, summed over the groups."""
        return sum(math.prod(slot.shape) for slot in self.layout.slots if slot is not None)

    def __repr__(self) -> str:
        groups = ", ".join(f"{name}: {np.shape(b)}" for name, b in zip(self.layout.names, self.buffers))
        return f"Packed({groups}; {len(self.layout.slots)} leaves)"


def _resolve_flags(params: Any, mask: Mask | None) -> list[bool]:
    """One Python bool per leaf of ``params``; masks must be concrete, since they pick the buffer."""
    flags = broadcast_mask(default_mask if mask is None else mask, params)
    flat_flags = [flag for _, flag in leaves_with_paths(flags)]
    for (path, leaf), flag in zip(leaves_with_paths(params), flat_flags):
        if leaf is not None and not isinstance(flag, (bool, np.bool_)):
            raise TypeError(
                f"pack: mask at {path_str(path)} must be a Python bool (it chooses the leaf's buffer), "
                f"got {type(flag).__name__}"
            )
    return [bool(flag) if flag is not None else False for flag in flat_flags]


def _refuse_sharded(params: Any) -> None:
    """A buffer holds leaves end to end, so it cannot keep per-leaf shardings: refuse, never reshard."""
    for path, leaf in leaves_with_paths(params):
        sharding = None if isinstance(leaf, Tracer) else getattr(leaf, "sharding", None)
        if sharding is not None and not sharding.is_fully_replicated:
            raise ValueError(
                f"pack: params at {path_str(path)} are sharded ({sharding}); a packed buffer holds leaves "
                "end to end and cannot keep a per-leaf sharding. Pack replicated params, or keep the "
                "per-leaf tree and lay out the state with mpnn_opt.state_shardings."
            )


def pack(params: Any, mask: Mask | None = None) -> Packed:
    """Copies ``params`` into one flat buffer per (dtype, regularized) group, in leaf order.

    ``mask`` follows :mod:`mpnn_opt.regularization` (default: its default rule) but must give a
    Python bool per leaf (``mask=False`` or ``True``: one buffer per dtype). Groups appear in the
    order of their first leaf. ``None`` leaves are kept
    in the layout and come back as ``None``. Call it once, outside the training step; packing a
    gradient tree with the same names and mask gives the same layout.
    """
    check_float_leaves(params, "params")
    _refuse_sharded(params)
    flags = _resolve_flags(params, mask)
    leaves = leaves_with_paths(params)
    groups: dict[tuple[str, bool], list[jax.Array]] = {}
    sizes: dict[tuple[str, bool], int] = {}
    slots = []
    for (_, leaf), flag in zip(leaves, flags):
        if leaf is None:
            slots.append(None)
            continue
        leaf = jnp.asarray(leaf)
        key = (leaf.dtype.name, flag)
        if key not in groups:
            groups[key], sizes[key] = [], 0
        slots.append(LeafSlot(list(groups).index(key), sizes[key], tuple(leaf.shape)))
        groups[key].append(leaf.reshape(-1))
        sizes[key] += leaf.size
    layout = PackedLayout(
        names=tuple(_group_name(np.dtype(dtype), flag) for dtype, flag in groups),
        regularized=tuple(flag for _, flag in groups),
        slots=tuple(slots),
        treedef=jax.tree.structure(params, is_leaf=lambda x: x is None),
    )
    buffers = tuple(jnp.concatenate(parts) if len(parts) > 1 else parts[0] for parts in groups.values())
    return Packed(buffers, layout)


def unpack(packed: Packed) -> Any:
    """The original tree, each leaf a piece of its group buffer reshaped to its shape.

    Each buffer is cut with one ``lax.split``: under ``jit`` the pieces are views that XLA fuses
    into whatever reads them, and the transpose of a split is a single concatenate, so the gradient
    of a loss through ``unpack`` is written into the packed buffers in one pass (per-leaf slices
    would transpose into one zero-padded buffer per leaf, summed: quadratic in the leaf count).
    Outside ``jit`` each leaf is a copy.
    """
    if not isinstance(packed, Packed):
        raise TypeError(f"unpack: expected a Packed (from mpnn_opt.pack), got {type(packed).__name__}")
    slots = packed.layout.slots
    pieces = {}
    for group, buffer in enumerate(packed.buffers):
        members = [(index, slot) for index, slot in enumerate(slots) if slot is not None and slot.group == group]
        sizes = [math.prod(slot.shape) for _, slot in members]
        for (index, slot), piece in zip(members, jax.lax.split(buffer, sizes) if len(sizes) > 1 else [buffer]):
            pieces[index] = piece.reshape(slot.shape)
    leaves = [pieces.get(index) for index in range(len(slots))]
    return jax.tree.unflatten(packed.layout.treedef, leaves)


def regularized_mask(packed: Packed) -> Packed:
    """A mask for the optimizers' ``mask`` argument: each group's flag, as ``pack`` decided it."""
    return Packed(packed.layout.regularized, packed.layout)
