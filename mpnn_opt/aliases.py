"""Optimizers as chains of building blocks: the seed's three, and torch.optim's and optax's others.

``sgd``, ``rmsprop`` and ``adam`` are the seed's (mpneuralnetwork 1.1.1), with its positional
signatures and defaults: they regularize by default (``'L2'``). Every other factory follows one
named library's definition exactly and one signature scheme: the learning rate first (with that
library's default), everything else keyword-only, the library's hyperparameters under this
library's names (``decay_rate`` for torch's ``alpha``, ``epsilon`` for ``eps``, ``beta1``/``beta2``
for ``betas``), and ``mask`` (which leaves the weight decay touches; default: all, as in torch
and optax) and ``state_dtype`` where they apply (the Adam family also takes ``mu_dtype`` and ``nu_dtype``,
the dtypes of the two moments, which default to ``state_dtype``; ``adam`` and ``torch_adamw`` take
``state_dtype='int8'`` for 8-bit block-wise moments, :func:`mpnn_opt.scale_by_adam_8bit`). Learning rates
accept schedules, and ``inject_hyperparams`` changes any numeric hyperparameter between steps without
recompiling.

The seed's aliases:

``regularization`` is ``'L1'``, ``'L2'`` or ``None`` (off; the seed cannot turn it off).
``mask`` chooses the regularized leaves (default: leaves of at least 2 dimensions not named like a
bias or a normalization scale; exactly the seed's name rule on its layers, see
:mod:`mpnn_opt.regularization`). ``state_dtype`` sets the dtype of per-parameter state (default:
float32, or float64 for float64 params; e.g. ``jnp.bfloat16`` for bfloat16 moments).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt import _checks
from mpnn_opt.base import GradientTransformation, Mask, ScalarOrSchedule, chain
from mpnn_opt.precision import scale_by_adam_8bit
from mpnn_opt.regularization import add_decayed_weights, add_decoupled_weight_decay, add_regularization
from mpnn_opt.transforms import (
    momentum_velocity,
    rms_step,
    scale_by_adam,
    scale_by_centered_rms,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_nadam,
    scale_by_rms,
    scale_by_torch_adagrad,
    scale_by_torch_amsgrad,
    trace,
)

__all__ = ["adam", "lion", "nadam", "rmsprop", "sgd", "torch_adagrad", "torch_adamw", "torch_rmsprop", "torch_sgd"]


def sgd(
    learning_rate: ScalarOrSchedule = 0.01,
    regularization: str | None = "L2",
    weight_decay: float = 0.001,
    momentum: float = 0.1,
    *,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """SGD with momentum, the seed's ``SGD``; regularizes by default (``'L2'``, coupled).

    ``g' = g + reg(w)`` (coupled, see :func:`add_regularization`), ``v = momentum * v - lr * g'``,
    ``w = w + v``.

    Defaults: lr 0.01, 'L2', weight_decay 0.001, momentum 0.1. At a constant learning rate and
    ``regularization=None`` this is optax ``sgd(lr, momentum)`` and torch ``SGD(lr, momentum)``;
    with 'L2' it is torch's ``weight_decay``. The learning rate sits inside the velocity, so a
    schedule acts differently from optax/torch (see :func:`momentum_velocity`).
    """
    return chain(
        add_regularization(regularization, weight_decay, mask),
        momentum_velocity(learning_rate, momentum, state_dtype=state_dtype),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule = 0.001,
    regularization: str | None = "L2",
    weight_decay: float = 0.001,
    decay_rate: float = 0.9,
    epsilon: float = 1e-8,
    *,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """RMSprop, the seed's ``RMSprop``; regularizes by default (``'L2'``, coupled).

    ``g' = g + reg(w)``, ``c = decay_rate * c + (1 - decay_rate) * g'^2``,
    ``w = w - (lr * g') / (sqrt(c) + eps)`` (:func:`rms_step`: the seed's order of operations).

    Defaults: lr 0.001, 'L2', weight_decay 0.001, decay_rate 0.9, epsilon 1e-8. With
    ``regularization=None`` this is optax ``rmsprop(lr, decay, eps, eps_in_sqrt=False)`` and torch
    ``RMSprop(lr, alpha=decay_rate, eps)`` up to float rounding (they divide before scaling by lr);
    optax's default puts eps inside the root, and Keras's default decay (rho) is 0.9 with eps 1e-7.
    The state is ``(add_regularization's, RmsStepState(count, cache))``.
    """
    return chain(
        add_regularization(regularization, weight_decay, mask),
        rms_step(learning_rate, decay_rate, epsilon, state_dtype=state_dtype),
    )


def adam(
    learning_rate: ScalarOrSchedule = 0.001,
    regularization: str | None = "L2",
    weight_decay: float = 0.001,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    *,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    """Adam, the seed's ``Adam``; decays weights by default (``'L2'``, decoupled; 'L1' is a coupled penalty).

    ``m = b1 * m + (1 - b1) * g``, ``v = b2 * v + (1 - b2) * g^2``,
    ``s = w - lr * m_hat / (sqrt(v_hat) + eps)``, then

    * 'L2': ``w = s - lr * weight_decay * s`` (the decay acts on the stepped weight ``s``);
    * 'L1': ``g`` above is ``g + weight_decay * sign(w)`` and ``w = s``;
    * ``None``: ``w = s`` (this is optax ``adam`` and torch ``Adam``).

    Defaults: lr 0.001, 'L2', weight_decay 0.001, beta1 0.9, beta2 0.999, epsilon 1e-8.
    torch ``AdamW`` / optax ``adamw`` decay the weight before the step (``w - lr * wd * w``) and
    default to weight_decay 0.01 / 1e-4; the difference is of order lr^2 * wd per step.
    ``mu_dtype`` / ``nu_dtype`` store ``m`` / ``v`` in another dtype than ``state_dtype``
    (see :func:`mpnn_opt.transforms.scale_by_adam`). ``state_dtype='int8'`` (the string) stores both
    moments in 8-bit blocks: the direction block is then :func:`mpnn_opt.scale_by_adam_8bit` (default block
    size 256, about 2.03 bytes a parameter), and ``mu_dtype`` / ``nu_dtype`` must stay None.
    """
    _checks.regularization(regularization)
    direction = _adam_direction(beta1, beta2, epsilon, False, state_dtype, mu_dtype, nu_dtype)
    if regularization == "L2":
        return chain(
            direction,
            scale_by_learning_rate(learning_rate),
            add_decoupled_weight_decay(learning_rate, weight_decay, mask),
        )
    return chain(
        add_regularization(regularization, weight_decay, mask),
        direction,
        scale_by_learning_rate(learning_rate),
    )


def _is_int8(dtype: Any) -> bool:
    """Whether ``dtype`` names int8 (``'int8'``, ``jnp.int8``, ``np.dtype('int8')``; an array is no dtype)."""
    if dtype is None or isinstance(dtype, (bool, np.ndarray, np.generic, jax.Array)):
        return False
    try:
        return jnp.dtype(dtype) == jnp.int8
    except TypeError:
        return False


def _adam_direction(
    beta1: float, beta2: float, epsilon: float, amsgrad: bool, state_dtype: Any, mu_dtype: Any, nu_dtype: Any
) -> GradientTransformation:
    """``scale_by_adam`` (``scale_by_torch_amsgrad`` with ``amsgrad``), or ``scale_by_adam_8bit`` for the state
    dtype value ``'int8'``: the string only, as integer dtypes are refused as state dtypes everywhere else."""
    for name, value in (("state_dtype", state_dtype), ("mu_dtype", mu_dtype), ("nu_dtype", nu_dtype)):
        if _is_int8(value) and not (name == "state_dtype" and isinstance(value, str)):
            allowed = ", or the string 'int8'" if name == "state_dtype" else ""
            raise TypeError(
                f"{name} must be None or a floating dtype such as jnp.float32 or 'bfloat16'{allowed}, got {value!r}; "
                "8-bit moments are state_dtype='int8' (both moments, in blocks)"
            )
    if not _is_int8(state_dtype):
        block = scale_by_torch_amsgrad if amsgrad else scale_by_adam
        return block(beta1, beta2, epsilon, state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    if amsgrad:
        raise ValueError(
            "state_dtype='int8' (8-bit block-wise moments) needs amsgrad=False: scale_by_adam_8bit keeps no "
            "running maximum of v; use state_dtype=jnp.bfloat16 with amsgrad=True"
        )
    for name, value in (("mu_dtype", mu_dtype), ("nu_dtype", nu_dtype)):
        if value is not None:
            raise ValueError(
                f"{name} must be None with state_dtype='int8' (both moments are stored in 8-bit blocks), got {value!r}"
            )
    return scale_by_adam_8bit(beta1, beta2, epsilon)


def _coupled_decay(weight_decay: float, mask: Mask | None) -> GradientTransformation:
    # torch's weight_decay touches every parameter unless masked: g + wd * w
    return add_decayed_weights(weight_decay, mask)


def torch_sgd(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """torch ``SGD`` (dampening 0): ``g' = g + wd*w``, ``b = m*b + g'``, ``w -= lr * (g' + m*b if nesterov else b)``.

    Defaults are torch's (lr 1e-3). Nesterov needs ``momentum > 0``, as in torch.
    """
    _checks.in_unit_interval("momentum", momentum)
    _checks.flag("nesterov", nesterov)
    _checks.nesterov_momentum(nesterov, momentum)
    return chain(
        _coupled_decay(weight_decay, mask),
        trace(momentum, nesterov, state_dtype=state_dtype),
        scale_by_learning_rate(learning_rate),
    )


def torch_rmsprop(
    learning_rate: ScalarOrSchedule = 1e-2,
    *,
    decay_rate: float = 0.99,
    epsilon: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """torch ``RMSprop`` (torch's ``alpha`` is ``decay_rate``): ``s = d*s + (1-d)*g'^2``,
    ``q = g' / (sqrt(s [- mean^2 if centered]) + eps)`` (eps outside the root), ``b = m*b + q`` when
    ``momentum > 0``, ``w -= lr * (b or q)``, with ``g' = g + wd*w``. Defaults are torch's."""
    _checks.in_unit_interval("decay_rate", decay_rate)
    _checks.in_unit_interval("momentum", momentum)
    _checks.flag("centered", centered)
    if centered:
        direction = scale_by_centered_rms(decay_rate, epsilon, state_dtype=state_dtype)
    else:
        direction = scale_by_rms(decay_rate, epsilon, eps_in_sqrt=False, state_dtype=state_dtype)
    steps = [_coupled_decay(weight_decay, mask), direction]
    if momentum > 0:
        steps.append(trace(momentum, state_dtype=state_dtype))
    return chain(*steps, scale_by_learning_rate(learning_rate))


# whether there is a momentum buffer at all depends on momentum > 0: inject_hyperparams keeps it static
torch_rmsprop.static_hyperparameters = ("momentum",)  # type: ignore[attr-defined]


def torch_adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    """torch ``AdamW``: ``w = w - lr * (adam_direction + wd * w)`` (decay of the old weight, scaled by lr);
    optax ``adamw`` is the same. The seed's 'L2' Adam decays the stepped weight instead. ``amsgrad``
    is torch's form (:func:`mpnn_opt.transforms.scale_by_torch_amsgrad`). Defaults are torch's.
    ``mu_dtype`` / ``nu_dtype`` store the moments in another dtype than ``state_dtype``;
    ``state_dtype='int8'`` stores both in 8-bit blocks (:func:`mpnn_opt.scale_by_adam_8bit`, as in :func:`adam`;
    not with ``amsgrad``)."""
    _checks.flag("amsgrad", amsgrad)
    direction = _adam_direction(beta1, beta2, epsilon, amsgrad, state_dtype, mu_dtype, nu_dtype)
    return chain(direction, add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


def torch_adagrad(
    learning_rate: ScalarOrSchedule = 1e-2,
    *,
    epsilon: float = 1e-10,
    initial_accumulator_value: float = 0.0,
    weight_decay: float = 0.0,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """torch ``Adagrad`` (lr_decay 0): ``s = s + g'^2``, ``w -= lr * g' / (sqrt(s) + eps)``, ``g' = g + wd*w``."""
    direction = scale_by_torch_adagrad(initial_accumulator_value, epsilon, state_dtype=state_dtype)
    return chain(_coupled_decay(weight_decay, mask), direction, scale_by_learning_rate(learning_rate))


def nadam(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    """optax ``nadam``: see :func:`mpnn_opt.transforms.scale_by_nadam` (optax requires the learning rate; 1e-3 here).

    ``state_dtype='int8'`` is refused: the 8-bit blocks (:func:`mpnn_opt.scale_by_adam_8bit`) run Adam's
    recursion, not NAdam's."""
    if isinstance(state_dtype, str) and _is_int8(state_dtype):
        raise ValueError(
            "state_dtype='int8' (8-bit block-wise moments) is not available for nadam: scale_by_adam_8bit runs "
            "Adam's direction; use adam or torch_adamw with state_dtype='int8', or nadam with state_dtype=jnp.bfloat16"
        )
    direction = scale_by_nadam(beta1, beta2, epsilon, state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(direction, scale_by_learning_rate(learning_rate))


def lion(
    learning_rate: ScalarOrSchedule = 1e-4,
    *,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 1e-3,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """optax ``lion``: ``w -= lr * (sign(b1*m + (1-b1)*g) + wd * w)``, ``m = b2*m + (1-b2)*g``.

    optax requires the learning rate; 1e-4 here (Lion wants 3-10x less than Adam).
    """
    return chain(
        scale_by_lion(beta1, beta2, state_dtype=state_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
