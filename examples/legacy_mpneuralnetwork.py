"""Train an mpneuralnetwork model with mpnn_opt's drop-in optimizer class: one import changes.

The model, the loss and the training loop are mpneuralnetwork 1.1.1's own; only the optimizer comes
from mpnn_opt. Data: three Gaussian blobs generated here. Prints mpneuralnetwork's progress per epoch,
then the test accuracy, and saves/loads a checkpoint to show that the optimizer state travels with it.
Then :func:`main_transform` trains the same model with ``Transform``, any gradient transformation behind
the same class API (here Adam with a warm-up cosine schedule after global-norm clipping), stops half-way,
checkpoints weights and optimizer state, and resumes in a new model.
Run: python examples/legacy_mpneuralnetwork.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import numpy as np
from mpneuralnetwork import serialization
from mpneuralnetwork.activations import ReLU
from mpneuralnetwork.layers import BatchNormalization, Dense, Dropout
from mpneuralnetwork.losses import CategoricalCrossEntropy
from mpneuralnetwork.model import Model

import mpnn_opt
from mpnn_opt.optimizers import Adam, Transform  # was: from mpneuralnetwork.optimizers import Adam


def make_blobs(samples_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])
    x = np.concatenate([center + rng.normal(0.0, 0.8, (samples_per_class, 2)) for center in centers])
    labels = np.repeat(np.arange(len(centers)), samples_per_class)
    return x.astype(np.float32), np.eye(len(centers), dtype=np.float32)[labels]


def main(epochs: int = 8) -> float:
    np.random.seed(0)  # mpneuralnetwork draws initial weights, shuffles and dropout masks from NumPy's global RNG
    x_train, y_train = make_blobs(300, seed=1)
    x_test, y_test = make_blobs(100, seed=2)
    layers = [Dense(32, input_size=2), BatchNormalization(), ReLU(), Dropout(0.1), Dense(3)]
    model = Model(layers, CategoricalCrossEntropy(), optimizer=Adam(learning_rate=0.01))
    model.train(x_train, y_train, epochs=epochs, batch_size=32)

    accuracy = float(np.mean(model.predict(x_test).argmax(axis=1) == y_test.argmax(axis=1)))
    print(f"test accuracy with mpnn_opt.optimizers.Adam: {accuracy:.3f}  (Adam steps taken: t = {model.optimizer.t})")

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "checkpoint")
        serialization.save_model(model, path)
        loaded = serialization.load_model(path + ".npz")  # rebuilds mpneuralnetwork's own Adam, with our state
        loaded.optimizer = Adam.from_seed(loaded.optimizer)  # continue with ours
        print(
            f"checkpoint reloaded: t = {loaded.optimizer.t}, {len(loaded.optimizer.params['momentums'])} moment arrays"
        )
    return accuracy


def make_model(optimizer) -> Model:
    layers = [Dense(32, input_size=2), BatchNormalization(), ReLU(), Dropout(0.1), Dense(3)]
    return Model(layers, CategoricalCrossEntropy(), optimizer=optimizer)


def main_transform(epochs: int = 8) -> float:
    """The same model with ``Transform``: clipping and a warm-up cosine schedule, a checkpoint half-way, resumed."""
    np.random.seed(0)
    x_train, y_train = make_blobs(300, seed=1)
    x_test, y_test = make_blobs(100, seed=2)
    # Model.train holds 20% out for evaluation and steps once per full batch of 32
    steps = epochs * ((len(x_train) - int(len(x_train) * 0.2)) // 32)
    schedule = mpnn_opt.schedules.warmup_cosine_decay_schedule(0.0, 0.02, steps // 10, steps)
    transform = mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(schedule))
    model = make_model(Transform(transform))
    model.train(x_train, y_train, epochs=epochs // 2, batch_size=32)

    with tempfile.TemporaryDirectory() as folder:
        # load_model cannot rebuild a Transform (it looks classes up in mpneuralnetwork): save the weights
        # with mpneuralnetwork, the transformation's state (its schedule's step count included) beside them
        path = str(Path(folder) / "checkpoint")
        serialization.save_model(model, path)
        optimizer = model.optimizer
        assert isinstance(optimizer, Transform)
        np.savez(path + "_optimizer.npz", *jax.tree.leaves(optimizer.state))

        optimizer = Transform(transform)
        resumed = make_model(optimizer)
        serialization.restore_model_weights(resumed.layers, dict(np.load(path + ".npz")))
        with np.load(path + "_optimizer.npz") as saved:
            leaves = [saved[f"arr_{index}"] for index in range(len(saved.files))]
        optimizer.state = jax.tree.unflatten(jax.tree.structure(optimizer.init(resumed.layers)), leaves)
    resumed.train(x_train, y_train, epochs=epochs - epochs // 2, batch_size=32)

    accuracy = float(np.mean(resumed.predict(x_test).argmax(axis=1) == y_test.argmax(axis=1)))
    count = int(optimizer.state[1][0].count)  # scale_by_adam's step count: both halves
    print(f"test accuracy with Transform(clip + warm-up cosine Adam), resumed half-way: {accuracy:.3f} ({count} steps)")
    return accuracy


if __name__ == "__main__":
    main()
    main_transform()
