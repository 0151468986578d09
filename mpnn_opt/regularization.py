"""L1/L2 regularization, decoupled weight decay, and which leaves they touch.

Which leaves are regularized by default (:func:`default_mask`): a leaf is regularized when

* it has at least 2 dimensions (weights, kernels, embeddings; never a bias vector or a normalization
  scale, such as equinox ``LayerNorm.weight``), and
* its own name (the last key of its path, a trailing ``.value`` of a flax variable dropped) contains
  none of ``'bias'``, ``'beta'``, ``'gamma'`` (the seed's name rule) and is not ``'scale'`` (flax's
  ``LayerNorm`` / ``BatchNorm`` / ``RMSNorm`` scale).

On mpneuralnetwork's layers this is exactly the seed's rule: the seed regularizes ``weights``
(2-D) and ``kernels`` (4-D) and skips ``biases``, ``gamma`` and ``beta`` by name. On flax linen and
nnx, equinox and plain dicts it decays weights, kernels and embeddings and leaves biases and
normalization scales and offsets alone. A packed tree (:func:`mpnn_opt.pack`) uses the groups
``pack`` chose. A ``mask`` argument overrides the rule: a pytree of bools shaped like the params (or
a prefix of them), or a callable ``params -> such a tree``; ``True`` means regularized.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._tree import (
    as_arrays,
    broadcast_mask,
    check_bool_flags,
    check_float_leaves,
    check_same_structure,
    compute_dtype,
    leaf_name,
    map_with_path,
    tree_map,
)
from mpnn_opt.base import EmptyState, GradientTransformation, Mask, Params, ScalarOrSchedule, identity, init_empty_state
from mpnn_opt.transforms import with_learning_rate

__all__ = [
    "UNREGULARIZED_NAME_PARTS",
    "is_regularized_name",
    "seed_name_mask",
    "is_regularized_leaf",
    "default_mask",
    "add_regularization",
    "add_decoupled_weight_decay",
    "add_decayed_weights",
]

UNREGULARIZED_NAME_PARTS = ("bias", "beta", "gamma")


def is_regularized_name(name: str) -> bool:
    """The seed's rule: regularize unless the name contains 'bias', 'beta' or 'gamma'."""
    return not any(part in name for part in UNREGULARIZED_NAME_PARTS)


def seed_name_mask(params: Params) -> Any:
    """A bool tree: ``True`` where the leaf's own name passes :func:`is_regularized_name` (names only)."""
    return map_with_path(lambda path, _: is_regularized_name(leaf_name(path)), params)


NORMALIZATION_SCALE_NAMES = ("scale",)


def is_regularized_leaf(path: tuple, leaf: Any) -> bool:
    """The default rule for one leaf (see the module docstring): at least 2-D, and a regularized name."""
    name = leaf_name(path)
    return jnp.ndim(leaf) >= 2 and is_regularized_name(name) and name not in NORMALIZATION_SCALE_NAMES


def default_mask(params: Params) -> Any:
    """The default regularization mask: :func:`is_regularized_leaf` on every leaf.

    A packed subtree (an object with a ``regularized_mask`` method, such as :class:`mpnn_opt.Packed`,
    whose buffers are 1-D) gives the groups it was packed with.
    """
    is_packed = lambda node: hasattr(node, "regularized_mask")  # noqa: E731
    packed_or_leaf = jax.tree_util.tree_map_with_path(
        lambda path, node: node.regularized_mask() if is_packed(node) else is_regularized_leaf(path, node),
        params,
        is_leaf=is_packed,
    )
    return packed_or_leaf


def _resolve_mask(mask: Mask | None, params: Params) -> Any:
    flags = broadcast_mask(default_mask if mask is None else mask, params)
    check_bool_flags(flags, params)
    return flags


def _where(flag: Any, regularized: jax.Array, untouched: jax.Array) -> jax.Array:
    if isinstance(flag, bool):
        return regularized if flag else untouched
    return jnp.where(flag, regularized, untouched)


def _require_params(params: Params | None, transform: str) -> None:
    if params is None:
        raise ValueError(f"{transform} needs the current params: call update(updates, state, params)")


def add_regularization(
    regularization: str | None, weight_decay: float, mask: Mask | None = None
) -> GradientTransformation:
    """Adds the gradient of a coupled penalty to the updates.

    * ``'L2'``: ``g' = g + weight_decay * w``
    * ``'L1'``: ``g' = g + weight_decay * sign(w)``
    * ``None``: ``g' = g``

    only on masked-in leaves. Like the seed and torch's ``weight_decay`` (L2), unlike optax, which
    has no L1 and calls the L2 form ``add_decayed_weights``.
    """
    _checks.regularization(regularization)
    _checks.non_negative("weight_decay", weight_decay)
    if regularization is None:
        return identity()
    penalty_gradient = jnp.sign if regularization == "L1" else (lambda w: w)

    def update_fn(updates, state, params=None):
        _require_params(params, "add_regularization")
        check_float_leaves(updates, "updates")
        check_same_structure(params, updates, expected_name="params", got_name="updates")
        updates, params = as_arrays(updates), as_arrays(params)
        flags = _resolve_mask(mask, params)

        def add(g, w, flag):
            dtype = compute_dtype(g.dtype)
            regularized = g.astype(dtype) + weight_decay * penalty_gradient(w.astype(dtype))
            return _where(flag, regularized.astype(g.dtype), g)

        return tree_map(add, updates, params, flags), state

    return GradientTransformation(init_empty_state, update_fn)


def add_decoupled_weight_decay(
    learning_rate: ScalarOrSchedule, weight_decay: float, mask: Mask | None = None
) -> GradientTransformation:
    """Shrinks the weight after the optimizer's own step, in the seed's order.

    With ``s = w + u`` the weight the incoming update ``u`` would give, the result is
    ``w' = s - lr_t * weight_decay * s``, i.e. ``u' = u - lr_t * weight_decay * (w + u)``,
    on masked-in leaves.

    torch ``AdamW`` and optax ``adamw`` decay the old weight instead
    (``w' = w - lr * (step + weight_decay * w)``); the two differ by a term of order lr^2 * wd.
    The state is ``EmptyState()``, or ``ScheduleState(count, EmptyState())`` for a learning-rate schedule.
    """
    _checks.non_negative("learning_rate", learning_rate)
    _checks.non_negative("weight_decay", weight_decay)

    def update_own(updates, state, params, lr):
        _require_params(params, "add_decoupled_weight_decay")
        check_float_leaves(updates, "updates")
        check_same_structure(params, updates, expected_name="params", got_name="updates")
        updates, params = as_arrays(updates), as_arrays(params)
        flags = _resolve_mask(mask, params)
        shrink = lr * weight_decay

        def decay(u, w, flag):
            # u' is formed as (decayed weight) - w rather than u - shrink * s: then w + u' rounds
            # to exactly the seed's two in-place steps whenever the step is small next to w.
            dtype = compute_dtype(u.dtype)
            w = w.astype(dtype)
            stepped = w + u.astype(dtype)
            return _where(flag, (stepped - shrink * stepped - w).astype(u.dtype), u)

        return tree_map(decay, updates, params, flags), state

    return with_learning_rate(learning_rate, EmptyState, init_empty_state, update_own)


def add_decayed_weights(weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """``u = g + weight_decay * w``, optax's ``add_decayed_weights``: on every leaf unless ``mask`` says
    otherwise (``None`` means all leaves, as in optax; not the default rule of the other blocks).

    Placed after the optimizer's direction and before the learning rate, it is torch ``AdamW``'s
    ``w *= 1 - lr * wd``.
    """
    return add_regularization("L2", weight_decay, mask=True if mask is None else mask)
