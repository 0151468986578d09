"""Train a small flax.nnx MLP (with a LayerNorm) with mpnn_opt through ``nnx.Optimizer``.

mpnn_opt's transforms follow optax's (init, update) protocol, so flax's own optimizer wrapper drives them:
``nnx.Optimizer(model, mpnn_opt.adam(1e-2), wrt=nnx.Param)`` and ``optimizer.update(model, grads)``
inside an ``@nnx.jit`` step. With the default ``regularization='L2'`` the decoupled weight decay
touches the two ``Linear`` kernels only: the biases and the ``LayerNorm``'s ``scale`` and ``bias``
are left alone (1-D leaves, and names the seed's rule skips).

Data: a synthetic regression task generated here with a fixed seed, trained full batch.
Run: python examples/flax_nnx.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import mpnn_opt

FEATURES, HIDDEN, SAMPLES = 8, 32, 256


def make_regression(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``x ~ N(0, 1)`` and targets ``y = sin(x @ a) @ b``, scaled to unit variance."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    a = rng.normal(size=(FEATURES, 4)) / np.sqrt(FEATURES)
    y = np.sin(2.0 * x @ a) @ rng.normal(size=(4, 1))
    return x, (y / y.std()).astype(np.float32)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)
        self.norm = nnx.LayerNorm(HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.gelu(self.norm(self.hidden(x))))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def train(tx: optax.GradientTransformation, steps: int = 300, seed: int = 0, log_every: int = 0) -> list[float]:
    """Trains a fresh model (initialised from ``seed``) for ``steps`` full-batch steps; the loss of each."""
    x, y = make_regression(seed)
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    losses = []
    for step in range(1, steps + 1):
        losses.append(float(train_step(model, optimizer, x, y)))
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  loss {losses[-1]:.5f}")
    return losses


def main(optimizer: optax.GradientTransformation | None = None, steps: int = 300) -> list[float]:
    """Trains with ``optimizer`` (default: the seed's Adam at lr 1e-2) and prints the loss."""
    tx = mpnn_opt.adam(1e-2) if optimizer is None else optimizer
    losses = train(tx, steps, log_every=30)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} steps")
    return losses


if __name__ == "__main__":
    main()
