"""Oracle helpers shared by the tests: the real mpneuralnetwork optimizers driven step by step, error measures.

A plain module (not conftest.py) so that tests import it by name; tests/multidevice has a conftest of its own.
"""

from __future__ import annotations

import jax
import numpy as np
from mpneuralnetwork import optimizers as seed

import mpnn_opt

# The seed's three optimizers: ours and mpneuralnetwork's class, and settings away from the defaults.
SEED_ALIASES = {
    "sgd": (mpnn_opt.sgd, seed.SGD),
    "rmsprop": (mpnn_opt.rmsprop, seed.RMSprop),
    "adam": (mpnn_opt.adam, seed.Adam),
}
SEED_SETTINGS = {
    "sgd": dict(learning_rate=0.05, weight_decay=0.01, momentum=0.9),
    "rmsprop": dict(learning_rate=0.01, weight_decay=0.01, decay_rate=0.95, epsilon=1e-6),
    "adam": dict(learning_rate=0.01, weight_decay=0.02, beta1=0.8, beta2=0.99, epsilon=1e-7),
}

# One layer per top-level key; the leaf names are the seed's parameter names.
TREE_SHAPES = {
    "dense": {"weights": (6, 5), "biases": (1, 5)},
    "conv": {"kernels": (2, 3, 3, 3), "biases": (2, 4, 4)},
    "norm": {"gamma": (1, 5), "beta": (1, 5)},
}


class SeedLayer:
    """Stands in for an mpneuralnetwork layer: ``params`` maps a name to ``(param, grad)``."""

    def __init__(self, params: dict, grads: dict) -> None:
        self._params = params
        self._grads = grads

    @property
    def params(self) -> dict:
        return {name: (self._params[name], self._grads[name]) for name in self._params}


def random_tree(rng: np.random.Generator, shapes: dict = TREE_SHAPES, dtype=np.float32) -> dict:
    return {
        layer: {name: rng.standard_normal(shape).astype(dtype) for name, shape in leaves.items()}
        for layer, leaves in shapes.items()
    }


def relative_error(got, expected) -> float:
    """max |got - expected| / max |expected| over one array."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30))


def tree_relative_error(got, expected) -> float:
    """The worst :func:`relative_error` over matching leaves."""
    errors = jax.tree.map(relative_error, got, expected)
    return max(jax.tree.leaves(errors))


def run_seed(optimizer, params0: dict, grads_seq: list[dict]) -> list[dict]:
    """Runs an mpneuralnetwork optimizer on copies; returns the params after every step."""
    params = {layer: {n: p.copy() for n, p in leaves.items()} for layer, leaves in params0.items()}
    history = []
    for grads in grads_seq:
        layers = [SeedLayer(params[layer], {n: g.copy() for n, g in grads[layer].items()}) for layer in params]
        optimizer.step(layers)
        history.append({layer: {n: p.copy() for n, p in leaves.items()} for layer, leaves in params.items()})
    return history


def run_transform(tx, params0, grads_seq, apply=mpnn_opt.apply_updates) -> list:
    """Runs a gradient transformation under jit; returns the params after every step."""

    @jax.jit
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return apply(params, updates), state

    params = jax.tree.map(jax.numpy.asarray, params0)
    state = tx.init(params)
    history = []
    for grads in grads_seq:
        params, state = step(params, grads, state)
        history.append(jax.tree.map(np.asarray, params))
    return history


def counting_step(tx):
    """A jitted ``(params, state, grads) -> (params, state)`` step and the list its traces append to."""
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    return step, traces


def seed_model(optimizer, init_seed: int = 0):
    """Convolutional, Dense, BatchNormalization and Dropout layers, initialized from ``init_seed``."""
    from mpneuralnetwork.activations import ReLU
    from mpneuralnetwork.layers import BatchNormalization, Convolutional, Dense, Dropout, Flatten
    from mpneuralnetwork.losses import MSE
    from mpneuralnetwork.model import Model

    np.random.seed(init_seed)
    layers = [
        Convolutional(2, 3, input_shape=(1, 6, 6)),
        ReLU(),
        Flatten(),
        Dense(12),
        BatchNormalization(),
        ReLU(),
        Dropout(0.25),
        Dense(3),
    ]
    return Model(layers, MSE(), optimizer=optimizer)
