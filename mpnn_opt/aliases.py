"""The seed's optimizers as chains of building blocks, with the seed's names and defaults.

``regularization`` is ``'L1'``, ``'L2'`` or ``None`` (off; the seed cannot turn it off).
``mask`` chooses the regularized leaves (default: leaves of at least 2 dimensions not named like a
bias or a normalization scale; exactly the seed's name rule on its layers, see
:mod:`mpnn_opt.regularization`). ``state_dtype`` sets the dtype of per-parameter state (default:
float32, or float64 for float64 params; e.g. ``jnp.bfloat16`` for bfloat16 moments).
"""

from __future__ import annotations

from typing import Any

from mpnn_opt import _checks
from mpnn_opt.base import GradientTransformation, ScalarOrSchedule, chain
from mpnn_opt.regularization import Mask, add_decoupled_weight_decay, add_regularization
from mpnn_opt.transforms import momentum_velocity, rms_step, scale_by_adam, scale_by_learning_rate

__all__ = ["sgd", "rmsprop", "adam"]


def sgd(
    learning_rate: ScalarOrSchedule = 0.01,
    regularization: str | None = "L2",
    weight_decay: float = 0.001,
    momentum: float = 0.1,
    *,
    mask: Mask | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    """SGD with momentum, the seed's ``SGD``.

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
    """RMSprop, the seed's ``RMSprop``.

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
) -> GradientTransformation:
    """Adam, the seed's ``Adam``: decoupled weight decay under 'L2', a coupled penalty under 'L1'.

    ``m = b1 * m + (1 - b1) * g``, ``v = b2 * v + (1 - b2) * g^2``,
    ``s = w - lr * m_hat / (sqrt(v_hat) + eps)``, then

    * 'L2': ``w = s - lr * weight_decay * s`` (the decay acts on the stepped weight ``s``);
    * 'L1': ``g`` above is ``g + weight_decay * sign(w)`` and ``w = s``;
    * ``None``: ``w = s`` (this is optax ``adam`` and torch ``Adam``).

    Defaults: lr 0.001, 'L2', weight_decay 0.001, beta1 0.9, beta2 0.999, epsilon 1e-8.
    torch ``AdamW`` / optax ``adamw`` decay the weight before the step (``w - lr * wd * w``) and
    default to weight_decay 0.01 / 1e-4; the difference is of order lr^2 * wd per step.
    """
    _checks.regularization(regularization)
    direction = scale_by_adam(beta1, beta2, epsilon, state_dtype=state_dtype)
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
