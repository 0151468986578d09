"""mpnn_opt: the optimizers of mpneuralnetwork as pure, jit-compiled JAX gradient transformations."""

from mpnn_opt import extra_transforms, presets, schedules
from mpnn_opt.accumulation import AccumulateState, accumulate
from mpnn_opt.aliases import adam, rmsprop, sgd
from mpnn_opt.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    apply_updates,
    chain,
    identity,
)
from mpnn_opt.compiler_options import PARALLEL_LOOP_MIN_ELEMENTS, cpu_compiler_options
from mpnn_opt.clipping import clip, clip_by_global_norm, clip_by_leaf_norm, global_norm
from mpnn_opt.hyperparams import (
    InjectHyperparamsState,
    inject_hyperparams,
    read_value,
    with_hyperparam,
)
from mpnn_opt.masking import (
    MaskedState,
    PartitionState,
    freeze,
    masked,
    partition,
    path_mask,
)
from mpnn_opt.packed import (
    LeafSlot,
    Packed,
    PackedLayout,
    pack,
    regularized_mask,
    unpack,
)
from mpnn_opt.presets import (
    conventional,
    lion,
    nadam,
    torch_adagrad,
    torch_adamw,
    torch_rmsprop,
    torch_sgd,
)
from mpnn_opt.regularization import (
    add_decoupled_weight_decay,
    add_regularization,
    is_regularized_name,
    seed_name_mask,
)
from mpnn_opt.sharding import per_device_nbytes, state_shardings
from mpnn_opt.transforms import (
    MomentumVelocityState,
    RmsStepState,
    ScaleByAdamState,
    ScheduleState,
    ScaleByRmsState,
    momentum_velocity,
    rms_step,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
)
from mpnn_opt.wrappers import (
    ParamsEma,
    SkipNonFiniteState,
    ema_params,
    params_ema_init,
    params_ema_update,
    skip_non_finite,
)

__version__ = "0.1.0"

__all__ = [
    "PARALLEL_LOOP_MIN_ELEMENTS",
    "cpu_compiler_options",
    "AccumulateState",
    "EmptyState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "LeafSlot",
    "MaskedState",
    "MomentumVelocityState",
    "OptState",
    "Packed",
    "PackedLayout",
    "Params",
    "ParamsEma",
    "PartitionState",
    "ScalarOrSchedule",
    "ScaleByAdamState",
    "ScheduleState",
    "ScaleByRmsState",
    "RmsStepState",
    "Schedule",
    "SkipNonFiniteState",
    "Updates",
    "accumulate",
    "adam",
    "add_decoupled_weight_decay",
    "add_regularization",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "conventional",
    "ema_params",
    "extra_transforms",
    "freeze",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "is_regularized_name",
    "lion",
    "masked",
    "momentum_velocity",
    "nadam",
    "pack",
    "params_ema_init",
    "params_ema_update",
    "partition",
    "path_mask",
    "per_device_nbytes",
    "presets",
    "read_value",
    "regularized_mask",
    "rmsprop",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "rms_step",
    "schedules",
    "seed_name_mask",
    "sgd",
    "skip_non_finite",
    "state_shardings",
    "torch_adagrad",
    "torch_adamw",
    "torch_rmsprop",
    "torch_sgd",
    "unpack",
    "with_hyperparam",
]


def __getattr__(name: str):
    # mpnn_opt.optimizers (the class adapter for mpneuralnetwork users) is imported on first use, not
    # with the package: importing it turns off JAX's asynchronous CPU dispatch, which JAX users keep.
    if name == "optimizers":
        import importlib

        return importlib.import_module("mpnn_opt.optimizers")
    raise AttributeError(f"module 'mpnn_opt' has no attribute {name!r}")
