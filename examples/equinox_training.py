"""Train a small equinox MLP (with a LayerNorm) with mpnn_opt in equinox's own loop.

The model is a pytree; its arrays are the parameters: ``tx.init(eqx.filter(model, eqx.is_array))``,
then in an ``eqx.filter_jit`` step ``eqx.filter_value_and_grad`` for the gradients,
``tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))`` and ``eqx.apply_updates``.
With the default ``regularization='L2'`` the decoupled weight decay touches the two ``Linear``
weights only: their biases and the ``LayerNorm``'s ``weight`` and ``bias`` are 1-D, so they are left
alone (a name rule alone would decay ``LayerNorm.weight``).

Data: a synthetic regression task generated here with a fixed seed, trained full batch.
Run: python examples/equinox_training.py (not "equinox.py": run as a script, that name would shadow the
equinox package itself, since Python puts the script's folder first on sys.path)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mpnn_opt

FEATURES, HIDDEN, SAMPLES = 8, 32, 256


def make_regression(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``x ~ N(0, 1)`` and targets ``y = sin(x @ a) @ b``, scaled to unit variance."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    a = rng.normal(size=(FEATURES, 4)) / np.sqrt(FEATURES)
    y = np.sin(2.0 * x @ a) @ rng.normal(size=(4, 1))
    return x, (y / y.std()).astype(np.float32)


class MLP(eqx.Module):
    hidden: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear

    def __init__(self, key: jax.Array):
        hidden_key, out_key = jax.random.split(key)
        self.hidden = eqx.nn.Linear(FEATURES, HIDDEN, key=hidden_key)
        self.norm = eqx.nn.LayerNorm(HIDDEN)
        self.out = eqx.nn.Linear(HIDDEN, 1, key=out_key)

    def __call__(self, x: jax.Array) -> jax.Array:
        """One example: ``x`` of shape ``(FEATURES,)``."""
        return self.out(jax.nn.gelu(self.norm(self.hidden(x))))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def train(tx: optax.GradientTransformation, steps: int = 300, seed: int = 0, log_every: int = 0) -> list[float]:
    """Trains a fresh model (initialised from ``seed``) for ``steps`` full-batch steps; the loss of each."""
    x, y = make_regression(seed)
    model = MLP(jax.random.key(seed))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for step in range(1, steps + 1):
        model, opt_state, loss = train_step(model, opt_state, x, y)
        losses.append(float(loss))
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
