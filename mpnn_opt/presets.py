"""Optimizers beyond the seed's, each following a named library's definition exactly.

``torch_*`` aliases reproduce torch.optim (coupled ``weight_decay`` as ``g + wd * w``, learning rate outside
the momentum buffer, eps outside the root); ``nadam`` and ``lion`` follow optax. Their learning rates
accept schedules, and ``inject_hyperparams`` changes them between steps without recompiling.
"""

from __future__ import annotations

from mpnn_opt import _checks, aliases
from mpnn_opt import extra_transforms as blocks
from mpnn_opt.base import GradientTransformation, ScalarOrSchedule, chain
from mpnn_opt.regularization import add_regularization
from mpnn_opt.transforms import momentum_velocity, scale_by_adam, scale_by_learning_rate, scale_by_rms

__all__ = ["torch_sgd", "torch_rmsprop", "torch_adamw", "torch_adagrad", "nadam", "lion", "CONVENTIONS", "conventional"]


def _coupled_l2(weight_decay: float) -> GradientTransformation:
    # torch's weight_decay touches every parameter: an all-True mask, not the seed's name rule
    return add_regularization("L2", weight_decay, mask=True)


def torch_sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> GradientTransformation:
    """torch ``SGD`` (dampening 0): ``g' = g + wd*w``, ``b = m*b + g'``, ``w -= lr * (g' + m*b if nesterov else b)``."""
    _checks.in_unit_interval("momentum", momentum)
    _checks.flag("nesterov", nesterov)
    _checks.nesterov_momentum(nesterov, momentum)
    return chain(_coupled_l2(weight_decay), blocks.trace(momentum, nesterov), scale_by_learning_rate(learning_rate))


def torch_rmsprop(
    learning_rate: ScalarOrSchedule = 0.01, alpha: float = 0.99, epsilon: float = 1e-8, weight_decay: float = 0.0,
    momentum: float = 0.0, centered: bool = False,
) -> GradientTransformation:
    """torch ``RMSprop``: ``s = a*s + (1-a)*g'^2``, ``d = g' / (sqrt(s [- mean^2 if centered]) + eps)``,
    ``b = m*b + d`` when ``momentum > 0``, ``w -= lr * (b or d)``."""
    _checks.in_unit_interval("alpha", alpha)
    _checks.in_unit_interval("momentum", momentum)
    _checks.flag("centered", centered)
    direction = blocks.scale_by_centered_rms(alpha, epsilon) if centered else scale_by_rms(alpha, epsilon)
    steps = [_coupled_l2(weight_decay), direction]
    if momentum > 0:
        steps.append(blocks.trace(momentum))
    return chain(*steps, scale_by_learning_rate(learning_rate))


# whether there is a momentum buffer at all depends on momentum > 0: inject_hyperparams keeps it static
torch_rmsprop.static_hyperparameters = ("momentum",)  # type: ignore[attr-defined]


def torch_adamw(
    learning_rate: ScalarOrSchedule = 0.001, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8,
    weight_decay: float = 0.01, amsgrad: bool = False,
) -> GradientTransformation:
    """torch ``AdamW``: ``w = w - lr * (adam_direction + wd * w)`` (decay of the old weight, scaled by lr);
    optax ``adamw`` is the same. The seed's 'L2' Adam decays the stepped weight instead."""
    _checks.flag("amsgrad", amsgrad)
    direction = blocks.scale_by_amsgrad(beta1, beta2, epsilon) if amsgrad else scale_by_adam(beta1, beta2, epsilon)
    return chain(direction, blocks.add_decayed_weights(weight_decay), scale_by_learning_rate(learning_rate))


def torch_adagrad(learning_rate: ScalarOrSchedule = 0.01, epsilon: float = 1e-10, initial_accumulator_value: float = 0.0,
                  weight_decay: float = 0.0) -> GradientTransformation:
    """torch ``Adagrad`` (lr_decay 0): ``s = s + g'^2``, ``w -= lr * g' / (sqrt(s) + eps)``."""
    return chain(_coupled_l2(weight_decay), blocks.scale_by_rss(initial_accumulator_value, epsilon), scale_by_learning_rate(learning_rate))


def nadam(learning_rate: ScalarOrSchedule, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8) -> GradientTransformation:
    """optax ``nadam``: see :func:`mpnn_opt.extra_transforms.scale_by_nadam`."""
    return chain(blocks.scale_by_nadam(beta1, beta2, epsilon), scale_by_learning_rate(learning_rate))


def lion(learning_rate: ScalarOrSchedule, beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.001) -> GradientTransformation:
    """optax ``lion``: ``w -= lr * (sign(b1*m + (1-b1)*g) + wd * w)``, ``m = b2*m + (1-b2)*g``."""
    return chain(blocks.scale_by_lion(beta1, beta2), blocks.add_decayed_weights(weight_decay), scale_by_learning_rate(learning_rate))


CONVENTIONS = ("seed", "torch", "optax", "keras")


def conventional(optimizer: str, convention: str, learning_rate: ScalarOrSchedule, **hyperparameters) -> GradientTransformation:
    """``optimizer`` ('sgd', 'rmsprop' or 'adam') as ``convention`` defines it, without weight decay
    (except 'seed', which keeps the seed's defaults and regularization). The differences:

    * sgd: 'seed' and 'keras' keep lr inside the velocity (``v = m*v - lr*g``); 'torch' and 'optax' outside
      (``b = m*b + g; u = -lr*b``): equal at a constant rate, different once it changes.
    * rmsprop: 'seed' and 'torch' put eps outside the root (``g / (sqrt(c) + eps)``); 'optax' and 'keras'
      inside (``g / sqrt(c + eps)``).
    * adam: 'seed', 'torch' and 'optax' bias-correct eps (``m_hat / (sqrt(v_hat) + eps)``); 'keras' uses
      eps-hat (``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``).

    ``hyperparameters`` are the block's own names: ``momentum``; ``decay_rate``, ``epsilon``; ``beta1``,
    ``beta2``, ``epsilon``. Each library's defaults apply where not given (Keras: eps 1e-7, rho 0.9;
    torch RMSprop: alpha 0.99).
    """
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if optimizer == "sgd":
        momentum = hyperparameters.pop("momentum", 0.1 if convention == "seed" else 0.0)
        if convention == "seed":
            return aliases.sgd(learning_rate, momentum=momentum, **hyperparameters)
        if convention == "keras":
            return momentum_velocity(learning_rate, momentum, **hyperparameters)
        return torch_sgd(learning_rate, momentum, **hyperparameters)
    if optimizer == "rmsprop":
        if convention == "seed":
            return aliases.rmsprop(learning_rate, **hyperparameters)
        defaults = {"torch": (0.99, 1e-8), "optax": (0.9, 1e-8), "keras": (0.9, 1e-7)}[convention]
        decay_rate = hyperparameters.pop("decay_rate", defaults[0])
        epsilon = hyperparameters.pop("epsilon", defaults[1])
        direction = scale_by_rms(decay_rate, epsilon, eps_in_sqrt=convention in ("optax", "keras"), **hyperparameters)
        return chain(direction, scale_by_learning_rate(learning_rate))
    if optimizer == "adam":
        if convention == "seed":
            return aliases.adam(learning_rate, **hyperparameters)
        hyperparameters.setdefault("epsilon", 1e-7 if convention == "keras" else 1e-8)
        direction = scale_by_adam(epsilon_hat=convention == "keras", **hyperparameters)
        return chain(direction, scale_by_learning_rate(learning_rate))
    raise ValueError(f"optimizer must be 'sgd', 'rmsprop' or 'adam', got {optimizer!r}")
