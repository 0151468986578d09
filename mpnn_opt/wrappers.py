"""Wrappers around a whole optimizer: skip non-finite steps, and keep an EMA of the params."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import bias_correction, safe_increment, zero_count
from mpnn_opt._tree import check_same_structure, tree_map
from mpnn_opt.base import GradientTransformation, OptState, Params

__all__ = ["SkipNonFiniteState", "skip_non_finite", "ParamsEma", "params_ema_init", "params_ema_update", "ema_params"]


class SkipNonFiniteState(NamedTuple):
    inner_state: OptState
    skipped: jax.Array  # int32, how many steps were skipped so far
    last_finite: jax.Array  # bool, whether the last step's updates were all finite


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def skip_non_finite(inner: GradientTransformation) -> GradientTransformation:
    """Runs ``inner`` only on steps whose incoming updates are all finite.

    On a step with any NaN or infinity the updates are zeros, ``inner``'s state is left exactly as it
    was, and ``skipped`` counts up; no value leaves the device (the choice is a ``jnp.where``, so it
    needs no host synchronization). optax's ``apply_if_finite`` does the same and also gives up after
    a number of consecutive bad steps; this one never gives up.
    """

    def init_fn(params: Params) -> SkipNonFiniteState:
        return SkipNonFiniteState(inner.init(params), zero_count(), jnp.asarray(True))

    def update_fn(updates, state, params=None):
        finite = _all_finite(updates)
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        pick = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        inner_state = jax.tree.map(pick, new_inner, state.inner_state)
        new_updates = tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        skipped = jnp.where(finite, state.skipped, safe_increment(state.skipped))
        return new_updates, SkipNonFiniteState(inner_state, skipped, finite)

    return GradientTransformation(init_fn, update_fn)


class ParamsEma(NamedTuple):
    count: jax.Array  # int32, updates folded in
    average: Any  # the (biased) running average, mirrors params


def params_ema_init(params: Params) -> ParamsEma:
    """A fresh EMA of ``params`` (zeros, step 0), in float32 or wider."""
    return ParamsEma(zero_count(), tree_map(lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(p.dtype, jnp.float32)), params))


def params_ema_update(ema: ParamsEma, params: Params, decay: float = 0.999) -> ParamsEma:
    """``a_t = decay * a_{t-1} + (1 - decay) * p_t``: call after each optimizer step with the new params."""
    _checks.in_unit_interval("decay", decay)
    check_same_structure(ema.average, params, expected_name="the EMA", got_name="params")
    average = tree_map(lambda a, p: decay * a + (1 - decay) * p.astype(a.dtype), ema.average, params)
    return ParamsEma(safe_increment(ema.count), average)


def ema_params(ema: ParamsEma, decay: float = 0.999, debias: bool = True, like: Params | None = None) -> Params:
    """The averaged params for evaluation: ``a_t / (1 - decay^t)`` if ``debias`` (optax ``ema``'s
    ``debias=True``), else ``a_t``; cast to the dtypes of ``like`` when given."""
    correction = bias_correction(decay, ema.count) if debias else 1.0
    averaged = tree_map(lambda a: a / jnp.where(ema.count > 0, correction, 1.0), ema.average)
    if like is None:
        return averaged
    return tree_map(lambda a, p: a.astype(p.dtype), averaged, like)
