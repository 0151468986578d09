"""mpnn_opt: the optimizers of mpneuralnetwork as pure, jit-compiled JAX gradient transformations."""

from mpnn_opt import optimizers, schedules
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
from mpnn_opt.regularization import (
    DecoupledWeightDecayState,
    add_decoupled_weight_decay,
    add_regularization,
    is_regularized_name,
    seed_name_mask,
)
from mpnn_opt.sharding import per_device_nbytes, state_shardings
from mpnn_opt.transforms import (
    MomentumVelocityState,
    ScaleByAdamState,
    ScaleByLearningRateState,
    ScaleByRmsState,
    momentum_velocity,
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
    "AccumulateState",
    "DecoupledWeightDecayState",
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
    "ScaleByLearningRateState",
    "ScaleByRmsState",
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
    "ema_params",
    "freeze",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "is_regularized_name",
    "masked",
    "momentum_velocity",
    "optimizers",
    "pack",
    "params_ema_init",
    "params_ema_update",
    "partition",
    "path_mask",
    "per_device_nbytes",
    "read_value",
    "regularized_mask",
    "rmsprop",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "schedules",
    "seed_name_mask",
    "sgd",
    "skip_non_finite",
    "state_shardings",
    "unpack",
    "with_hyperparam",
]
