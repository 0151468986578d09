"""Wrappers around a whole optimizer: skip non-finite steps, and keep an EMA of the params."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import bias_correction, safe_increment, zero_count
from mpnn_opt._tree import check_same_structure, check_state, compute_dtype, tree_map
from mpnn_opt.base import AnyTransformation, GradientTransformation, OptState, Params, with_extra_args

__all__ = [
    "SkipNonFiniteState",
    "skip_non_finite",
    "ParamsEmaState",
    "params_ema_init",
    "params_ema_update",
    "ema_params",
]


class SkipNonFiniteState(NamedTuple):
    """The state of :func:`skip_non_finite`."""

    inner_state: OptState
    skipped: jax.Array  # int32, how many steps were skipped so far
    last_finite: jax.Array  # bool, whether the last step's updates were all finite


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def skip_non_finite(inner: AnyTransformation) -> GradientTransformation:
    """Runs ``inner`` only on steps whose incoming updates are all finite.

    On a step with any NaN or infinity the updates are zeros, ``inner``'s state is left exactly as it
    was, and ``skipped`` counts up; no value leaves the device (the choice is a ``jnp.where``, so it
    needs no host synchronization). optax's ``apply_if_finite`` does the same and also gives up after
    a number of consecutive bad steps; this one never gives up.
    """

    def init_fn(params: Params) -> SkipNonFiniteState:
        return SkipNonFiniteState(inner.init(params), zero_count(), jnp.asarray(True))

    inner = with_extra_args(inner)

    def update_fn(updates, state, params=None, **extra_args):
        check_state(state, SkipNonFiniteState, "skip_non_finite")
        finite = _all_finite(updates)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        pick = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        inner_state = jax.tree.map(pick, new_inner, state.inner_state)
        new_updates = tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        skipped = jnp.where(finite, state.skipped, safe_increment(state.skipped))
        return new_updates, SkipNonFiniteState(inner_state, skipped, finite)

    return GradientTransformation(init_fn, update_fn)


class ParamsEmaState(NamedTuple):
    """An exponential moving average of the params: :func:`params_ema_init` makes one."""

    count: jax.Array  # int32, updates folded in
    average: Any  # the (biased) running average, mirrors params
    decay: jax.Array  # the decay given to params_ema_init, read by both params_ema_update and ema_params


def params_ema_init(params: Params, decay: float = 0.999) -> ParamsEmaState:
    """A fresh EMA of ``params`` (zeros, step 0, float32 or wider) that averages with ``decay``.

    The decay is given here once and kept in the EMA, so the update and the debiased read cannot
    disagree on it (a decay of 0.5 for the updates and the default 0.999 for the read would give a
    value 290x off after 3 steps).
    """
    _checks.in_unit_interval("decay", decay)
    average = tree_map(lambda p: jnp.zeros(jnp.shape(p), compute_dtype(jnp.result_type(p))), params)
    return ParamsEmaState(zero_count(), average, jnp.asarray(decay))


def params_ema_update(ema: ParamsEmaState, params: Params) -> ParamsEmaState:
    """``a_t = decay * a_{t-1} + (1 - decay) * p_t`` with the EMA's decay: call after each step with the new params."""
    check_state(ema, ParamsEmaState, "params_ema_update")
    check_same_structure(ema.average, params, expected_name="the EMA", got_name="params")
    decay = ema.decay
    average = tree_map(
        lambda a, p: (decay * a + (1 - decay) * jnp.asarray(p).astype(a.dtype)).astype(a.dtype), ema.average, params
    )
    return ParamsEmaState(safe_increment(ema.count), average, decay)


def ema_params(ema: ParamsEmaState, debias: bool = True, like: Params | None = None) -> Params:
    """The averaged params for evaluation: ``a_t / (1 - decay^t)`` if ``debias`` (optax ``ema``'s
    ``debias=True``), else ``a_t``; cast to the dtypes of ``like`` when given. ``decay`` is the EMA's own."""
    check_state(ema, ParamsEmaState, "ema_params")
    _checks.flag("debias", debias)
    correction = bias_correction(ema.decay, ema.count, ema.decay.dtype) if debias else 1.0
    averaged = tree_map(lambda a: a / jnp.where(ema.count > 0, correction, 1.0), ema.average)
    if like is None:
        return averaged
    return tree_map(lambda a, p: a.astype(p.dtype), averaged, like)
