"""More building blocks, for the optimizers of torch.optim and optax beyond the seed's three.

Same conventions as :mod:`mpnn_opt.transforms`: ``g`` is the incoming update, ``t`` the 1-based step,
arithmetic in at least float32, updates keep their dtype, state keeps ``state_dtype`` (default: the
params' dtype).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import bias_correction, safe_epsilon, safe_increment, safe_sqrt, zero_count
from mpnn_opt._tree import tree_map, unzip
from mpnn_opt.base import GradientTransformation, Params
from mpnn_opt.regularization import add_regularization
from mpnn_opt._tree import check_state
from mpnn_opt.transforms import _check_updates, _init_state_tree, _one_buffer_block, per_compute_dtype
from mpnn_opt.transforms import _to_compute as _f

__all__ = [
    "TraceState", "trace", "add_decayed_weights", "CenteredRmsState", "scale_by_centered_rms",
    "AmsgradState", "scale_by_amsgrad", "NadamState", "scale_by_nadam", "RssState", "scale_by_rss",
    "LionState", "scale_by_lion",
]


def _state_tree(params: Params, state_dtype: Any | None, fill: float = 0.0) -> Any:
    zeros = _init_state_tree(params, state_dtype)
    return zeros if fill == 0.0 else tree_map(lambda z: jnp.full_like(z, fill), zeros)


def _check(updates: Any, state: Any, state_type: type, name: str) -> Any:
    check_state(state, state_type, state_type.__name__)
    return _check_updates(updates, getattr(state, name), f"the optimizer state ({name})")


class TraceState(NamedTuple):
    trace: Any  # momentum buffer, mirrors params


def trace(decay: float, nesterov: bool = False, *, state_dtype: Any | None = None) -> GradientTransformation:
    """Momentum with the learning rate outside the buffer (torch ``SGD``, dampening 0; optax ``trace``).

    ``b_t = decay * b_{t-1} + g_t``; ``u_t = g_t + decay * b_t`` if ``nesterov`` else ``b_t``.
    """
    _checks.in_unit_interval("decay", decay)
    _checks.flag("nesterov", nesterov)
    _checks.state_dtype(state_dtype)

    def step(g, b, _):
        b_new = decay * _f(b) + _f(g)
        out = _f(g) + decay * b_new if nesterov else b_new
        return out.astype(g.dtype), b_new.astype(b.dtype)

    return _one_buffer_block(TraceState, "trace", lambda params: _state_tree(params, state_dtype), step)


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """``u = g + weight_decay * w`` on every leaf (optax ``add_decayed_weights``): the coupled L2 penalty
    with no name mask. Placed after the optimizer's direction and before the learning rate, it is torch
    ``AdamW``'s ``w *= 1 - lr * wd``."""
    return add_regularization("L2", weight_decay, mask=True)


class CenteredRmsState(NamedTuple):
    mean_square: Any  # running mean of g^2
    mean: Any  # running mean of g


def scale_by_centered_rms(decay: float = 0.99, epsilon: float = 1e-8, *, state_dtype: Any | None = None) -> GradientTransformation:
    """Centered RMSprop (torch ``RMSprop(centered=True)``): ``s = d*s + (1-d)*g^2``, ``a = d*a + (1-d)*g``,
    ``u = g / (sqrt(s - a^2) + eps)`` (eps outside the root, as torch; optax's ``centered`` puts it inside)."""
    _checks.in_unit_interval("decay", decay)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def init_fn(params):
        return CenteredRmsState(_state_tree(params, state_dtype), _state_tree(params, state_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates = _check(updates, state, CenteredRmsState, "mean")

        def step(g, s, a):
            g32 = _f(g)
            s_new = decay * _f(s) + (1 - decay) * g32 * g32
            a_new = decay * _f(a) + (1 - decay) * g32
            # safe_sqrt: s - a^2 can round below 0, where a plain root gives NaN
            out = g32 / (safe_sqrt(s_new - a_new * a_new) + safe_epsilon(epsilon, g32.dtype))
            return out.astype(g.dtype), s_new.astype(s.dtype), a_new.astype(a.dtype)

        new_updates, squares, means = unzip(updates, tree_map(step, updates, state.mean_square, state.mean), 3)
        return new_updates, CenteredRmsState(squares, means)

    return GradientTransformation(init_fn, update_fn)


class AmsgradState(NamedTuple):
    count: jax.Array
    momentums: Any
    velocities: Any
    max_velocities: Any  # running max of v, torch's max_exp_avg_sq


def scale_by_amsgrad(beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, *, state_dtype: Any | None = None) -> GradientTransformation:
    """AMSGrad as torch ``Adam(amsgrad=True)``: ``v_max = max(v_max, v_t)``,
    ``u = (m_t / (1 - b1^t)) / (sqrt(v_max) / sqrt(1 - b2^t) + eps)``. (optax's ``amsgrad`` takes the max
    of the bias-corrected ``v``, which differs in the first steps.)"""
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def init_fn(params):
        return AmsgradState(zero_count(), *(_state_tree(params, state_dtype) for _ in range(3)))

    def update_fn(updates, state, params=None):
        del params
        updates = _check(updates, state, AmsgradState, "momentums")
        count = safe_increment(state.count)
        corrections = per_compute_dtype(updates, lambda dt: (bias_correction(beta1, count, dt), jnp.sqrt(bias_correction(beta2, count, dt))))

        def step(g, m, v, v_max):
            g32 = _f(g)
            bc1, sqrt_bc2 = corrections[g32.dtype]
            m_new = beta1 * _f(m) + (1 - beta1) * g32
            v_new = beta2 * _f(v) + (1 - beta2) * g32 * g32
            v_max_new = jnp.maximum(_f(v_max), v_new)
            out = (m_new / bc1) / (safe_sqrt(v_max_new) / sqrt_bc2 + safe_epsilon(epsilon, g32.dtype))
            return out.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype), v_max_new.astype(v_max.dtype)

        out = tree_map(step, updates, state.momentums, state.velocities, state.max_velocities)
        new_updates, m, v, v_max = unzip(updates, out, 4)
        return new_updates, AmsgradState(count, m, v, v_max)

    return GradientTransformation(init_fn, update_fn)


class NadamState(NamedTuple):
    count: jax.Array
    momentums: Any
    velocities: Any


def scale_by_nadam(beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, *, state_dtype: Any | None = None) -> GradientTransformation:
    """NAdam in optax's form (Dozat 2016 without momentum decay):
    ``m_hat = b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)``, ``u = m_hat / (sqrt(v_t / (1 - b2^t)) + eps)``.
    torch ``NAdam`` also decays the momentum coefficient (``momentum_decay=0.004``), so it differs."""
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def init_fn(params):
        return NadamState(zero_count(), _state_tree(params, state_dtype), _state_tree(params, state_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates = _check(updates, state, NadamState, "momentums")
        count = safe_increment(state.count)
        corrections = per_compute_dtype(
            updates,
            lambda dt: (bias_correction(beta1, count, dt), bias_correction(beta1, safe_increment(count), dt), bias_correction(beta2, count, dt)),
        )

        def step(g, m, v):
            g32 = _f(g)
            dtype = g32.dtype
            bc1, bc1_next, bc2 = corrections[dtype]
            m_new = beta1 * _f(m) + (1 - beta1) * g32
            v_new = beta2 * _f(v) + (1 - beta2) * g32 * g32
            m_hat = beta1 * m_new / bc1_next + (1 - beta1) * g32 / bc1
            out = m_hat / (safe_sqrt(v_new / bc2) + safe_epsilon(epsilon, dtype))
            return out.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        new_updates, m, v = unzip(updates, tree_map(step, updates, state.momentums, state.velocities), 3)
        return new_updates, NadamState(count, m, v)

    return GradientTransformation(init_fn, update_fn)


class RssState(NamedTuple):
    sum_of_squares: Any


def scale_by_rss(initial_accumulator_value: float = 0.0, epsilon: float = 1e-10, *, state_dtype: Any | None = None) -> GradientTransformation:
    """Adagrad as torch ``Adagrad`` (defaults 0 and 1e-10): ``s = s + g^2``, ``u = g / (sqrt(s) + eps)``.
    optax ``adagrad`` starts at 0.1 and puts eps inside the root."""
    _checks.non_negative("initial_accumulator_value", initial_accumulator_value)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def step(g, s, _):
        s_new = _f(s) + _f(g) * _f(g)
        return (_f(g) / (safe_sqrt(s_new) + safe_epsilon(epsilon, s_new.dtype))).astype(g.dtype), s_new.astype(s.dtype)

    return _one_buffer_block(RssState, "sum_of_squares", lambda params: _state_tree(params, state_dtype, initial_accumulator_value), step)


class LionState(NamedTuple):
    momentums: Any


def scale_by_lion(beta1: float = 0.9, beta2: float = 0.99, *, state_dtype: Any | None = None) -> GradientTransformation:
    """Lion (Chen et al. 2023; optax ``scale_by_lion``): ``u = sign(b1 * m + (1 - b1) * g)``,
    then ``m = b2 * m + (1 - b2) * g``."""
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.state_dtype(state_dtype)

    def step(g, m, _):
        out = jnp.sign(beta1 * _f(m) + (1 - beta1) * _f(g))
        return out.astype(g.dtype), (beta2 * _f(m) + (1 - beta2) * _f(g)).astype(m.dtype)

    return _one_buffer_block(LionState, "momentums", lambda params: _state_tree(params, state_dtype), step)
