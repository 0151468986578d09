"""A user's script: ours where flax/optax expect theirs, and theirs where we expect ours."""

import jax.numpy as jnp
import optax
from flax import nnx

import mpnn_opt


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(2, 1, rngs=rngs)


def takes_optax(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(tx, optax.clip(1.0))


def takes_ours(tx: mpnn_opt.GradientTransformation) -> None:
    del tx


model = Model(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, mpnn_opt.adam(1e-3), wrt=nnx.Param)
ours: optax.GradientTransformation = mpnn_opt.adam(1e-3)
extra: optax.GradientTransformationExtraArgs = mpnn_opt.chain(mpnn_opt.sgd(0.1), optax.adam(1e-3))
multi = optax.MultiSteps(mpnn_opt.adam(1e-3), every_k_schedule=2)
masked = mpnn_opt.masked(optax.adam(1e-3), {"w": True})
parted = mpnn_opt.partition({"a": optax.sgd(0.1), "b": mpnn_opt.adam(0.1)}, {"w": "a"})
acc = mpnn_opt.accumulate(optax.adam(1e-3), every_k=2)
skip = mpnn_opt.skip_non_finite(optax.adam(1e-3))
injected = optax.inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1)
takes_optax(mpnn_opt.rmsprop(1e-3))
takes_ours(mpnn_opt.adam())
params = {"w": jnp.ones(2)}
state = ours.init(params)
updates, state = ours.update(params, state, params)
new_params = mpnn_opt.apply_updates(params, updates)
