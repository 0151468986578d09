"""Train an MLP with its parameters packed into a few flat buffers, and check it against the per-leaf tree.

The params are packed once (``mpnn_opt.pack``); inside the jitted step the model reads them through
``mpnn_opt.unpack`` (static slices, fused by XLA), ``jax.grad`` returns the gradients packed, and
the seed's Adam (decoupled weight decay on 'weights', none on 'bias', by name) updates two buffers
instead of one array per leaf. Nothing is concatenated or split per step.

Run: python examples/packed_training.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import mpnn_opt
from mpnn_opt.packed import pack, unpack

SIZES = [8] + [32] * 6 + [1]  # 7 layers, 14 leaves
STEPS = 300


def make_data(samples: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (samples, SIZES[0])).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)) + 0.5 * x[:, :1] * x[:, 1:2]
    return jnp.asarray(x), jnp.asarray(y.astype(np.float32))


def init_mlp(key: jax.Array) -> dict:
    keys = jax.random.split(key, len(SIZES) - 1)
    return {
        f"layer{i}": {"weights": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(1.0 / n_in), "bias": jnp.zeros(n_out)}
        for i, (k, n_in, n_out) in enumerate(zip(keys, SIZES[:-1], SIZES[1:]))
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    for i in range(len(SIZES) - 1):
        layer = params[f"layer{i}"]
        x = x @ layer["weights"] + layer["bias"]
        if i < len(SIZES) - 2:
            x = jnp.tanh(x)
    return jnp.mean((x - y) ** 2)


def train(
    params, tx: mpnn_opt.GradientTransformation, x: jax.Array, y: jax.Array, read=lambda p: p
) -> tuple[object, list[float]]:
    """Full-batch training; ``read`` turns what the step holds into the model's tree (``unpack`` when packed)."""

    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(read(p), x, y))(params)
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state, loss

    # a small model on CPU: keep each loop on one thread (no effect on the numbers, nor on big models or GPUs)
    step = jax.jit(step, donate_argnums=(0, 1), compiler_options=mpnn_opt.cpu_compiler_options(params))

    state = tx.init(params)
    losses = []
    for _ in range(STEPS):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return params, losses


def main() -> tuple[list[float], list[float]]:
    x, y = make_data(512)
    params = init_mlp(jax.random.key(0))
    tx = mpnn_opt.adam(0.003)  # the seed's defaults otherwise: 'L2' decoupled decay 0.001, by leaf name
    packed = pack(params)
    print(f"{len(jax.tree.leaves(params))} leaves packed into {packed}")
    packed_final, packed_losses = train(packed, tx, x, y, read=unpack)
    _, tree_losses = train(params, tx, x, y)
    for step in range(0, STEPS, 50):
        print(f"step {step:3d}  loss packed {packed_losses[step]:.5f}  per-leaf {tree_losses[step]:.5f}")
    print(f"final loss packed {packed_losses[-1]:.5f}, per-leaf {tree_losses[-1]:.5f}")
    trained = unpack(packed_final)  # back to the model's tree, e.g. to save it
    print("layer0 weights shape:", trained["layer0"]["weights"].shape)
    return packed_losses, tree_losses


if __name__ == "__main__":
    main()
