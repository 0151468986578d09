"""Building blocks: small gradient transformations that the aliases chain together.

Each block states its exact recursion. ``g`` is the incoming update (the gradient, possibly
already transformed), ``t`` the 1-based step number. Arithmetic runs in at least float32; the
outgoing updates keep the incoming updates' dtype and the state keeps ``state_dtype`` (default:
float32, or float64 for float64 params). The Adam family (:func:`scale_by_adam`,
:func:`scale_by_torch_amsgrad`, :func:`scale_by_nadam`) also takes ``mu_dtype`` and ``nu_dtype``,
the dtypes of the first and second moments (each defaults to ``state_dtype``): ``mu_dtype=jnp.bfloat16``
as optax's ``adam(mu_dtype=...)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import bias_correction, safe_epsilon, safe_increment, safe_sqrt, value_at, zero_count
from mpnn_opt._tree import (
    as_arrays,
    check_float_leaves,
    check_same_structure,
    check_state,
    compute_dtype,
    tree_map,
    unzip,
    zeros_like_tree,
)
from mpnn_opt.base import EmptyState, GradientTransformation, Params, ScalarOrSchedule, Updates

__all__ = [
    "ScheduleState",
    "with_learning_rate",
    "scale_by_learning_rate",
    "MomentumVelocityState",
    "momentum_velocity",
    "ScaleByRmsState",
    "scale_by_rms",
    "RmsStepState",
    "rms_step",
    "ScaleByAdamState",
    "scale_by_adam",
    "TraceState",
    "trace",
    "ScaleByCenteredRmsState",
    "scale_by_centered_rms",
    "ScaleByTorchAmsgradState",
    "scale_by_torch_amsgrad",
    "ScaleByNadamState",
    "scale_by_nadam",
    "ScaleByTorchAdagradState",
    "scale_by_torch_adagrad",
    "ScaleByLionState",
    "scale_by_lion",
]


def _check_updates(updates: Updates, reference: Any, reference_name: str) -> Updates:
    """Checks ``updates`` against the state's tree; returns them with every leaf a JAX array."""
    check_float_leaves(updates, "updates")
    check_same_structure(reference, updates, expected_name=reference_name, got_name="updates")
    return as_arrays(updates)


def _init_state_tree(params: Params, state_dtype: Any | None) -> Any:
    check_float_leaves(params, "params")
    return zeros_like_tree(params, state_dtype)


def _moment_dtypes(state_dtype: Any | None, mu_dtype: Any | None, nu_dtype: Any | None) -> tuple[Any, Any]:
    """Checks the three dtype arguments of an Adam-family block; returns ``(mu dtype, nu dtype)``.

    A per-field dtype left at None falls back to ``state_dtype`` (itself None: each parameter's
    compute dtype, see :func:`mpnn_opt._tree.zeros_like_tree`).
    """
    _checks.state_dtype(state_dtype)
    _checks.state_dtype(mu_dtype, "mu_dtype")
    _checks.state_dtype(nu_dtype, "nu_dtype")
    return (state_dtype if mu_dtype is None else mu_dtype), (state_dtype if nu_dtype is None else nu_dtype)


def per_compute_dtype(updates: Updates, scalars: Any) -> dict:
    """``{dtype: scalars(dtype)}`` for each compute dtype among the updates' leaves.

    Step-count scalars (bias corrections) are computed once per dtype, outside the per-leaf loops:
    in the compute dtype, so float64 Adam (under ``jax_enable_x64``) stays float64-accurate, and
    once, so that XLA does not fuse them into each loop (where a vectorized ``expm1`` can round
    differently from leaf to leaf).
    """
    dtypes = {compute_dtype(jnp.result_type(leaf)) for leaf in jax.tree.leaves(updates)}
    return {dtype: scalars(dtype) for dtype in dtypes}


def _to_compute(x: jax.Array) -> jax.Array:
    return x.astype(compute_dtype(x.dtype))


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Turns a direction into a descent step: ``u = -lr_t * g``.

    ``learning_rate`` is a float or a schedule ``fn(count) -> value`` read at the 0-based step count.
    The state is ``EmptyState()`` for a constant rate and ``ScheduleState(count, EmptyState())`` for a
    schedule, as optax keeps a count only for a schedule. Same as optax's ``scale_by_learning_rate``
    (which flips the sign the same way).
    """
    _checks.non_negative("learning_rate", learning_rate)

    def init_own(params: Params) -> EmptyState:
        check_float_leaves(params, "params")
        return EmptyState()

    def update_own(updates, state, params, lr):
        del params
        check_float_leaves(updates, "updates")
        return tree_map(lambda g: (-lr * _to_compute(g)).astype(g.dtype), as_arrays(updates)), state

    return with_learning_rate(learning_rate, EmptyState, init_own, update_own)


class ScheduleState(NamedTuple):
    """A block's own state with the step count its learning-rate schedule is read at (:func:`with_learning_rate`)."""

    count: jax.Array  # int32 steps taken; the learning-rate schedule is read at this value
    inner_state: Any  # the block's own state, as it is with a constant rate


def with_learning_rate(
    learning_rate: ScalarOrSchedule, state_type: type, init_own, update_own
) -> GradientTransformation:
    """A block that reads a learning rate at each step: ``update_own(updates, own_state, params, lr)``.

    With a constant rate the state is the block's own (``state_type``), with no counter (a
    placeholder ``count=None`` would make ``optax.tree_utils.tree_get(state, 'count')`` ambiguous);
    with a schedule it is ``ScheduleState(count, own state)`` and ``lr`` is the schedule at ``count``.
    """
    scheduled = callable(learning_rate)
    name = state_type.__name__

    def init_fn(params: Params):
        own = init_own(params)
        return ScheduleState(zero_count(), own) if scheduled else own

    def update_fn(updates, state, params=None):
        if scheduled:
            check_state(state, ScheduleState, f"{name} with a learning-rate schedule")
            check_state(state.inner_state, state_type, name)
            updates, own = update_own(updates, state.inner_state, params, value_at(learning_rate, state.count))
            return updates, ScheduleState(safe_increment(state.count), own)
        if isinstance(state, ScheduleState):
            raise TypeError(
                f"{name}: the state was made for a learning-rate schedule, but this transform has a constant rate"
            )
        check_state(state, state_type, name)
        return update_own(updates, state, params, learning_rate)

    return GradientTransformation(init_fn, update_fn)


class MomentumVelocityState(NamedTuple):
    """The state of :func:`momentum_velocity` (constant learning rate)."""

    velocities: Any  # v, mirrors params


def momentum_velocity(
    learning_rate: ScalarOrSchedule, momentum: float, *, state_dtype: Any | None = None
) -> GradientTransformation:
    """Momentum in the seed's form, with the learning rate inside the buffer.

    ``v_t = momentum * v_{t-1} - lr_t * g_t``, ``u_t = v_t``, with ``v_0 = 0``.

    At a constant learning rate this equals optax ``sgd(lr, momentum)`` and torch ``SGD``
    (dampening 0), which keep ``lr`` outside the buffer (``u = -lr * trace``). They differ once the
    learning rate changes: here past velocities keep the old rate.
    """
    _checks.non_negative("learning_rate", learning_rate)
    _checks.in_unit_interval("momentum", momentum)
    _checks.state_dtype(state_dtype)

    def step(g, v, lr):
        v_new = momentum * _to_compute(v) - lr * _to_compute(g)
        return v_new.astype(g.dtype), v_new.astype(v.dtype)

    return _one_buffer_block(
        MomentumVelocityState, "velocities", lambda params: _init_state_tree(params, state_dtype), step, learning_rate
    )


def _one_buffer_block(
    state_type, buffer_name: str, init_buffer, step, learning_rate: ScalarOrSchedule | None = None
) -> GradientTransformation:
    """A block with one buffer per parameter: ``step(g, buffer, lr) -> (u, new buffer)`` on each leaf.

    The state is ``state_type(<buffer_name>=init_buffer(params))``; with a ``learning_rate`` it goes
    through :func:`with_learning_rate` (a :class:`ScheduleState` around it for a schedule) and ``lr``
    is the rate at this step; without one, ``lr`` is None.
    """

    def init_own(params: Params):
        return state_type(**{buffer_name: init_buffer(params)})

    def update_own(updates, state, params, lr):
        del params
        buffer = getattr(state, buffer_name)
        updates = _check_updates(updates, buffer, f"the optimizer state ({buffer_name})")
        new_updates, new_buffer = unzip(updates, tree_map(lambda g, b: step(g, b, lr), updates, buffer), 2)
        return new_updates, state_type(**{buffer_name: new_buffer})

    if learning_rate is not None:
        return with_learning_rate(learning_rate, state_type, init_own, update_own)

    def update_fn(updates, state, params=None):
        del params
        check_state(state, state_type, state_type.__name__)
        return update_own(updates, state, None, None)

    return GradientTransformation(init_own, update_fn)


class ScaleByRmsState(NamedTuple):
    """The state of :func:`scale_by_rms`."""

    cache: Any  # running mean of g^2, mirrors params


def scale_by_rms(
    decay_rate: float = 0.9, epsilon: float = 1e-8, *, eps_in_sqrt: bool = True, state_dtype: Any | None = None
) -> GradientTransformation:
    """Divides by the root of a running mean of squared updates: optax's ``scale_by_rms``.

    ``c_t = decay * c_{t-1} + (1 - decay) * g_t^2``, ``c_0 = 0``, and ``u_t = g_t / sqrt(c_t + eps)``
    (the default, as optax's ``scale_by_rms`` and Keras ``RMSprop``), or with ``eps_in_sqrt=False``
    ``u_t = g_t / (sqrt(c_t) + eps)`` (the seed's and torch's ``RMSprop``). optax's ``initial_scale``
    and ``bias_correction`` are not offered (its defaults, 0 and False, are what this block does).
    """
    _checks.in_unit_interval("decay_rate", decay_rate)
    _checks.positive("epsilon", epsilon)
    _checks.flag("eps_in_sqrt", eps_in_sqrt)
    _checks.state_dtype(state_dtype)

    def step(g, c, _):
        g32 = _to_compute(g)
        c_new = _rms_cache(g32, c, decay_rate)
        return (g32 / _rms_denominator(c_new, epsilon, eps_in_sqrt)).astype(g.dtype), c_new.astype(c.dtype)

    return _one_buffer_block(ScaleByRmsState, "cache", lambda params: _init_state_tree(params, state_dtype), step)


def _rms_cache(g32: jax.Array, cache: jax.Array, decay_rate: Any) -> jax.Array:
    return decay_rate * _to_compute(cache) + (1 - decay_rate) * jnp.square(g32)


def _rms_denominator(cache: jax.Array, epsilon: Any, eps_in_sqrt: bool) -> jax.Array:
    # safe_epsilon: an epsilon that rounds to 0 in the cache's dtype would give 0/0 on a zero gradient
    epsilon = safe_epsilon(epsilon, cache.dtype)
    return safe_sqrt(cache + epsilon) if eps_in_sqrt else safe_sqrt(cache) + epsilon


class RmsStepState(NamedTuple):
    """The state of :func:`rms_step` (constant learning rate)."""

    cache: Any  # running mean of g^2, mirrors params


def rms_step(
    learning_rate: ScalarOrSchedule, decay_rate: float = 0.9, epsilon: float = 1e-8, *, state_dtype: Any | None = None
) -> GradientTransformation:
    """RMSprop's whole step in the seed's form, with the learning rate in the numerator.

    ``c_t = decay * c_{t-1} + (1 - decay) * g_t^2``, ``c_0 = 0``, ``u_t = -(lr_t * g_t) / (sqrt(c_t) + eps)``.

    The same value as ``chain(scale_by_rms(decay_rate, epsilon), scale_by_learning_rate(lr))``
    (optax ``rmsprop(eps_in_sqrt=False)``, torch ``RMSprop``), which divide first and scale after;
    multiplying first is the seed's rounding (``lr * grad / denom``), and it lets XLA:CPU fuse a
    coupled penalty ``g = grad + wd * w`` into both of the step's loops instead of writing ``g``
    to memory in a third (2x faster with 'L2' on large leaves).
    """
    _checks.non_negative("learning_rate", learning_rate)
    _checks.in_unit_interval("decay_rate", decay_rate)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def step(g, c, lr):
        g32 = _to_compute(g)
        c_new = _rms_cache(g32, c, decay_rate)
        return (-(lr * g32) / _rms_denominator(c_new, epsilon, False)).astype(g.dtype), c_new.astype(c.dtype)

    return _one_buffer_block(
        RmsStepState, "cache", lambda params: _init_state_tree(params, state_dtype), step, learning_rate
    )


class ScaleByAdamState(NamedTuple):
    """The state of :func:`scale_by_adam`."""

    count: jax.Array  # int32, steps taken; bias correction uses t = count after this step
    momentums: Any  # m, first moment, mirrors params
    velocities: Any  # v, second moment, mirrors params


def scale_by_adam(
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    *,
    epsilon_hat: bool = False,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    """Adam's direction, with bias correction from its own step count.

    ``m_t = beta1 * m_{t-1} + (1 - beta1) * g_t``,
    ``v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2``,
    ``u_t = (m_t / (1 - beta1^t)) / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)``.

    This is the seed's arrangement of ``m_hat / (sqrt(v_hat) + eps)``; optax ``scale_by_adam``
    and torch ``Adam`` compute the same quantity (optax as ``sqrt(v_t / (1 - beta2^t))``), equal up
    to float rounding. With ``epsilon_hat=True`` eps is not bias-corrected, as in Keras ``Adam`` and TF1
    (Kingma & Ba's "epsilon hat"): ``u_t = (sqrt(1 - beta2^t) / (1 - beta1^t)) * m_t / (sqrt(v_t) + eps)``.
    ``1 - beta^t`` is computed without cancellation (see ``bias_correction``),
    closer to the seed's float64 scalars than optax's and torch's float32 ``1 - beta**t``. Keras adds eps the same way; TF1's "epsilon hat" does not.

    ``m`` is stored in ``mu_dtype`` and ``v`` in ``nu_dtype`` (each defaults to ``state_dtype``);
    the recursion runs in float32 and each moment is rounded to its dtype when stored.
    """
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.positive("epsilon", epsilon)
    _checks.flag("epsilon_hat", epsilon_hat)
    mu_dtype, nu_dtype = _moment_dtypes(state_dtype, mu_dtype, nu_dtype)

    def init_fn(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            count=zero_count(),
            momentums=_init_state_tree(params, mu_dtype),
            velocities=_init_state_tree(params, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        check_state(state, ScaleByAdamState, "scale_by_adam")
        updates = _check_updates(updates, state.momentums, "the optimizer state (momentums)")
        count = safe_increment(state.count)
        corrections = per_compute_dtype(
            updates,
            lambda dtype: (bias_correction(beta1, count, dtype), jnp.sqrt(bias_correction(beta2, count, dtype))),
        )

        def step(g, m, v):
            g32 = _to_compute(g)
            bias_correction1, sqrt_bias_correction2 = corrections[g32.dtype]
            eps = safe_epsilon(epsilon, g32.dtype)
            m_new = beta1 * _to_compute(m) + (1 - beta1) * g32
            v_new = beta2 * _to_compute(v) + (1 - beta2) * jnp.square(g32)
            if epsilon_hat:
                direction = (sqrt_bias_correction2 / bias_correction1) * m_new / (safe_sqrt(v_new) + eps)
            else:
                direction = (m_new / bias_correction1) / (safe_sqrt(v_new) / sqrt_bias_correction2 + eps)
            return direction.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        triples = tree_map(step, updates, state.momentums, state.velocities)
        new_updates, momentums, velocities = unzip(updates, triples, 3)
        return new_updates, ScaleByAdamState(count=count, momentums=momentums, velocities=velocities)

    return GradientTransformation(init_fn, update_fn)


# Blocks for the optimizers of torch.optim and optax beyond the seed's three.


def _state_tree(params: Params, state_dtype: Any | None, fill: float = 0.0) -> Any:
    zeros = _init_state_tree(params, state_dtype)
    return zeros if fill == 0.0 else tree_map(lambda z: jnp.full_like(z, fill), zeros)


def _check_block(updates: Any, state: Any, state_type: type, name: str) -> Any:
    check_state(state, state_type, state_type.__name__)
    return _check_updates(updates, getattr(state, name), f"the optimizer state ({name})")


class TraceState(NamedTuple):
    """The state of :func:`trace`."""

    trace: Any  # momentum buffer, mirrors params


def trace(decay: float, nesterov: bool = False, *, state_dtype: Any | None = None) -> GradientTransformation:
    """Momentum with the learning rate outside the buffer (torch ``SGD``, dampening 0; optax ``trace``).

    ``b_t = decay * b_{t-1} + g_t``; ``u_t = g_t + decay * b_t`` if ``nesterov`` else ``b_t``.
    """
    _checks.in_unit_interval("decay", decay)
    _checks.flag("nesterov", nesterov)
    _checks.state_dtype(state_dtype)

    def step(g, b, _):
        b_new = decay * _to_compute(b) + _to_compute(g)
        out = _to_compute(g) + decay * b_new if nesterov else b_new
        return out.astype(g.dtype), b_new.astype(b.dtype)

    return _one_buffer_block(TraceState, "trace", lambda params: _state_tree(params, state_dtype), step)


class ScaleByCenteredRmsState(NamedTuple):
    """The state of :func:`scale_by_centered_rms`."""

    mean_square: Any  # running mean of g^2
    mean: Any  # running mean of g


def scale_by_centered_rms(
    decay: float = 0.99, epsilon: float = 1e-8, *, state_dtype: Any | None = None
) -> GradientTransformation:
    """Centered RMSprop (torch ``RMSprop(centered=True)``): ``s = d*s + (1-d)*g^2``, ``a = d*a + (1-d)*g``,
    ``u = g / (sqrt(s - a^2) + eps)`` (eps outside the root, as torch; optax's ``centered`` puts it inside)."""
    _checks.in_unit_interval("decay", decay)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def init_fn(params):
        return ScaleByCenteredRmsState(_state_tree(params, state_dtype), _state_tree(params, state_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates = _check_block(updates, state, ScaleByCenteredRmsState, "mean")

        def step(g, s, a):
            g32 = _to_compute(g)
            s_new = decay * _to_compute(s) + (1 - decay) * g32 * g32
            a_new = decay * _to_compute(a) + (1 - decay) * g32
            # safe_sqrt: s - a^2 can round below 0, where a plain root gives NaN
            out = g32 / (safe_sqrt(s_new - a_new * a_new) + safe_epsilon(epsilon, g32.dtype))
            return out.astype(g.dtype), s_new.astype(s.dtype), a_new.astype(a.dtype)

        new_updates, squares, means = unzip(updates, tree_map(step, updates, state.mean_square, state.mean), 3)
        return new_updates, ScaleByCenteredRmsState(squares, means)

    return GradientTransformation(init_fn, update_fn)


class ScaleByTorchAmsgradState(NamedTuple):
    """The state of :func:`scale_by_torch_amsgrad`."""

    count: jax.Array
    momentums: Any
    velocities: Any
    max_velocities: Any  # running max of v, torch's max_exp_avg_sq


def scale_by_torch_amsgrad(
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    *,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    """AMSGrad as torch ``Adam(amsgrad=True)``: ``v_max = max(v_max, v_t)``,
    ``u = (m_t / (1 - b1^t)) / (sqrt(v_max) / sqrt(1 - b2^t) + eps)``. (optax's ``amsgrad`` takes the max
    of the bias-corrected ``v``, which differs in the first steps.) ``m`` is stored in ``mu_dtype``,
    ``v`` and ``v_max`` in ``nu_dtype`` (each defaults to ``state_dtype``)."""
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.positive("epsilon", epsilon)
    mu_dtype, nu_dtype = _moment_dtypes(state_dtype, mu_dtype, nu_dtype)

    def init_fn(params):
        return ScaleByTorchAmsgradState(
            zero_count(), _state_tree(params, mu_dtype), _state_tree(params, nu_dtype), _state_tree(params, nu_dtype)
        )

    def update_fn(updates, state, params=None):
        del params
        updates = _check_block(updates, state, ScaleByTorchAmsgradState, "momentums")
        count = safe_increment(state.count)
        corrections = per_compute_dtype(
            updates, lambda dt: (bias_correction(beta1, count, dt), jnp.sqrt(bias_correction(beta2, count, dt)))
        )

        def step(g, m, v, v_max):
            g32 = _to_compute(g)
            bc1, sqrt_bc2 = corrections[g32.dtype]
            m_new = beta1 * _to_compute(m) + (1 - beta1) * g32
            v_new = beta2 * _to_compute(v) + (1 - beta2) * g32 * g32
            v_max_new = jnp.maximum(_to_compute(v_max), v_new)
            out = (m_new / bc1) / (safe_sqrt(v_max_new) / sqrt_bc2 + safe_epsilon(epsilon, g32.dtype))
            return out.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype), v_max_new.astype(v_max.dtype)

        out = tree_map(step, updates, state.momentums, state.velocities, state.max_velocities)
        new_updates, m, v, v_max = unzip(updates, out, 4)
        return new_updates, ScaleByTorchAmsgradState(count, m, v, v_max)

    return GradientTransformation(init_fn, update_fn)


class ScaleByNadamState(NamedTuple):
    """The state of :func:`scale_by_nadam`."""

    count: jax.Array
    momentums: Any
    velocities: Any


def scale_by_nadam(
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    *,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    """NAdam in optax's form (Dozat 2016 without momentum decay):
    ``m_hat = b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)``, ``u = m_hat / (sqrt(v_t / (1 - b2^t)) + eps)``.
    torch ``NAdam`` also decays the momentum coefficient (``momentum_decay=0.004``), so it differs.
    ``m`` is stored in ``mu_dtype`` and ``v`` in ``nu_dtype`` (each defaults to ``state_dtype``)."""
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.positive("epsilon", epsilon)
    mu_dtype, nu_dtype = _moment_dtypes(state_dtype, mu_dtype, nu_dtype)

    def init_fn(params):
        return ScaleByNadamState(zero_count(), _state_tree(params, mu_dtype), _state_tree(params, nu_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates = _check_block(updates, state, ScaleByNadamState, "momentums")
        count = safe_increment(state.count)
        corrections = per_compute_dtype(
            updates,
            lambda dt: (
                bias_correction(beta1, count, dt),
                bias_correction(beta1, safe_increment(count), dt),
                bias_correction(beta2, count, dt),
            ),
        )

        def step(g, m, v):
            g32 = _to_compute(g)
            dtype = g32.dtype
            bc1, bc1_next, bc2 = corrections[dtype]
            m_new = beta1 * _to_compute(m) + (1 - beta1) * g32
            v_new = beta2 * _to_compute(v) + (1 - beta2) * g32 * g32
            m_hat = beta1 * m_new / bc1_next + (1 - beta1) * g32 / bc1
            out = m_hat / (safe_sqrt(v_new / bc2) + safe_epsilon(epsilon, dtype))
            return out.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        new_updates, m, v = unzip(updates, tree_map(step, updates, state.momentums, state.velocities), 3)
        return new_updates, ScaleByNadamState(count, m, v)

    return GradientTransformation(init_fn, update_fn)


class ScaleByTorchAdagradState(NamedTuple):
    """The state of :func:`scale_by_torch_adagrad`."""

    sum_of_squares: Any


def scale_by_torch_adagrad(
    initial_accumulator_value: float = 0.0, epsilon: float = 1e-10, *, state_dtype: Any | None = None
) -> GradientTransformation:
    """Adagrad as torch ``Adagrad`` (defaults 0 and 1e-10): ``s = s + g^2``, ``u = g / (sqrt(s) + eps)``.
    optax ``adagrad`` starts at 0.1 and puts eps inside the root."""
    _checks.non_negative("initial_accumulator_value", initial_accumulator_value)
    _checks.positive("epsilon", epsilon)
    _checks.state_dtype(state_dtype)

    def step(g, s, _):
        s_new = _to_compute(s) + _to_compute(g) * _to_compute(g)
        return (_to_compute(g) / (safe_sqrt(s_new) + safe_epsilon(epsilon, s_new.dtype))).astype(g.dtype), s_new.astype(
            s.dtype
        )

    return _one_buffer_block(
        ScaleByTorchAdagradState,
        "sum_of_squares",
        lambda params: _state_tree(params, state_dtype, initial_accumulator_value),
        step,
    )


class ScaleByLionState(NamedTuple):
    """The state of :func:`scale_by_lion`."""

    momentums: Any


def scale_by_lion(beta1: float = 0.9, beta2: float = 0.99, *, state_dtype: Any | None = None) -> GradientTransformation:
    """Lion (Chen et al. 2023; optax ``scale_by_lion``): ``u = sign(b1 * m + (1 - b1) * g)``,
    then ``m = b2 * m + (1 - b2) * g``."""
    _checks.in_unit_interval("beta1", beta1)
    _checks.in_unit_interval("beta2", beta2)
    _checks.state_dtype(state_dtype)

    def step(g, m, _):
        out = jnp.sign(beta1 * _to_compute(m) + (1 - beta1) * _to_compute(g))
        return out.astype(g.dtype), (beta2 * _to_compute(m) + (1 - beta2) * _to_compute(g)).astype(m.dtype)

    return _one_buffer_block(ScaleByLionState, "momentums", lambda params: _state_tree(params, state_dtype), step)
