"""The class adapter against mpneuralnetwork 1.1.1 itself: same training, same state, same files."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from mpneuralnetwork import optimizers as seed
from mpneuralnetwork import serialization
from mpneuralnetwork.model import Model

import mpnn_opt
from mpnn_opt.optimizers import Transform, _staging, _stepper
from mpnn_opt.optimizers import _adapter as ours
from oracles import SeedLayer, random_tree, relative_error, seed_model

CLASSES = ("SGD", "RMSprop", "Adam")
SETTINGS = {
    "SGD": dict(learning_rate=0.05, weight_decay=0.01, momentum=0.9),
    "RMSprop": dict(learning_rate=0.01, weight_decay=0.01, decay_rate=0.95, epsilon=1e-6),
    "Adam": dict(learning_rate=0.01, weight_decay=0.02, beta1=0.8, beta2=0.99, epsilon=1e-7),
}
SEED_STATE = {"SGD": ("velocities",), "RMSprop": ("cache",), "Adam": ("t", "momentums", "velocities")}


def _pair(name: str, mode: str | None) -> tuple:
    """Ours and the seed's optimizer in the same mode; 'off' is ours None vs the seed's weight_decay=0."""
    settings = SETTINGS[name]
    if mode == "off":
        return getattr(ours, name)(**settings, regularization=None), getattr(seed, name)(
            **dict(settings, weight_decay=0.0)
        )
    return getattr(ours, name)(**settings, regularization=mode), getattr(seed, name)(**settings, regularization=mode)


_model = seed_model  # the shared test model (tests/oracles.py)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((48, 1, 6, 6)).astype(np.float32), rng.standard_normal((48, 3)).astype(np.float32)


def _train(model: Model, epochs: int, rng_seed: int = 11) -> None:
    """Trains quietly; the NumPy global RNG (shuffling, dropout) is seeded so runs can be compared."""
    np.random.seed(rng_seed)
    x, y = _data()
    with contextlib.redirect_stdout(io.StringIO()):
        model.train(x, y, epochs=epochs, batch_size=12, auto_evaluation=0.0, model_checkpoint=False)


def _weights(model: Model) -> list[np.ndarray]:
    return [param.copy() for layer in model.layers for param, _ in layer.params.values()]


def _max_error(got: list, expected: list) -> float:
    return max(relative_error(a, b) for a, b in zip(got, expected))


def _snapshot(params: dict) -> dict:
    return {k: {n: p.copy() for n, p in v.items()} for k, v in params.items()}


def _unchanged(params: dict, snapshot: dict) -> bool:
    return all(np.array_equal(params[k][n], snapshot[k][n]) for k in params for n in params[k])


# --- the seed's surface ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_constructor_defaults_and_get_config_keys_are_the_seeds(name):
    ours_class, seed_class = getattr(ours, name), getattr(seed, name)
    defaults = lambda cls: {k: p.default for k, p in inspect.signature(cls).parameters.items()}  # noqa: E731
    assert defaults(ours_class) == defaults(seed_class)
    assert ours_class().get_config() == seed_class().get_config()
    assert set(ours_class().get_config()) == set(defaults(seed_class)) | {"type"}


@pytest.mark.parametrize("name", CLASSES)
def test_attributes_hold_the_constructor_arguments(name):
    optimizer = getattr(ours, name)(**SETTINGS[name], regularization="L1")
    for key, value in dict(SETTINGS[name], regularization="L1").items():
        assert getattr(optimizer, key) == value
    if name == "Adam":
        assert optimizer.t == 0


@pytest.mark.parametrize("regularization", ["L1", "L2"])
@pytest.mark.parametrize("param_name", ["weights", "kernels", "biases", "gamma", "beta"])
def test_apply_regularization_equals_the_seeds(param_name, regularization, rng):
    param = rng.standard_normal((4, 3)).astype(np.float32)
    got = ours.SGD(regularization=regularization, weight_decay=0.03).apply_regularization(param_name, param)
    expected = seed.SGD(regularization=regularization, weight_decay=0.03).apply_regularization(param_name, param)
    np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_apply_regularization_is_zero_when_regularization_is_off(rng):
    param = rng.standard_normal((4, 3)).astype(np.float32)
    assert ours.Adam(regularization=None).apply_regularization("weights", param) == 0


def test_invalid_hyperparameters_raise_naming_the_argument():
    with pytest.raises(ValueError, match="momentum"):
        ours.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="regularization"):
        ours.Adam(regularization="L3")


# --- training with mpneuralnetwork's Model ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["L1", "L2", "off"])
@pytest.mark.parametrize("name", CLASSES)
def test_model_trained_with_ours_matches_the_seeds_optimizer_over_epochs(name, mode):
    ours_optimizer, seed_optimizer = _pair(name, mode)
    ours_model, seed_model = _model(ours_optimizer), _model(seed_optimizer)
    _train(ours_model, epochs=4)
    _train(seed_model, epochs=4)
    assert _max_error(_weights(ours_model), _weights(seed_model)) <= 2e-5


@pytest.mark.parametrize("name", CLASSES)
def test_layers_keep_their_array_objects(name):
    model = _model(getattr(ours, name)())
    before = [id(param) for layer in model.layers for param, _ in layer.params.values()]
    _train(model, epochs=1)
    assert [id(param) for layer in model.layers for param, _ in layer.params.values()] == before


@pytest.mark.parametrize("name", CLASSES)
def test_step_leaves_the_gradients_untouched_where_the_seed_adds_the_penalty(name, rng):
    params, grads = random_tree(rng), random_tree(rng)
    copies = {layer: {n: g.copy() for n, g in leaves.items()} for layer, leaves in grads.items()}
    ours_optimizer, seed_optimizer = _pair(name, "L1")
    ours_optimizer.step([SeedLayer(params[k], grads[k]) for k in params])
    assert all(np.array_equal(grads[k][n], copies[k][n]) for k in grads for n in grads[k])
    seed_optimizer.step([SeedLayer({n: p.copy() for n, p in params[k].items()}, grads[k]) for k in params])
    assert not np.array_equal(grads["dense"]["weights"], copies["dense"]["weights"])


# --- hyperparameters between steps -----------------------------------------------------------------


def _run_both(ours_optimizer, seed_optimizer, params0: dict, grads_seq: list, changes: dict) -> tuple[dict, dict]:
    """Steps both optimizers on their own copies of ``params0``, setting ``changes[step]`` before a step."""
    ours_params, seed_params = _snapshot(params0), _snapshot(params0)
    for index, grads in enumerate(grads_seq):
        for key, value in changes.get(index, {}).items():
            setattr(ours_optimizer, key, value)
            setattr(seed_optimizer, key, value)
        ours_optimizer.step([SeedLayer(ours_params[k], grads[k]) for k in params0])
        seed_optimizer.step([SeedLayer(seed_params[k], {n: g.copy() for n, g in grads[k].items()}) for k in params0])
    return ours_params, seed_params


def _tree_error(got: dict, expected: dict) -> float:
    return max(relative_error(got[k][n], expected[k][n]) for k in got for n in got[k])


@pytest.mark.parametrize("name", CLASSES)
def test_changing_hyperparameters_between_steps_takes_effect_without_recompiling(name, rng, monkeypatch):
    changes = {
        "SGD": {2: dict(learning_rate=0.01), 4: dict(momentum=0.5, weight_decay=0.1)},
        "RMSprop": {2: dict(learning_rate=0.002), 4: dict(decay_rate=0.8, epsilon=1e-4)},
        "Adam": {2: dict(learning_rate=0.002), 4: dict(beta1=0.5, beta2=0.9, weight_decay=0.1)},
    }[name]
    params0, grads = random_tree(rng), [random_tree(rng) for _ in range(6)]
    ours_optimizer, seed_optimizer = _pair(name, "L2")
    _run_both(*_pair(name, "L2"), params0, grads[:1], {})  # compiles for these shapes
    traces = []
    real = ours._SeedProgram.transformation  # called in the body of the compiled update: once per trace
    monkeypatch.setattr(ours._SeedProgram, "transformation", lambda *args: traces.append(1) or real(*args))
    got, expected = _run_both(ours_optimizer, seed_optimizer, params0, grads, changes)
    assert _tree_error(got, expected) <= 1e-5
    assert traces == []


def test_an_invalid_value_set_between_steps_raises_at_assignment_naming_it_and_changes_nothing(rng):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer, seed_optimizer = ours.SGD(), seed.SGD()
    with pytest.raises(ValueError, match="learning_rate"):
        optimizer.learning_rate = -0.1
    assert optimizer.learning_rate == 0.01
    got, expected = _run_both(optimizer, seed_optimizer, params, [grads], {})
    assert _tree_error(got, expected) <= 1e-6


@pytest.mark.parametrize("name", CLASSES)
def test_parameters_appearing_later_start_from_fresh_state_as_in_the_seed(name, rng):
    params0, grads = random_tree(rng), [random_tree(rng) for _ in range(5)]
    ours_params, seed_params = _snapshot(params0), _snapshot(params0)
    ours_optimizer, seed_optimizer = _pair(name, "L2")
    for index, grad in enumerate(grads):
        present = ["dense"] if index < 2 else list(params0)  # 'conv' and 'norm' join at step 2
        ours_optimizer.step([SeedLayer(ours_params[k], grad[k]) for k in present])
        seed_optimizer.step([SeedLayer(seed_params[k], {n: g.copy() for n, g in grad[k].items()}) for k in present])
    assert max(relative_error(ours_params[k][n], seed_params[k][n]) for k in params0 for n in params0[k]) <= 1e-5


# --- state, serialization, resuming ----------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_params_has_the_seeds_names_and_dicts_keyed_by_id_equal_to_the_seeds_state(name, rng):
    params0, grads = random_tree(rng), [random_tree(rng) for _ in range(3)]
    ours_params, seed_params = _snapshot(params0), _snapshot(params0)
    ours_optimizer, seed_optimizer = _pair(name, "L2")
    for grad in grads:
        ours_optimizer.step([SeedLayer(ours_params[k], grad[k]) for k in params0])
        seed_optimizer.step([SeedLayer(seed_params[k], {n: g.copy() for n, g in grad[k].items()}) for k in params0])
    state, seed_state = ours_optimizer.params, seed_optimizer.params
    assert tuple(state) == SEED_STATE[name] == tuple(seed_state)
    for key in SEED_STATE[name]:
        if key == "t":
            assert state["t"] == seed_state["t"] == 3
            continue
        assert isinstance(state[key], dict)
        for k in params0:
            for n in params0[k]:
                got, expected = state[key][id(ours_params[k][n])], seed_state[key][id(seed_params[k][n])]
                assert isinstance(got, np.ndarray) and got.flags.writeable
                assert relative_error(got, expected) <= 1e-5


def test_state_written_into_params_is_used_by_the_next_step(rng):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = ours.SGD(learning_rate=0.1, regularization=None, momentum=0.5)
    layers = [SeedLayer(params[k], grads[k]) for k in params]
    optimizer.step(layers)
    weights = params["dense"]["weights"]
    velocity = np.full_like(weights, 2.0)
    np.copyto(optimizer.params["velocities"][id(weights)], velocity)  # what restore_model_weights does
    before = weights.copy()
    optimizer.step(layers)
    expected = before + (0.5 * velocity - 0.1 * grads["dense"]["weights"])
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


@pytest.mark.parametrize("name", CLASSES)
def test_save_model_and_load_model_round_trip_the_state_and_resume_exactly(name, tmp_path):
    ours_optimizer, _ = _pair(name, "L2")
    model = _model(ours_optimizer)
    _train(model, epochs=2)
    serialization.save_model(model, str(tmp_path / "checkpoint"))
    rng_state = np.random.get_state()
    _train_continue(model, epochs=2, rng_state=rng_state)
    uninterrupted = _weights(model)

    loaded = serialization.load_model(str(tmp_path / "checkpoint.npz"))
    assert type(loaded.optimizer) is getattr(seed, name)  # load_model rebuilds the seed's class by name
    loaded.optimizer = getattr(ours, name).from_seed(loaded.optimizer)
    _train_continue(loaded, epochs=2, rng_state=rng_state)
    assert _max_error(_weights(loaded), uninterrupted) <= 1e-6


@pytest.mark.parametrize("name", CLASSES)
def test_restore_model_weights_into_our_optimizer_resumes_like_an_uninterrupted_run(name, tmp_path):
    model = _model(_pair(name, "L1")[0])
    _train(model, epochs=2)
    serialization.save_model(model, str(tmp_path / "checkpoint"))
    rng_state = np.random.get_state()
    _train_continue(model, epochs=2, rng_state=rng_state)
    uninterrupted = _weights(model)

    data = np.load(tmp_path / "checkpoint.npz", allow_pickle=True)
    fresh = _model(_pair(name, "L1")[0], init_seed=99)
    serialization.restore_model_weights(fresh.layers, data, fresh.optimizer)
    if name == "Adam":
        import json

        fresh.optimizer.t = json.loads(str(data["model_config"]))["optimizer_globals"]["t"]
    _train_continue(fresh, epochs=2, rng_state=rng_state)
    assert _max_error(_weights(fresh), uninterrupted) <= 1e-6


def _train_continue(model: Model, epochs: int, rng_state: tuple) -> None:
    np.random.set_state(rng_state)
    x, y = _data()
    with contextlib.redirect_stdout(io.StringIO()):
        model.train(x, y, epochs=epochs, batch_size=12, auto_evaluation=0.0, model_checkpoint=False)


# --- safety: all or nothing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_grad, error, message",
    [
        (np.zeros((2, 3), np.float32), ValueError, "shape"),
        (np.zeros((1, 5), np.int32), TypeError, "dtype int32"),
    ],
    ids=["wrong-shape", "integer"],
)
def test_a_bad_gradient_raises_naming_layer_and_parameter_and_changes_no_layer(bad_grad, error, message, rng):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = ours.Adam()
    layers = [SeedLayer(params[k], grads[k]) for k in params]
    optimizer.step(layers)
    before, state_before = _snapshot(params), {id_: m.copy() for id_, m in optimizer.params["momentums"].items()}
    grads["norm"]["beta"] = bad_grad  # the last layer: every earlier layer would already be updated by the seed
    with pytest.raises(error, match=rf"layer_2 \(SeedLayer\) parameter 'beta'.*{message}"):
        optimizer.step(layers)
    assert _unchanged(params, before) and optimizer.t == 1
    assert all(np.array_equal(optimizer.params["momentums"][i], m) for i, m in state_before.items())


def test_a_failure_inside_the_update_changes_no_layer_and_names_the_cause(rng, monkeypatch):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = ours.RMSprop()
    before = _snapshot(params)

    def failing_update(*_):
        raise FloatingPointError("non-finite value at ['regularized']")

    real = _stepper.compiled
    monkeypatch.setattr(_stepper, "compiled", lambda *key: real(*key)._replace(update=failing_update))
    with pytest.raises(RuntimeError, match=r"RMSprop.step failed and changed no layer.*\['regularized'\]"):
        optimizer.step([SeedLayer(params[k], grads[k]) for k in params])
    assert _unchanged(params, before)


def test_layers_without_params_are_skipped(rng):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = ours.SGD(regularization=None, momentum=0.0, learning_rate=0.5)
    layers = [object(), SeedLayer(params["dense"], grads["dense"])]
    expected = params["dense"]["weights"] - 0.5 * grads["dense"]["weights"]
    optimizer.step(layers)
    np.testing.assert_allclose(params["dense"]["weights"], expected, rtol=1e-6)


# --- the example ------------------------------------------------------------------------------------


def test_legacy_example_trains_an_mpneuralnetwork_model_and_prints_each_epoch(capsys):
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "legacy_mpneuralnetwork.py"
    accuracy = runpy.run_path(str(example))["main"]()
    printed = capsys.readouterr().out
    assert accuracy > 0.9
    assert printed.count("[training]") == 8
    assert "checkpoint reloaded: t = " in printed


@pytest.mark.parametrize("name", CLASSES)
def test_step_donates_spare_buffers_not_the_live_state_and_outputs_reuse_their_memory(name, rng):
    # the live state is an input only (an interrupted step must leave it intact); the outputs go to last step's
    # new params (already copied into the layers) and last step's state (replaced by this step's), both donated.
    # A donated-but-unused argument is pruned by jit unless keep_unused=True; then its memory is not reused.
    # From the third step on every buffer is an output of the update (the first step's state and spare buffers
    # are placed from the host, which may leave them aliasing NumPy memory that XLA does not reuse)
    optimizer = getattr(ours, name)()
    params = {"weights": rng.standard_normal((4, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)}
    layers = [SeedLayer(params, {k: np.ones_like(v) for k, v in params.items()})]
    optimizer.step(layers)
    optimizer.step(layers)
    spare, live = optimizer._spare, optimizer._state
    addresses = jax.tree.map(lambda buffer: buffer.unsafe_buffer_pointer(), (spare.params, spare.state))
    optimizer.step(layers)
    assert all(buffer.is_deleted() for buffer in jax.tree.leaves((spare.params, spare.state)))
    assert not any(buffer.is_deleted() for buffer in jax.tree.leaves(live))
    assert optimizer._spare.state is live  # this step's old state is the next step's spare
    # each output lands in its own donated input (new momentums where the spare momentums were, ...):
    # paired otherwise, XLA must copy buffers around to avoid overwriting what it still reads
    now = jax.tree.map(lambda buffer: buffer.unsafe_buffer_pointer(), (optimizer._spare.params, optimizer._state))
    assert now == addresses


@pytest.mark.parametrize("name", CLASSES)
def test_the_live_state_is_the_aliass_own_state_and_params_maps_it_to_the_seeds_names(name, rng):
    # the classes keep what the alias's init gives on the packed tree; the seed's names exist only in params
    optimizer = getattr(ours, name)()
    params = {
        "weights": rng.standard_normal((4, 3)).astype(np.float32),
        "bias": rng.standard_normal(3).astype(np.float32),
    }
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    layers = [SeedLayer(params, grads)]
    optimizer.step(layers)
    packed = {"regularized": np.zeros(12, np.float32), "unregularized": np.zeros(3, np.float32)}
    alias = type(optimizer)._alias(regularization="L2", mask=_staging.GROUP_MASK, state_dtype=np.float32)
    expected = jax.eval_shape(alias.init, packed)
    assert jax.tree.structure(optimizer._state) == jax.tree.structure(expected)
    arrays = mpnn_opt.checkpoint.state_dict(optimizer._state)
    for slot, by_id in optimizer.params.items():
        if slot == "t":
            assert by_id == 1
            continue
        key = optimizer._slot_keys[slot]
        np.testing.assert_array_equal(by_id[id(params["weights"])].ravel(), arrays[f"regularized:{key}"])
        np.testing.assert_array_equal(by_id[id(params["bias"])], arrays[f"unregularized:{key}"])


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("_slot_keys", {"momentums": "scale_by_adam.mu", "velocities": "scale_by_adam.nu"}),
        ("_count_key", "scale_by_adam.step"),
    ],
)
def test_a_seed_name_mapped_to_a_key_the_state_lacks_raises_and_changes_nothing(attribute, value, rng, monkeypatch):
    # a rename in the transforms must not silently start every step from zero state or a wrong count
    monkeypatch.setattr(ours.Adam, attribute, value)
    params = {"weights": rng.standard_normal((4, 3)).astype(np.float32)}
    before = params["weights"].copy()
    optimizer = ours.Adam()
    with pytest.raises(RuntimeError, match="scale_by_adam.(mu|step)"):
        optimizer.step([SeedLayer(params, {"weights": np.ones((4, 3), np.float32)})])
    np.testing.assert_array_equal(params["weights"], before)
    assert optimizer.t == 0


# --- dispatch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        # importing changes no process setting (JAX's default is asynchronous dispatch)
        ("import jax, mpnn_opt.optimizers; print(jax.config.read('jax_cpu_enable_async_dispatch'))", "True"),
        # the explicit call, made before JAX starts, turns it off and says so
        (
            "import jax, mpnn_opt.optimizers as o; print(o.use_synchronous_dispatch(), jax.config.read('jax_cpu_enable_async_dispatch'))",
            "True False",
        ),
        # once JAX's backend runs, the setting can no longer take effect: the call says so and changes nothing
        (
            "import jax, mpnn_opt.optimizers as o; jax.numpy.ones(1); print(o.use_synchronous_dispatch(), jax.config.read('jax_cpu_enable_async_dispatch'))",
            "False True",
        ),
    ],
)
def test_the_dispatch_setting_is_an_explicit_call_not_an_import_side_effect(code, expected):
    # A fresh interpreter: in this one JAX's CPU backend is already running.
    env = {key: value for key, value in os.environ.items() if key != "JAX_CPU_ENABLE_ASYNC_DISPATCH"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_step_on_a_small_model_compiles_without_thread_splitting(rng):
    # mpnn_opt.cpu_compiler_options of the packed buffers: XLA:CPU would split these 100k-float loops over threads
    optimizer = ours.Adam()
    params = {"weights": rng.standard_normal((316, 316)).astype(np.float32), "bias": np.zeros(316, np.float32)}
    layers = [SeedLayer(params, {k: np.ones_like(v) for k, v in params.items()})]
    optimizer.step(layers)
    assert optimizer._host is not None
    layout, host_params, host_grads, options = optimizer._host[:4]
    assert dict(options) == {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}
    update = _stepper.compiled(optimizer._program(), layout, options).update
    spare = optimizer._spare
    arguments = (host_params, host_grads, optimizer._state, spare.params, spare.state, 1, optimizer._hyper("float32"))
    text = update.lower(*arguments).compile().as_text()
    assert "outer_dimension_partitions" not in text


@pytest.mark.parametrize(
    "make",
    [
        ours.SGD,
        ours.RMSprop,
        lambda: ours.Adam(regularization="L1"),
        lambda: Transform(mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(1e-3))),
    ],
)
def test_the_first_step_compiles_only_the_update_and_later_steps_compile_nothing(make, rng):
    # Every XLA compilation is reported to JAX's monitoring listeners. Array creation at the first step (spare
    # buffers, the loaded state) goes through the host: jnp.zeros would compile one program per shape, and a
    # committed spare buffer would change the update's signature and compile it again at the second step.
    compiles = []

    def listen(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration_secs)

    shape = (7, int(rng.integers(40, 4000)))  # a layout no other test compiled
    params = {"weights": rng.standard_normal(shape).astype(np.float32), "bias": np.zeros(7, np.float32)}
    layers = [SeedLayer(params, {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()})]
    optimizer = make()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        optimizer.step(layers)
        first = len(compiles)
        for _ in range(3):
            optimizer.step(layers)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    expected_first = 2 if isinstance(optimizer, Transform) else 1  # Transform runs the transformation's init
    assert (first, len(compiles)) == (expected_first, expected_first)
