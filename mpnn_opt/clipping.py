"""Gradient clipping: by value, by each leaf's norm, and by the global norm of the whole tree.

All three are stateless (:class:`~mpnn_opt.base.EmptyState`). Only global-norm clipping needs a value
from every leaf, so on sharded params it is the one that adds a cross-device reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import safe_sqrt
from mpnn_opt._tree import as_arrays, check_float_leaves, compute_dtype, tree_map
from mpnn_opt.base import GradientTransformation, init_empty_state

__all__ = ["clip", "clip_by_leaf_norm", "clip_by_global_norm", "global_norm"]


def _stateless(update) -> GradientTransformation:
    def update_fn(updates, state, params=None):
        del params
        check_float_leaves(updates, "updates")
        return update(as_arrays(updates)), state

    return GradientTransformation(init_empty_state, update_fn)


def _norm_parts(leaves: list) -> tuple[jax.Array, jax.Array]:
    """``(m, r)`` with the L2 norm of all ``leaves`` equal to ``m * r``, without overflow.

    Usually ``m = 1`` and ``r = sqrt(sum g^2)``. When that sum overflows (a finite gradient of 1e20
    in float32), ``m = 2^k`` (``k = 5/8`` of the dtype's largest exponent: 80 for float32) and ``r``
    is the norm of ``g / m``, so a huge gradient is clipped along its own direction instead of to
    zeros. Dividing by a power of two is exact and its reciprocal is a normal number (XLA:CPU
    multiplies by the reciprocal, and flushes subnormals to 0). The rescaled pass runs only then (a
    ``lax.cond``).
    The root is :func:`safe_sqrt`, so a derivative taken through clipping is finite at a zero gradient.
    """
    dtype = jnp.result_type(*(compute_dtype(leaf.dtype) for leaf in leaves)) if leaves else jnp.float32
    wide = [leaf.astype(dtype) for leaf in leaves]
    sum_of_squares = sum((jnp.sum(x * x) for x in wide), jnp.zeros([], dtype))

    def plain(_):
        return jnp.ones([], dtype), safe_sqrt(sum_of_squares)

    def rescaled(_):
        # the barrier keeps XLA from folding (g / m)^2 into g^2 * (1 / m^2), whose constant flushes to 0
        m = jax.lax.optimization_barrier(jnp.asarray(2.0 ** (jnp.finfo(dtype).maxexp * 5 // 8), dtype))
        return m, safe_sqrt(sum((jnp.sum(jnp.square(x / m)) for x in wide), jnp.zeros([], dtype)))

    if not leaves:
        return plain(None)
    return jax.lax.cond(jnp.isfinite(sum_of_squares), plain, rescaled, None)


def _scaled(g: jax.Array, parts: tuple[jax.Array, jax.Array], max_norm: float) -> jax.Array:
    # g * max_norm / (m * r) where m * r > max_norm, computed as (g / m) * (max_norm / r): a norm beyond
    # the dtype's range (m * r = inf) still gives the direction; the inner where keeps r = 0 from dividing
    m, r = parts
    clipped = m * r > max_norm
    wide = g.astype(compute_dtype(g.dtype))
    return jnp.where(clipped, (wide / m) * (max_norm / jnp.where(clipped, r, 1)), wide).astype(g.dtype)


def clip(max_delta: float) -> GradientTransformation:
    """``g' = clip(g, -max_delta, max_delta)`` element-wise (optax ``clip``, torch ``clip_grad_value_``)."""
    _checks.non_negative("max_delta", max_delta)
    return _stateless(lambda updates: tree_map(lambda g: jnp.clip(g, -max_delta, max_delta), updates))


def clip_by_leaf_norm(max_norm: float) -> GradientTransformation:
    """Each leaf separately: ``g' = g * max_norm / ||g||`` where ``||g|| > max_norm``, else ``g``.

    optax's ``clip_by_block_rms`` scales by the RMS instead of the L2 norm.
    """
    _checks.positive("max_norm", max_norm)
    return _stateless(lambda updates: tree_map(lambda g: _scaled(g, _norm_parts([g]), max_norm), updates))


def global_norm(updates) -> jax.Array:
    """``sqrt(sum over leaves of sum(g^2))``, computed in at least float32 without intermediate overflow."""
    m, r = _norm_parts(jax.tree.leaves(as_arrays(updates)))
    return m * r


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """``g' = g * max_norm / N`` for every leaf where ``N = global_norm(g) > max_norm``, else ``g``.

    As optax ``clip_by_global_norm`` and torch ``clip_grad_norm_`` (which adds 1e-6 to the norm).
    """
    _checks.positive("max_norm", max_norm)

    def update(updates):
        parts = _norm_parts(jax.tree.leaves(updates))
        return tree_map(lambda g: _scaled(g, parts, max_norm), updates)

    return _stateless(update)
