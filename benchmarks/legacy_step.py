"""step(layers) of mpnn_opt.optimizers against mpneuralnetwork's own optimizers, in one process.

Three models (an MLP of ~100k parameters, a small CNN, an MLP of ~10M parameters); for each class
(SGD, RMSprop, Adam, default settings) the median time of one ``step(layers)`` over many steps on the
same kind of gradients (recomputed between steps, untimed), then one full ``Model.train`` epoch
(6 batches; best of two runs, the first warms up) with each. Prints a markdown table of times and
ratios (ours / seed, lower is better). Run: ``JAX_PLATFORMS=cpu python benchmarks/legacy_step.py``;
``taskset -c 0`` in front pins both sides to one core (fair on a busy machine: XLA otherwise splits
its loops across threads, which costs more than it gains when the cores are shared).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np
from mpneuralnetwork import optimizers as seed
from mpneuralnetwork.activations import ReLU
from mpneuralnetwork.layers import Convolutional, Dense, Flatten, MaxPooling2D
from mpneuralnetwork.losses import CategoricalCrossEntropy
from mpneuralnetwork.model import Model

from mpnn_opt import optimizers as ours

CLASSES = ("SGD", "RMSprop", "Adam")


def mlp_100k() -> tuple[list, tuple]:
    return [Dense(256, input_size=256), ReLU(), Dense(128), ReLU(), Dense(10)], (256,)


def small_cnn() -> tuple[list, tuple]:
    layers = [Convolutional(8, 3, input_shape=(1, 28, 28)), ReLU(), MaxPooling2D(2), Flatten(), Dense(10)]
    return layers, (1, 28, 28)


def mlp_10m() -> tuple[list, tuple]:
    return [Dense(2048, input_size=1024), ReLU(), Dense(2048), ReLU(), Dense(2048), ReLU(), Dense(10)], (1024,)


EPOCH_BATCHES = 6
MODELS = {"MLP ~100k": (mlp_100k, 256, 60), "small CNN": (small_cnn, 32, 60), "MLP ~10M": (mlp_10m, 64, 15)}


def build(factory, optimizer) -> tuple[Model, tuple]:
    np.random.seed(0)
    layers, input_shape = factory()
    return Model(layers, CategoricalCrossEntropy(), optimizer=optimizer), input_shape


def data(input_shape: tuple, samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, *input_shape)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, samples)]
    return x, y


def numpy_pass(model: Model, x: np.ndarray, y: np.ndarray) -> None:
    """The model's NumPy forward and backward pass on one batch: what ``Model.train`` does before each step."""
    predictions, _ = model.evaluate(x, y, training=True, compute_metrics=False)
    grad = model.loss.prime(predictions, y)
    for layer in reversed(model.layers):
        grad = layer.backward(grad)


def median_step(model: Model, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Median seconds of ``optimizer.step(layers)`` on one batch's gradients (recomputed, untimed)."""
    times = []
    for i in range(steps + 3):
        numpy_pass(model, x, y)
        start = time.perf_counter()
        model.optimizer.step(model.layers)
        if i >= 3:  # warm-up (compilation) excluded
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_time(model: Model, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model.train(x, y, epochs=1, batch_size=batch, auto_evaluation=0.0, model_checkpoint=False)
    return time.perf_counter() - start


def main() -> None:
    ours.use_synchronous_dispatch()  # step waits for its result: no thread hand-offs (before JAX starts)
    cores = len(os.sched_getaffinity(0))
    print(
        f"# mpnn_opt.optimizers step(layers) vs mpneuralnetwork 1.1.1 ({platform.machine()}, {cores} usable cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, numpy {np.__version__}, python {sys.version.split()[0]})\n"
    )
    print(
        "| model | params | optimizer | seed step (ms) | ours step (ms) | ratio | seed epoch (s) | ours epoch (s) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name, (factory, batch, steps) in MODELS.items():
        for name in CLASSES:
            row = {}
            for side, module in (("seed", seed), ("ours", ours)):
                model, input_shape = build(factory, getattr(module, name)())
                x, y = data(input_shape, batch)
                row[side] = median_step(model, x, y, steps)
                xe, ye = data(input_shape, batch * EPOCH_BATCHES)
                row[side + "_epoch"] = min(epoch_time(model, xe, ye, batch) for _ in range(2))  # the first warms up
            count = sum(p.size for layer in model.layers for p, _ in layer.params.values())
            print(
                f"| {model_name} | {count:,} | {name} | {row['seed'] * 1e3:.3f} | {row['ours'] * 1e3:.3f} | "
                f"{row['ours'] / row['seed']:.2f}x | {row['seed_epoch']:.3f} | {row['ours_epoch']:.3f} | "
                f"{row['ours_epoch'] / row['seed_epoch']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
