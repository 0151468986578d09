"""Train a small MLP classifier with mpnn_opt.adam and a jitted step.

Data: two interleaved spirals generated here, so the script needs nothing but mpnn_opt.
Run: python examples/quickstart.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import mpnn_opt


def make_spirals(samples_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    radius = np.sqrt(rng.uniform(0.05, 1.0, samples_per_class)) * 3.0
    angle = radius * 2.0
    points, labels = [], []
    for label, phase in enumerate([0.0, np.pi]):
        xy = np.stack([radius * np.cos(angle + phase), radius * np.sin(angle + phase)], axis=1)
        points.append(xy + rng.normal(0.0, 0.1, xy.shape))
        labels.append(np.full(samples_per_class, label))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels)


def init_mlp(key: jax.Array, sizes: list[int]) -> list[dict]:
    layers = []
    for layer_key, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        weights = jax.random.normal(layer_key, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in)
        layers.append({"weights": weights, "bias": jnp.zeros(fan_out)})
    return layers


def logits(params: list[dict], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["weights"] + layer["bias"])
    return x @ params[-1]["weights"] + params[-1]["bias"]


def loss_fn(params: list[dict], x: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, x)), y[:, None], axis=1))


def main() -> float:
    x, y = make_spirals(1000)
    params = init_mlp(jax.random.key(0), [2, 64, 64, 2])
    # the seed's Adam: decoupled weight decay on 'weights', none on 'bias' (by name)
    optimizer = mpnn_opt.adam(learning_rate=0.01, regularization="L2", weight_decay=1e-4)
    state = optimizer.init(params)

    @jax.jit
    def train_step(params, state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, state = optimizer.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(1)
    batch_size, start = 64, time.perf_counter()
    for epoch in range(1, 16):
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), batch_size):
            batch = order[i : i + batch_size]
            params, state, loss = train_step(params, state, x[batch], y[batch])
            losses.append(loss)
        print(f"epoch {epoch:2d}  loss {float(np.mean(losses)):.4f}")
    accuracy = float(jnp.mean(jnp.argmax(logits(params, x), axis=1) == y))
    print(f"final accuracy {accuracy:.1%} in {time.perf_counter() - start:.1f} s")
    return accuracy


if __name__ == "__main__":
    main()
