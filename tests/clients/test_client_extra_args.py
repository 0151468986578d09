"""optax's extra keyword arguments (``update(..., value=loss)``) through our transforms, chain and wrappers,
and inside flax's nnx.Optimizer. Oracle: the same composition built from optax alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mpnn_opt

PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.1])}
LOSSES = [3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 1.1]


def _grads(step: int):
    return jax.tree.map(lambda p: jnp.sin(p * (step + 1)), PARAMS)


def _run(tx, apply=mpnn_opt.apply_updates):
    params, state = PARAMS, tx.init(PARAMS)
    update = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, value=loss))
    for step, loss in enumerate(LOSSES):
        updates, state = update(_grads(step), state, params, jnp.asarray(loss))
        params = apply(params, updates)
    return params


@pytest.mark.parametrize(
    "wrap",
    [lambda tx: tx, lambda tx: mpnn_opt.skip_non_finite(tx), lambda tx: mpnn_opt.masked(tx, {"w": True, "b": True})],
    ids=["chain", "skip_non_finite", "masked"],
)
def test_reduce_on_plateau_inside_our_chain_gets_the_loss_like_in_optax_chain(wrap):
    plateau = dict(factor=0.5, patience=1, cooldown=0, accumulation_size=1)
    ours = wrap(mpnn_opt.chain(mpnn_opt.adam(0.1, None), optax.contrib.reduce_on_plateau(**plateau)))
    theirs = optax.chain(optax.adam(0.1), optax.contrib.reduce_on_plateau(**plateau))
    got, expected = _run(ours), _run(theirs, optax.apply_updates)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=2e-5)  # optax's float32 1 - b^t differs from ours by 1e-5 at t = 1
    # the plateau really scaled the steps: without the loss values the result differs
    unscaled = _run(mpnn_opt.adam(0.1, None))
    assert not np.allclose(got["w"], unscaled["w"], rtol=1e-3)


def test_every_transform_and_wrapper_accepts_and_ignores_extra_arguments():
    transforms = [
        mpnn_opt.adam(0.1),
        mpnn_opt.sgd(0.1),
        mpnn_opt.rmsprop(0.1),
        mpnn_opt.clip_by_global_norm(1.0),
        mpnn_opt.scale_by_adam(),
        mpnn_opt.add_regularization("L1", 0.1),
        mpnn_opt.freeze({"w": False, "b": True}),
        mpnn_opt.accumulate(mpnn_opt.adam(0.1), 1),
        mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1),
        mpnn_opt.partition({"a": mpnn_opt.adam(0.1), "s": optax.sgd(0.1)}, {"w": "a", "b": "s"}),
        mpnn_opt.chain(optax.scale_by_adam(), mpnn_opt.scale_by_learning_rate(0.1)),
    ]
    for tx in transforms:
        state = tx.init(PARAMS)
        with_extra, _ = tx.update(PARAMS, state, PARAMS, value=jnp.asarray(1.0), unknown_argument="ignored")
        plain, _ = tx.update(PARAMS, state, PARAMS)
        jax.tree.map(np.testing.assert_array_equal, with_extra, plain)


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


def test_nnx_optimizer_update_with_value_works_with_ours_as_with_optax():
    x, y = jnp.arange(12.0).reshape(4, 3) / 10, jnp.array([[1.0], [0.0], [1.0], [0.0]])

    def train(tx):
        model = Tiny(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        for _ in range(5):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads, value=loss)
        return nnx.as_pure(nnx.state(model, nnx.Param))

    plateau = dict(factor=0.5, patience=1, accumulation_size=1)
    got = train(mpnn_opt.chain(mpnn_opt.adam(0.1, None), optax.contrib.reduce_on_plateau(**plateau)))
    expected = train(optax.chain(optax.adam(0.1), optax.contrib.reduce_on_plateau(**plateau)))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=2e-5)
