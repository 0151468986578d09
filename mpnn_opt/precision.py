"""Training bfloat16 parameters without stalling: float32 master weights, or stochastic rounding.

A bfloat16 number keeps 8 significant bits, so an update smaller than half the spacing between
neighbours (``2^-9 |p|``) rounds away: with Adam at ``lr = 1e-4`` on parameters of magnitude ~1
(spacing ``2^-7``), nearly every step is lost and the loss stops moving while the float32 run
keeps falling. Two remedies (see ``docs/low-precision.md``):

* :func:`master_weights` wraps any transformation and keeps a float32 copy of the params in its
  state; the small steps accumulate there, and the bf16 params follow its rounded value.
* :func:`apply_updates_stochastic` adds the updates with stochastic rounding: the sum is rounded
  up or down at random with the probabilities that make its expected value the exact sum, so
  small steps survive on average. No extra memory; it needs a PRNG key per step.

And for the state: :func:`scale_by_adam_8bit` keeps Adam's two moments in 8 bits per value with a
float32 scale per block of 256 (about 2.03 bytes a parameter instead of 8).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import bias_correction, safe_epsilon, safe_increment, safe_sqrt, zero_count
from mpnn_opt._tree import (
    as_arrays,
    check_float_leaves,
    check_same_structure,
    check_state,
    compute_dtype,
    tree_map,
    unzip,
)
from mpnn_opt.base import AnyTransformation, GradientTransformation, Params, Updates, apply_updates, with_extra_args

__all__ = [
    "MasterWeightsState",
    "master_weights",
    "apply_updates_stochastic",
    "QuantizedBlocks",
    "ScaleByAdam8bitState",
    "scale_by_adam_8bit",
]


class MasterWeightsState(NamedTuple):
    """The state of :func:`master_weights`."""

    master: Any  # float32 copies of the params (float64 for float64 params), mirrors params
    inner_state: Any  # the wrapped transformation's state, made from and updated on the master copies


def _widen(tree: Any) -> Any:
    return tree_map(lambda x: x.astype(compute_dtype(x.dtype)), as_arrays(tree))


def master_weights(inner: AnyTransformation) -> GradientTransformation:
    """Runs ``inner`` on float32 master copies of the params, and moves the params to the rounded masters.

    With ``P`` the params' dtype (e.g. bfloat16) and ``M`` the master copy (float32; float64 for
    float64 params), each step is::

        M     = where(round_P(M) == p, M, p)             # re-synced where the params were changed outside
        u_M, s = inner.update(float32(g), s, M)
        M_new = M + u_M                                  # the master takes every step, however small
        u     = round_P(M_new) - p                       # returned, in M's dtype (float32)

    so ``apply_updates(params, u)`` gives exactly ``round_P(M_new)`` (the float32 difference of two
    bfloat16 numbers is exact unless one is over 2^15 times the other, and even then the sum rounds
    back to ``round_P(M_new)`` unless a parameter shrinks 2^15-fold in one step). ``inner`` sees only
    float32 arrays: its state defaults to float32 too. The master costs 4 bytes per parameter (on top
    of bf16's 2); float32 params get a copy as well, so wrap only the narrow ones (with
    :func:`mpnn_opt.partition`) in a mixed tree. ``update`` requires ``params``.

    The re-sync line means that params loaded from elsewhere, or edited between steps, are taken
    as they are (a parameter whose master rounds to it keeps its master's extra bits).
    """
    inner = with_extra_args(inner)

    def init_fn(params: Params) -> MasterWeightsState:
        check_float_leaves(params, "params")
        master = _widen(params)
        return MasterWeightsState(master=master, inner_state=inner.init(master))

    def update_fn(updates: Updates, state: MasterWeightsState, params: Params | None = None, **extra_args: Any):
        check_state(state, MasterWeightsState, "master_weights")
        if params is None:
            raise ValueError("master_weights: update needs params (the current low-precision params)")
        check_float_leaves(updates, "updates")
        check_same_structure(state.master, updates, expected_name="the optimizer state (master)", got_name="updates")
        check_same_structure(state.master, params, expected_name="the optimizer state (master)", got_name="params")
        params = as_arrays(params)
        master = tree_map(lambda m, p: jnp.where(m.astype(p.dtype) == p, m, p.astype(m.dtype)), state.master, params)
        master_updates, inner_state = inner.update(_widen(updates), state.inner_state, master, **extra_args)
        new_master = apply_updates(master, master_updates)
        out = tree_map(lambda m, p: m.astype(p.dtype).astype(m.dtype) - p.astype(m.dtype), new_master, params)
        return out, MasterWeightsState(master=new_master, inner_state=inner_state)

    return GradientTransformation(init_fn, update_fn)


def _stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    """``x`` rounded to one of its two ``dtype`` neighbours, the upper one with probability
    ``(x - lower) / (upper - lower)``: unbiased, ``E[result] = x``. Exact values, NaN and +-inf stay."""
    nearest = x.astype(dtype)
    up = nearest.astype(x.dtype) >= x
    other = jnp.nextafter(nearest, jnp.where(up, -jnp.inf, jnp.inf).astype(dtype))
    lower, upper = jnp.where(up, other, nearest), jnp.where(up, nearest, other)
    lower_x, upper_x = lower.astype(x.dtype), upper.astype(x.dtype)
    probability_up = (x - lower_x) / (upper_x - lower_x)
    rounded = jnp.where(jax.random.uniform(key, x.shape, x.dtype) < probability_up, upper, lower)
    return jnp.where(jnp.isfinite(x) & jnp.isfinite(nearest.astype(x.dtype)), rounded, nearest)


def apply_updates_stochastic(params: Params, updates: Updates, key: jax.Array) -> Params:
    """``params + updates``, stochastically rounded to each narrow (under 32-bit) parameter's dtype.

    The sum is computed in float32 (``s = float32(p) + float32(u)``), then rounded to the
    parameter's dtype up or down at random: to the upper neighbour ``hi`` with probability
    ``(s - lo) / (hi - lo)``, else to the lower ``lo``, so that ``E[result] = s`` and an update far
    smaller than the spacing still moves the parameter on average. float32 and float64 params are
    added as :func:`mpnn_opt.apply_updates` adds them. ``key`` is a ``jax.random`` key, split once per
    leaf: the same key gives the same result; use a fresh one each step (``jax.random.fold_in(key, step)``).
    A sum beyond the dtype's largest finite value gives that value, not inf; NaN and inf pass through.
    """
    check_same_structure(params, updates, expected_name="params", got_name="updates")
    check_float_leaves(params, "params")
    check_float_leaves(updates, "updates")
    leaves, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None)
    keys = list(jax.random.split(key, max(len(leaves), 1)))
    key_tree = jax.tree.unflatten(treedef, keys[: len(leaves)])

    def add(p, u, leaf_key):
        p, u = jnp.asarray(p), jnp.asarray(u)
        if p.dtype.itemsize >= 4:
            return apply_updates(p, u)
        total = p.astype(jnp.float32) + u.astype(jnp.float32)
        return _stochastic_round(total, p.dtype, leaf_key)

    return tree_map(add, params, updates, key_tree)


BLOCK_SIZE = 256


class QuantizedBlocks(NamedTuple):
    """One tensor in 8 bits: the flattened values, zero-padded to whole blocks of 256, one float32 scale a block."""

    values: jax.Array  # (blocks, 256) int8 (signed, first moment) or uint8 (square root of the second moment)
    scales: jax.Array  # (blocks,) float32, each block's largest magnitude


def _blocks(x: jax.Array) -> jax.Array:
    flat = x.reshape(-1)
    return jnp.pad(flat, (0, -flat.size % BLOCK_SIZE)).reshape(-1, BLOCK_SIZE)


def _unblock(blocks: jax.Array, like: jax.Array) -> jax.Array:
    return blocks.reshape(-1)[: like.size].reshape(like.shape)


def _quantize(x: jax.Array, signed: bool) -> QuantizedBlocks:
    blocks = _blocks(x)
    scales = jnp.max(jnp.abs(blocks), axis=1)
    levels = 127.0 if signed else 255.0
    ratio = blocks / jnp.where(scales > 0, scales, 1.0)[:, None] * levels
    # nearest level; a nonzero sqrt(v) reads back as at least one level, never 0 (rounding up would
    # ratchet: v's decay per step, 0.05% at beta2 = 0.999, is far below one level)
    q = jnp.round(ratio) if signed else jnp.where(ratio > 0, jnp.maximum(jnp.round(ratio), 1.0), 0.0)
    return QuantizedBlocks(q.astype(jnp.int8 if signed else jnp.uint8), scales)


def _dequantize(q: QuantizedBlocks, like: jax.Array, signed: bool) -> jax.Array:
    levels = 127.0 if signed else 255.0
    return _unblock(q.values.astype(jnp.float32) * (q.scales / levels)[:, None], like)


class ScaleByAdam8bitState(NamedTuple):
    """The state of :func:`scale_by_adam_8bit`."""

    count: jax.Array  # int32 steps taken
    momentums: Any  # QuantizedBlocks of m (int8), mirrors params
    root_velocities: Any  # QuantizedBlocks of sqrt(v) (uint8), mirrors params


def scale_by_adam_8bit(beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8) -> GradientTransformation:
    """:func:`mpnn_opt.transforms.scale_by_adam` with both moments stored in 8 bits, block-wise.

    Each tensor is flattened and cut into blocks of 256 values (the last one zero-padded), each with
    a float32 scale ``s`` (the block's largest magnitude):

    * ``m`` as int8: ``q = round(127 * m / s)``, read back as ``m = q * s / 127``;
    * ``v`` through its square root, as uint8: ``q = max(round(255 * sqrt(v) / s), 1)`` where ``v > 0``
      (``q = 0`` where ``v = 0``), with ``s = max sqrt(v)``, read back as ``v = (q * s / 255)^2``. The
      root halves v's dynamic range (a block spans 255 levels of sqrt(v), i.e. 65,025 of v), and the
      one-level floor means a nonzero ``v`` never reads back as 0, so ``m / sqrt(v)`` cannot blow up:
      the smallest values are over-estimated, which only shortens their step. Rounding every value up
      instead would ratchet: ``v``'s decay per step (0.05% at ``beta2 = 0.999``) is below one level.

    Each step dequantizes both moments, runs Adam's recursion and direction in float32 (the direction
    uses the float32 ``m_t``, ``v_t``, before they are requantized) and requantizes. The state is
    ``1 + 1`` bytes a value plus ``2 * 4 / 256`` for the scales: 2.03 bytes a parameter for tensors of
    a multiple of 256 values (padding costs more on small ones), against 8 for float32 moments.
    """
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.positive("epsilon", epsilon)

    def init_fn(params: Params) -> ScaleByAdam8bitState:
        check_float_leaves(params, "params")
        zeros = tree_map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        return ScaleByAdam8bitState(
            zero_count(), tree_map(lambda z: _quantize(z, True), zeros), tree_map(lambda z: _quantize(z, False), zeros)
        )

    def update_fn(updates: Updates, state: ScaleByAdam8bitState, params: Params | None = None):
        del params
        check_state(state, ScaleByAdam8bitState, "scale_by_adam_8bit")
        check_float_leaves(updates, "updates")
        updates = as_arrays(updates)
        count = safe_increment(state.count)
        bc1 = bias_correction(beta1, count, jnp.float32)
        sqrt_bc2 = jnp.sqrt(bias_correction(beta2, count, jnp.float32))

        def step(g, m_q, r_q):
            g32 = g.astype(jnp.float32)
            m = beta1 * _dequantize(m_q, g32, True) + (1 - beta1) * g32
            v = beta2 * jnp.square(_dequantize(r_q, g32, False)) + (1 - beta2) * jnp.square(g32)
            direction = (m / bc1) / (safe_sqrt(v) / sqrt_bc2 + safe_epsilon(epsilon, jnp.float32))
            return direction.astype(g.dtype), _quantize(m, True), _quantize(safe_sqrt(v), False)

        out = tree_map(step, updates, state.momentums, state.root_velocities)
        new_updates, momentums, roots = unzip(updates, out, 3)
        return new_updates, ScaleByAdam8bitState(count, momentums, roots)

    return GradientTransformation(init_fn, update_fn)
