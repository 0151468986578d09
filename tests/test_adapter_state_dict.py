"""torch's ``state_dict()`` / ``load_state_dict()`` on the class adapter: keyed by layer position and name.

Oracles: an uninterrupted run in this process (compared bit for bit with a run resumed in a new
process, where every array has a new id), and mpneuralnetwork 1.1.1's own Adam (to float rounding).
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from mpneuralnetwork import optimizers as seed
from mpneuralnetwork import serialization
from mpneuralnetwork.model import Model

import mpnn_opt
from mpnn_opt.optimizers import SGD, Adam, RMSprop, Transform
from oracles import SeedLayer, random_tree, relative_error, seed_model

SETTINGS = {
    "SGD": dict(learning_rate=0.05, weight_decay=0.01, momentum=0.9),
    "RMSprop": dict(learning_rate=0.01, weight_decay=0.01, decay_rate=0.95, epsilon=1e-6),
    "Adam": dict(learning_rate=0.01, weight_decay=0.02, beta1=0.8, beta2=0.99, epsilon=1e-7),
}
EPOCHS_BEFORE, EPOCHS_AFTER = 2, 2  # 4 steps an epoch
# the parameters of _model's layers, by position: layer_3 (Dense before BatchNormalization) has no biases
PARAMETERS = (
    "layer_0/kernels",
    "layer_0/biases",
    "layer_3/weights",
    "layer_4/gamma",
    "layer_4/beta",
    "layer_7/weights",
    "layer_7/biases",
)


def _optimizer(kind: str):
    if kind == "Transform":
        return Transform(mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(1e-3)))
    return {"SGD": SGD, "RMSprop": RMSprop, "Adam": Adam}[kind](**SETTINGS[kind])


_model = seed_model  # the shared test model (tests/oracles.py)


def _train(model: Model, epochs: int, rng_state: tuple) -> None:
    """Trains quietly from the NumPy global RNG state ``rng_state`` (shuffling, dropout)."""
    np.random.set_state(rng_state)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((48, 1, 6, 6)).astype(np.float32), rng.standard_normal((48, 3)).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        model.train(x, y, epochs=epochs, batch_size=12, auto_evaluation=0.0, model_checkpoint=False)


def _weights(model: Model) -> list[np.ndarray]:
    return [param.copy() for layer in model.layers for param, _ in layer.params.values()]


def resume_from(kind: str, directory: pathlib.Path) -> None:
    """The new process's part: rebuild the model, load the weights and the optimizer's state dict, train on.

    Writes the weights and the optimizer's state dict it ends with to ``resumed.npz`` and ``state.npz``.
    """
    model = _model(_optimizer(kind), init_seed=99)  # other initial weights: the checkpoint must replace them
    with np.load(directory / "weights.npz") as weights:
        serialization.restore_model_weights(model.layers, dict(weights))
    with np.load(directory / "optimizer.npz") as saved:
        model.optimizer.load_state_dict(dict(saved))
    _train(model, EPOCHS_AFTER, pickle.loads((directory / "rng.pickle").read_bytes()))
    np.savez(directory / "resumed.npz", *_weights(model))
    np.savez(directory / "state.npz", **model.optimizer.state_dict())


_CHILD = """
import pathlib, sys
sys.path.insert(0, {tests!r})
import test_adapter_state_dict
test_adapter_state_dict.resume_from({kind!r}, pathlib.Path({directory!r}))
"""


# --- (a) a new process resumes bit for bit ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["Adam", "SGD", "Transform"])
def test_a_model_rebuilt_in_a_new_process_resumes_bit_for_bit(kind, tmp_path):
    model = _model(_optimizer(kind))
    _train(model, EPOCHS_BEFORE, np.random.RandomState(11).get_state())
    np.savez(tmp_path / "weights.npz", **serialization.get_model_weights(model.layers))
    np.savez(tmp_path / "optimizer.npz", **model.optimizer.state_dict())
    rng_state = np.random.get_state()
    (tmp_path / "rng.pickle").write_bytes(pickle.dumps(rng_state))
    _train(model, EPOCHS_AFTER, rng_state)  # the uninterrupted run goes on in this process

    code = _CHILD.format(tests=str(pathlib.Path(__file__).parent), kind=kind, directory=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    with np.load(tmp_path / "resumed.npz") as resumed:
        got = [resumed[f"arr_{index}"] for index in range(len(resumed.files))]
    expected = _weights(model)
    assert len(got) == len(expected) == len(PARAMETERS)
    for got_param, expected_param in zip(got, expected):
        np.testing.assert_array_equal(got_param, expected_param)
    with np.load(tmp_path / "state.npz") as state:
        resumed_state = dict(state)
    expected_state = model.optimizer.state_dict()
    assert resumed_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        np.testing.assert_array_equal(resumed_state[key], value, err_msg=key)
    if kind == "Adam":
        assert resumed_state["t"] == 4 * (EPOCHS_BEFORE + EPOCHS_AFTER)  # t was restored, then counted on


# --- (b) the keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, slots",
    [("SGD", ("velocities",)), ("RMSprop", ("cache",)), ("Adam", ("momentums", "velocities"))],
)
def test_the_seed_classes_key_their_state_by_layer_position_parameter_name_and_slot(kind, slots):
    model = _model(_optimizer(kind))
    _train(model, 1, np.random.RandomState(11).get_state())

    state = model.optimizer.state_dict()

    expected = {f"{parameter}:{slot}" for parameter in PARAMETERS for slot in slots}
    assert set(state) == expected | ({"t"} if kind == "Adam" else set())
    assert all(state[key].dtype == np.float32 for key in expected)
    if kind == "Adam":
        assert state["t"].dtype == np.int64 and state["t"].shape == () and state["t"] == 4
    # the values are those of the seed's id-keyed dicts, copied
    kernels = model.layers[0].params["kernels"][0]
    for slot in slots:
        np.testing.assert_array_equal(state[f"layer_0/kernels:{slot}"], model.optimizer.params[slot][id(kernels)])
        state[f"layer_0/kernels:{slot}"] += 1.0
        assert not np.array_equal(state[f"layer_0/kernels:{slot}"], model.optimizer.params[slot][id(kernels)])


def test_transform_keys_its_state_with_the_checkpoint_keys_of_the_layer_tree():
    model = _model(_optimizer("Transform"))
    _train(model, 1, np.random.RandomState(11).get_state())

    state = model.optimizer.state_dict()

    moments = {
        f"{parameter}:scale_by_adam.{field}" for parameter in PARAMETERS for field in ("momentums", "velocities")
    }
    assert set(state) == moments | {"scale_by_adam.count"}  # clip_by_global_norm keeps no state
    assert state["scale_by_adam.count"] == 4
    assert all(isinstance(value, np.ndarray) for value in state.values())
    state["layer_0/kernels:scale_by_adam.momentums"] += 1.0  # a writable copy
    again = model.optimizer.state_dict()["layer_0/kernels:scale_by_adam.momentums"]
    assert not np.array_equal(state["layer_0/kernels:scale_by_adam.momentums"], again)


def test_an_optimizer_that_has_not_stepped_has_an_empty_state_dict_but_adams_count():
    assert SGD().state_dict() == {}
    assert Transform(mpnn_opt.adam(1e-3)).state_dict() == {}
    assert Adam().state_dict() == {"t": 0}


# --- (c) what does not fit raises, naming the key, and changes nothing -------------------------------


def _layers(rng: np.random.Generator, params: dict) -> list:
    return [
        SeedLayer(leaves, {name: rng.standard_normal(p.shape).astype(p.dtype) for name, p in leaves.items()})
        for leaves in params.values()
    ]


SHAPES = {"dense": {"weights": (4, 3), "biases": (1, 3)}, "norm": {"gamma": (1, 3)}}


def _trained_state(kind: str, rng: np.random.Generator) -> dict:
    optimizer = _optimizer(kind)
    params = random_tree(rng, SHAPES)
    for _ in range(3):
        optimizer.step(_layers(rng, params))
    return optimizer.state_dict()


MOMENT = {"Adam": "layer_0/weights:momentums", "Transform": "layer_0/weights:scale_by_adam.momentums"}


@pytest.mark.parametrize("kind", ["Adam", "Transform"])
@pytest.mark.parametrize("strict", [True, False])
def test_an_entry_of_another_shape_raises_at_the_step_naming_the_key_and_changes_nothing(kind, strict, rng):
    saved = _trained_state(kind, rng)
    saved[MOMENT[kind]] = np.zeros((3, 4), np.float32)
    optimizer = _optimizer(kind)
    optimizer.load_state_dict(saved, strict=strict)
    params = random_tree(rng, SHAPES)
    before = {layer: {name: p.copy() for name, p in leaves.items()} for layer, leaves in params.items()}

    with pytest.raises(ValueError, match=f"'{MOMENT[kind]}' has shape \\(3, 4\\).*\\(4, 3\\)"):
        optimizer.step(_layers(rng, params))

    for layer, leaves in params.items():
        for name, param in leaves.items():
            np.testing.assert_array_equal(param, before[layer][name])
    state = optimizer.state_dict()  # still the loaded entries, waiting for a step
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key], value)


@pytest.mark.parametrize("kind", ["Adam", "Transform"])
def test_load_state_dict_copies_the_entries(kind, rng):
    saved = _trained_state(kind, rng)
    kept = {key: value.copy() for key, value in saved.items()}
    optimizer = _optimizer(kind)
    optimizer.load_state_dict(saved)

    saved[MOMENT[kind]][...] = 0.0  # the caller's arrays change after the load

    np.testing.assert_array_equal(optimizer.state_dict()[MOMENT[kind]], kept[MOMENT[kind]])


UNKNOWN = {"Adam": "layer_9/weights:momentums", "Transform": "layer_9/weights:scale_by_adam.momentums"}


@pytest.mark.parametrize("kind", ["Adam", "Transform"])
def test_an_entry_for_no_parameter_of_the_model_raises_naming_it_unless_strict_is_false(kind, rng):
    saved = _trained_state(kind, rng)
    params = random_tree(rng, SHAPES)
    layers = _layers(rng, params)
    extended = {**saved, UNKNOWN[kind]: np.ones((4, 3), np.float32)}

    strict = _optimizer(kind)
    strict.load_state_dict(extended)
    before = [p.copy() for leaves in params.values() for p in leaves.values()]
    with pytest.raises(ValueError, match=f"'{UNKNOWN[kind]}' is for no parameter of this model"):
        strict.step(layers)
    for param, old in zip([p for leaves in params.values() for p in leaves.values()], before):
        np.testing.assert_array_equal(param, old)

    # strict=False ignores the unknown entry: the step is the one the clean state dict gives
    lenient, clean = _optimizer(kind), _optimizer(kind)
    lenient.load_state_dict(extended, strict=False)
    clean.load_state_dict(saved)
    copies = {layer: {name: p.copy() for name, p in leaves.items()} for layer, leaves in params.items()}
    lenient.step(layers)
    clean.step([SeedLayer(copies[key], dict(layer._grads)) for key, layer in zip(copies, layers)])
    for layer, leaves in params.items():
        for name, param in leaves.items():
            np.testing.assert_array_equal(param, copies[layer][name])
    assert lenient.state_dict().keys() == saved.keys()


@pytest.mark.parametrize("kind", ["Adam", "Transform"])
def test_a_parameter_without_an_entry_raises_under_strict_and_starts_afresh_otherwise(kind, rng):
    saved = _trained_state(kind, rng)
    del saved[MOMENT[kind]]
    params = random_tree(rng, SHAPES)

    strict = _optimizer(kind)
    strict.load_state_dict(saved)
    with pytest.raises(ValueError, match=f"'{MOMENT[kind]}' is missing"):
        strict.step(_layers(rng, params))

    lenient = _optimizer(kind)
    lenient.load_state_dict(saved, strict=False)
    lenient.step(_layers(rng, params))
    assert lenient.state_dict().keys() == {*saved, MOMENT[kind]}


@pytest.mark.parametrize(
    "saved, error, message",
    [
        ({"t": np.array(2), "layer_0/weights:cache": np.zeros(3, np.float32)}, ValueError, "'layer_0/weights:cache'"),
        ({"layer_0/weights:momentums": np.zeros(3, np.float32)}, ValueError, "'t' is missing"),
        ({"t": np.array(2), "layer_0/weights:momentums": np.zeros(3)}, ValueError, "dtype float64"),
        ({"t": np.array(-1)}, ValueError, "'t'.*>= 0"),
        ({"t": np.array(1.5)}, TypeError, "'t'.*integer"),
        ([("t", 1)], TypeError, "mapping"),
    ],
)
def test_load_state_dict_refuses_what_the_class_never_writes_and_changes_nothing(saved, error, message, rng):
    optimizer = Adam()
    params = random_tree(rng, SHAPES)
    optimizer.step(_layers(rng, params))
    before = optimizer.state_dict()

    with pytest.raises(error, match=message):
        optimizer.load_state_dict(saved)

    after = optimizer.state_dict()
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[key], before[key]) for key in before)


def test_strict_false_ignores_keys_of_other_slots_at_load():
    optimizer = SGD()
    optimizer.load_state_dict({"layer_0/weights:momentums": np.zeros(3, np.float32), "t": np.array(3)}, strict=False)
    assert optimizer.state_dict() == {}


# --- (d) the seed's state, through ours, continues like the seed ------------------------------------


def test_the_state_dict_of_a_seed_adam_converted_with_from_seed_continues_like_the_seed(rng):
    settings = dict(SETTINGS["Adam"], regularization="L2")
    shapes = {"dense": {"weights": (6, 5), "biases": (1, 5)}, "norm": {"gamma": (1, 5), "beta": (1, 5)}}
    grads_seq = [random_tree(rng, shapes) for _ in range(6)]
    params = random_tree(rng, shapes)

    def layers(params: dict, step: int) -> list:
        grads = grads_seq[step]  # copies: the seed adds its penalty into them in place
        return [SeedLayer(params[key], {name: g.copy() for name, g in grads[key].items()}) for key in params]

    oracle = seed.Adam(**settings)
    for step in range(3):
        oracle.step(layers(params, step))
    converted = Adam.from_seed(oracle)
    with pytest.raises(ValueError, match="pass the layers"):
        converted.state_dict()  # keyed by array only: ours cannot name it yet
    saved = {key: value.copy() for key, value in converted.state_dict(layers(params, 0)).items()}
    assert saved["t"] == 3

    resumed_params = {key: {name: p.copy() for name, p in leaves.items()} for key, leaves in params.items()}
    resumed = Adam(**settings)
    resumed.load_state_dict(saved)
    for step in range(3, 6):
        oracle.step(layers(params, step))
        resumed.step(layers(resumed_params, step))
    for key, leaves in params.items():
        for name, expected in leaves.items():
            assert relative_error(resumed_params[key][name], expected) <= 2e-6, (key, name)
    assert resumed.t == oracle.t == 6


def test_transform_refuses_an_entry_of_another_dtype_naming_it(rng):
    saved = _trained_state("Transform", rng)
    saved["scale_by_adam.count"] = saved["scale_by_adam.count"].astype(np.int64)  # the state's count is int32
    optimizer = _optimizer("Transform")
    optimizer.load_state_dict(saved)

    with pytest.raises(ValueError, match="'scale_by_adam.count': saved int64\\[\\], template int32\\[\\]"):
        optimizer.step(_layers(rng, random_tree(rng, SHAPES)))
