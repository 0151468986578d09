"""Gradient clipping: by value, by each leaf's norm, and by the global norm of the whole tree.

All three are stateless (:class:`~mpnn_opt.base.EmptyState`). Only global-norm clipping needs a value
from every leaf, so on sharded params it is the one that adds a cross-device reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._tree import check_float_leaves, compute_dtype, tree_map
from mpnn_opt.base import GradientTransformation, init_empty_state

__all__ = ["clip", "clip_by_leaf_norm", "clip_by_global_norm", "global_norm"]


def _stateless(update) -> GradientTransformation:
    def update_fn(updates, state, params=None):
        del params
        check_float_leaves(updates, "updates")
        return update(updates), state

    return GradientTransformation(init_empty_state, update_fn)


def _norm(x: jax.Array) -> jax.Array:
    x = x.astype(compute_dtype(x.dtype))
    return jnp.sqrt(jnp.sum(x * x))


def _scaled(g: jax.Array, norm: jax.Array, max_norm: float) -> jax.Array:
    # g * max_norm / norm where norm > max_norm; the where keeps a zero norm from dividing
    scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > max_norm, norm, 1.0), 1.0)
    return (g.astype(compute_dtype(g.dtype)) * scale).astype(g.dtype)


def clip(max_delta: float) -> GradientTransformation:
    """``g' = clip(g, -max_delta, max_delta)`` element-wise (optax ``clip``, torch ``clip_grad_value_``)."""
    _checks.non_negative("max_delta", max_delta)
    return _stateless(lambda updates: tree_map(lambda g: jnp.clip(g, -max_delta, max_delta), updates))


def clip_by_leaf_norm(max_norm: float) -> GradientTransformation:
    """Each leaf separately: ``g' = g * max_norm / ||g||`` where ``||g|| > max_norm``, else ``g``.

    optax's ``clip_by_block_rms`` scales by the RMS instead of the L2 norm.
    """
    _checks.positive("max_norm", max_norm)
    return _stateless(lambda updates: tree_map(lambda g: _scaled(g, _norm(g), max_norm), updates))


def global_norm(updates) -> jax.Array:
    """``sqrt(sum over leaves of sum(g^2))``, computed in at least float32."""
    return jnp.sqrt(sum((jnp.square(_norm(leaf)) for leaf in jax.tree.leaves(updates)), jnp.float32(0.0)))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """``g' = g * max_norm / N`` for every leaf where ``N = global_norm(g) > max_norm``, else ``g``.

    As optax ``clip_by_global_norm`` and torch ``clip_grad_norm_`` (which adds 1e-6 to the norm).
    """
    _checks.positive("max_norm", max_norm)

    def update(updates):
        norm = global_norm(updates)
        return tree_map(lambda g: _scaled(g, norm, max_norm), updates)

    return _stateless(update)
