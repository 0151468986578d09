"""Train an mpneuralnetwork model with mpnn_opt's drop-in optimizer class: one import changes.

The model, the loss and the training loop are mpneuralnetwork 1.1.1's own; only the optimizer comes
from mpnn_opt. Data: three Gaussian blobs generated here. Prints mpneuralnetwork's progress per epoch,
then the test accuracy, and saves/loads a checkpoint to show that the optimizer state travels with it.
Run: python examples/legacy_mpneuralnetwork.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from mpneuralnetwork import serialization
from mpneuralnetwork.activations import ReLU
from mpneuralnetwork.layers import BatchNormalization, Dense, Dropout
from mpneuralnetwork.losses import CategoricalCrossEntropy
from mpneuralnetwork.model import Model

from mpnn_opt.optimizers import Adam  # was: from mpneuralnetwork.optimizers import Adam


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


if __name__ == "__main__":
    main()
