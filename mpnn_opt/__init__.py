"""mpnn_opt: the optimizers of mpneuralnetwork, and torch.optim's and optax's, as pure, jit-compiled JAX
gradient transformations of optax's own type.

The public names are listed in ``__all__``; state classes and building-block internals live in their
modules (``mpnn_opt.transforms``, ``mpnn_opt.regularization``, ...). The mpneuralnetwork-compatible
classes are in the subpackage ``mpnn_opt.optimizers``, imported on first use.
"""

from mpnn_opt import checkpoint, schedules
from mpnn_opt.accumulation import accumulate
from mpnn_opt.aliases import adam, lion, nadam, rmsprop, sgd, torch_adagrad, torch_adamw, torch_rmsprop, torch_sgd
from mpnn_opt.base import EmptyState, GradientTransformation, apply_updates, chain, identity, with_extra_args
from mpnn_opt.clipping import clip, clip_by_global_norm, clip_by_leaf_norm, global_norm
from mpnn_opt.compiler_options import cpu_compiler_options
from mpnn_opt.hyperparams import inject_hyperparams, read_value, with_hyperparam
from mpnn_opt.masking import freeze, masked, partition, path_mask
from mpnn_opt.packed import Packed, pack, regularized_mask, unpack
from mpnn_opt.precision import apply_updates_stochastic, master_weights, scale_by_adam_8bit
from mpnn_opt.regularization import add_decayed_weights, add_decoupled_weight_decay, add_regularization, default_mask
from mpnn_opt.sharding import per_device_nbytes, state_shardings
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
from mpnn_opt.wrappers import ema_params, params_ema_init, params_ema_update, skip_non_finite

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "Packed",
    "accumulate",
    "adam",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "add_regularization",
    "apply_updates",
    "apply_updates_stochastic",
    "chain",
    "checkpoint",
    "clip",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "cpu_compiler_options",
    "default_mask",
    "ema_params",
    "freeze",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "lion",
    "masked",
    "master_weights",
    "momentum_velocity",
    "nadam",
    "pack",
    "params_ema_init",
    "params_ema_update",
    "partition",
    "path_mask",
    "per_device_nbytes",
    "read_value",
    "regularized_mask",
    "rms_step",
    "rmsprop",
    "scale_by_adam",
    "scale_by_adam_8bit",
    "scale_by_centered_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_rms",
    "scale_by_torch_adagrad",
    "scale_by_torch_amsgrad",
    "schedules",
    "sgd",
    "skip_non_finite",
    "state_shardings",
    "torch_adagrad",
    "torch_adamw",
    "torch_rmsprop",
    "torch_sgd",
    "trace",
    "unpack",
    "with_extra_args",
    "with_hyperparam",
]


def __getattr__(name: str):
    # the class adapter for mpneuralnetwork users is a subpackage imported on first use
    if name == "optimizers":
        import importlib

        return importlib.import_module("mpnn_opt.optimizers")
    raise AttributeError(f"module 'mpnn_opt' has no attribute {name!r}")
