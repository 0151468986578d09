"""``Transform(tx)``: any gradient transformation behind mpneuralnetwork's optimizer API.

Oracles: our ``Adam`` class and mpneuralnetwork 1.1.1's ``Adam`` training the same ``Model``; the
functional loop (``tests/oracles.run_transform``, optax's ``apply_updates`` for optax's ``adamw``) on the
same gradients; an uninterrupted run of the same ``Transform``, compared bit for bit.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import flax.serialization
import jax
import numpy as np
import optax
import pytest
from faults import FaultAtLine
from mpneuralnetwork import optimizers as seed
from mpneuralnetwork import serialization
from mpneuralnetwork.model import Model

import mpnn_opt
from mpnn_opt.optimizers import Adam, Transform, _stepper, _transform
from oracles import SeedLayer, random_tree, relative_error, run_transform, seed_model

ADAM: dict[str, Any] = dict(learning_rate=0.01, weight_decay=0.02, beta1=0.8, beta2=0.99, epsilon=1e-7)
SMALL = {"dense": {"weights": (6, 5), "biases": (1, 5)}, "norm": {"gamma": (1, 5), "beta": (1, 5)}}


_model = seed_model  # the shared test model (tests/oracles.py)


def _train(model: Model, epochs: int, rng_state: Any = None) -> None:
    """Trains quietly; the NumPy global RNG (shuffling, dropout) is seeded, or set to ``rng_state``."""
    if rng_state is None:
        np.random.seed(11)
    else:
        np.random.set_state(rng_state)
    data = np.random.default_rng(7)
    x, y = data.standard_normal((48, 1, 6, 6)).astype(np.float32), data.standard_normal((48, 3)).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        model.train(x, y, epochs=epochs, batch_size=12, auto_evaluation=0.0, model_checkpoint=False)


def _weights(model: Model) -> list[np.ndarray]:
    return [param.copy() for layer in model.layers for param, _ in layer.params.values()]


def _by_layer(tree: dict) -> dict:
    """``{"dense": ..., "norm": ...}`` as the adapter names it: ``{"layer_0": ..., "layer_1": ...}``."""
    return {f"layer_{index}": leaves for index, leaves in enumerate(tree.values())}


def _copy(tree: dict) -> dict:
    return {k: {n: np.array(a, copy=True) for n, a in leaves.items()} for k, leaves in tree.items()}


def _step_all(optimizer, params: dict, grads_seq: list[dict]) -> None:
    for grads in grads_seq:
        optimizer.step([SeedLayer(params[k], grads[k]) for k in params])


def _same_tree(got: dict, expected: dict) -> bool:
    return all(np.array_equal(got[k][n], expected[k][n]) for k in expected for n in expected[k])


def _same_state(got, expected) -> bool:
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), got, expected)
    return jax.tree.structure(got) == jax.tree.structure(expected) and all(jax.tree.leaves(same))


def _warmup_cosine_clipped() -> mpnn_opt.GradientTransformation:
    schedule = mpnn_opt.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)
    return mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(schedule))


# --- the same training as the class optimizers and the functional loop ----------------------------------


def test_transform_of_adam_trains_a_model_to_the_weights_of_our_adam_and_of_the_seeds():
    models = [_model(Transform(mpnn_opt.adam(**ADAM))), _model(Adam(**ADAM)), _model(seed.Adam(**ADAM))]
    for model in models:
        _train(model, epochs=4)
    transformed, ours, seeds = (_weights(model) for model in models)
    assert max(relative_error(a, b) for a, b in zip(transformed, ours)) <= 1e-6
    assert max(relative_error(a, b) for a, b in zip(transformed, seeds)) <= 2e-5


@pytest.mark.parametrize(
    "make, apply",
    [
        (lambda: optax.adamw(1e-3), optax.apply_updates),
        (lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1, momentum=0.9)), optax.apply_updates),
        (_warmup_cosine_clipped, mpnn_opt.apply_updates),
        # per-leaf clipping and name masks see the model's leaves by name, not the packed buffers
        (lambda: mpnn_opt.chain(mpnn_opt.clip_by_leaf_norm(0.3), mpnn_opt.sgd(0.1)), mpnn_opt.apply_updates),
    ],
    ids=["optax-adamw", "optax-clipped-sgd", "warmup-cosine-clipped-adam", "leaf-clipped-sgd"],
)
def test_transform_steps_hand_driven_layers_as_the_functional_loop_does_on_the_same_gradients(make, apply, rng):
    params0, grads = random_tree(rng), [random_tree(rng) for _ in range(6)]
    params, optimizer = _copy(params0), Transform(make())
    expected = run_transform(make(), _by_layer(params0), [_by_layer(g) for g in grads], apply=apply)
    for step, grad in enumerate(grads):
        optimizer.step([SeedLayer(params[k], grad[k]) for k in params])
        got = _by_layer(params)
        assert max(relative_error(got[k][n], expected[step][k][n]) for k in got for n in got[k]) <= 1e-6, step


def test_the_state_is_the_transformations_own_init_structure_over_the_layer_names(rng):
    params, grads = random_tree(rng, SMALL), random_tree(rng, SMALL)
    tx = optax.adamw(1e-3)
    assert Transform(tx).state is None  # before the first step
    optimizer = Transform(tx)
    optimizer.step([SeedLayer(params[k], grads[k]) for k in params])
    state, expected = optimizer.state, jax.eval_shape(tx.init, _by_layer(params))
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    assert set(state[0].mu) == {"layer_0", "layer_1"}
    assert set(state[0].mu["layer_0"]) == {"weights", "biases"}
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))  # kept on the device
    assert optimizer.get_config() == {"type": "Transform"}


def test_a_state_handed_out_stays_valid_while_later_steps_reuse_spare_buffers(rng):
    # steps write their outputs into donated spares (last step's input state); a state read through
    # Transform.state must never be one of them, or the caller would hold deleted arrays
    params, grads = random_tree(rng, SMALL), [random_tree(rng, SMALL) for _ in range(4)]
    optimizer = Transform(mpnn_opt.adam(1e-2))
    _step_all(optimizer, params, grads[:1])
    handed_out = optimizer.state
    copies = jax.tree.map(np.array, handed_out)
    _step_all(optimizer, params, grads[1:])
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(handed_out))
    assert _same_state(jax.tree.map(np.asarray, handed_out), copies)
    # not handed out: the step before last's state was donated, and its memory holds the new state
    spare = optimizer._spare
    addresses = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(spare.state)]
    _step_all(optimizer, params, grads[:1])
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(spare.state))
    assert sorted(leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(vars(optimizer)["_state"])) == sorted(
        addresses
    )


def test_a_state_leaf_the_update_returns_as_it_is_is_never_donated(rng, monkeypatch):
    # jit may return an unchanged input leaf (an injected constant learning rate) as the same array (JAX
    # 0.10 copies it; forwarding is an optimization JAX has had): donating last step's state would then
    # delete a leaf of the live state. Simulated: the update hands back its input's learning-rate leaf.
    real = _stepper.compiled

    def forwarding(*key):
        functions = real(*key)

        def update(params, grads, state, *rest):
            new_params, new_state = functions.update(params, grads, state, *rest)
            return new_params, new_state._replace(hyperparams=state.hyperparams)

        return functions._replace(update=update)

    monkeypatch.setattr(_stepper, "compiled", forwarding)
    make = mpnn_opt.inject_hyperparams(mpnn_opt.adam)
    params0, grads = random_tree(rng, SMALL), [random_tree(rng, SMALL) for _ in range(5)]
    params, optimizer = _copy(params0), Transform(make(learning_rate=1e-2))
    _step_all(optimizer, params, grads)
    assert vars(optimizer)["_spare"].forwards
    expected = run_transform(make(learning_rate=1e-2), _by_layer(params0), [_by_layer(g) for g in grads])
    assert _same_tree(_by_layer(params), expected[-1])
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(optimizer.state))


def test_the_gradients_are_left_untouched_and_layers_keep_their_arrays(rng):
    params, grads = random_tree(rng), random_tree(rng)
    before_grads, ids = _copy(grads), [id(a) for leaves in params.values() for a in leaves.values()]
    Transform(mpnn_opt.adam(regularization="L1")).step([SeedLayer(params[k], grads[k]) for k in params])
    assert _same_tree(grads, before_grads)
    assert [id(a) for leaves in params.values() for a in leaves.values()] == ids


# --- hyperparameters between steps -------------------------------------------------------------------


def test_an_injected_hyperparameter_changed_between_steps_takes_effect_without_recompiling(rng, monkeypatch):
    params0, grads = random_tree(rng), [random_tree(rng) for _ in range(5)]
    tx = mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=1e-2)
    params, optimizer = _copy(params0), Transform(tx)
    _step_all(optimizer, params, grads[:1])  # compiles for these shapes
    traces = []
    real = _transform._Fixed.transformation  # called in the body of the compiled update: once per trace
    monkeypatch.setattr(_transform._Fixed, "transformation", lambda *args: traces.append(1) or real(*args))
    optimizer.state = mpnn_opt.with_hyperparam(optimizer.state, "learning_rate", 1e-3)
    _step_all(optimizer, params, grads[1:3])
    optimizer.set_hyperparameter("weight_decay", 0.1)
    _step_all(optimizer, params, grads[3:])
    assert traces == []

    # the functional loop, with the same values set in its state at the same steps
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    expected = _by_layer(params0)
    state = tx.init(expected)
    for index, grad in enumerate(grads):
        if index == 1:
            state = mpnn_opt.with_hyperparam(state, "learning_rate", 1e-3)
        if index == 3:
            state = mpnn_opt.with_hyperparam(state, "weight_decay", 0.1)
        expected, state = step(expected, state, _by_layer(grad))
    got = _by_layer(params)
    assert max(relative_error(got[k][n], expected[k][n]) for k in got for n in got[k]) <= 1e-6
    assert float(mpnn_opt.read_value(optimizer.state, "learning_rate")) == np.float32(1e-3)


# --- checkpoint and resume ---------------------------------------------------------------------------


def _save_flax(optimizer: Transform, path) -> None:
    path.write_bytes(flax.serialization.to_bytes(optimizer.state))


def _load_flax(optimizer: Transform, layers: list, path) -> None:
    optimizer.state = flax.serialization.from_bytes(optimizer.init(layers), path.read_bytes())


def _save_numpy(optimizer: Transform, path) -> None:
    np.savez(path, *jax.tree.leaves(optimizer.state))


def _load_numpy(optimizer: Transform, layers: list, path) -> None:
    with np.load(path) as data:
        leaves = [data[f"arr_{index}"] for index in range(len(data.files))]
    optimizer.state = jax.tree.unflatten(jax.tree.structure(optimizer.init(layers)), leaves)


@pytest.mark.parametrize("save, load", [(_save_flax, _load_flax), (_save_numpy, _load_numpy)], ids=["flax", "numpy"])
def test_a_model_resumed_from_saved_weights_and_state_continues_bit_identically(save, load, tmp_path):
    optimizer = Transform(_warmup_cosine_clipped())
    model = _model(optimizer)
    _train(model, epochs=2)
    weights = serialization.get_model_weights(model.layers)
    save(optimizer, tmp_path / "state.npz")
    rng_state = np.random.get_state()
    _train(model, epochs=2, rng_state=rng_state)
    uninterrupted = _weights(model)

    resumed = Transform(_warmup_cosine_clipped())
    fresh = _model(resumed, init_seed=99)
    serialization.restore_model_weights(fresh.layers, weights)
    load(resumed, fresh.layers, tmp_path / "state.npz")
    _train(fresh, epochs=2, rng_state=rng_state)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(fresh), uninterrupted))
    assert _same_state(resumed.state, optimizer.state)
    assert int(resumed.state[1][0].count) == 16  # scale_by_adam's count: 4 epochs of 4 batches


def test_a_state_made_for_another_model_is_refused_at_the_next_step_naming_the_leaf(rng):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = Transform(mpnn_opt.adam())
    other = random_tree(rng, SMALL)
    optimizer.init([SeedLayer(other[k], other[k]) for k in other])
    before = _copy(params)
    with pytest.raises(ValueError, match="structure"):
        optimizer.step([SeedLayer(params[k], grads[k]) for k in params])
    assert _same_tree(params, before)
    reshaped = {"dense": {"weights": (5, 6), "biases": (1, 5)}, "norm": SMALL["norm"]}
    small, wrong = random_tree(rng, SMALL), random_tree(rng, reshaped)
    optimizer.init([SeedLayer(wrong[k], wrong[k]) for k in wrong])
    with pytest.raises(ValueError, match=r"\['layer_0'\]\['weights'\] has shape \(5, 6\)"):
        optimizer.step([SeedLayer(small[k], small[k]) for k in small])
    optimizer.state = None  # starts afresh
    optimizer.step([SeedLayer(small[k], small[k]) for k in small])


# --- all or nothing ----------------------------------------------------------------------------------


def test_a_bad_gradient_shape_raises_naming_the_layer_and_changes_no_layer_and_not_the_state(rng):
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = Transform(optax.adamw(1e-3))
    layers = [SeedLayer(params[k], grads[k]) for k in params]
    optimizer.step(layers)
    before, state_before = _copy(params), optimizer.state
    grads["norm"]["beta"] = np.zeros((2, 3), np.float32)  # the last layer
    with pytest.raises(ValueError, match=r"layer_2 \(SeedLayer\) parameter 'beta'.*shape"):
        optimizer.step(layers)
    assert _same_tree(params, before) and optimizer.state is state_before


def test_a_failure_inside_the_update_changes_no_layer_and_not_the_state(rng, monkeypatch):
    params, grads = random_tree(rng), random_tree(rng)
    tx = mpnn_opt.adam(0.5)
    layers = [SeedLayer(params[k], grads[k]) for k in params]
    trained = Transform(tx)
    trained.step(layers)
    optimizer, before = Transform(tx), _copy(params)
    optimizer.state = state_before = trained.state  # resumed: compiles its update at this step

    def failing_update(*_):
        raise FloatingPointError("non-finite value")

    real = _transform._Fixed.transformation
    _stepper._cached.cache_clear()
    monkeypatch.setattr(
        _transform._Fixed,
        "transformation",
        lambda *args: optax.GradientTransformation(real(*args).init, failing_update),
    )
    with pytest.raises(RuntimeError, match="Transform.step failed and changed no layer: non-finite value"):
        optimizer.step(layers)
    assert _same_tree(params, before) and optimizer.state is state_before


def test_one_array_in_two_layers_is_refused_naming_both(rng):
    params, grads = random_tree(rng, SMALL), random_tree(rng, SMALL)
    layers = [SeedLayer(params["dense"], grads["dense"]), SeedLayer(params["dense"], grads["dense"])]
    with pytest.raises(ValueError, match=r"layer_1 \(SeedLayer\) parameter 'weights' is the array of layer_0"):
        Transform(mpnn_opt.sgd()).step(layers)


@pytest.mark.parametrize("error", [KeyboardInterrupt, MemoryError])
def test_a_fault_at_any_line_of_step_changes_nothing_and_the_run_continues_bit_identically(error, rng):
    params0, grads = random_tree(rng, SMALL), [random_tree(rng, SMALL) for _ in range(4)]
    tx = _warmup_cosine_clipped()

    def fresh() -> tuple[Transform, dict]:
        optimizer, params = Transform(tx), _copy(params0)
        _step_all(optimizer, params, grads[:1])
        return optimizer, params

    reference, reference_params = fresh()
    assert reference.state is not None  # handed out, as in the faulted runs below (it is then never donated)
    counter = FaultAtLine(reference, None)
    assert counter.run(lambda: _step_all(reference, reference_params, grads[1:2])) is None
    _step_all(reference, reference_params, grads[2:])
    assert counter.lines > 40  # the whole step up to its commit

    for n in range(counter.lines):
        optimizer, params = fresh()
        before, state_before = _copy(params), optimizer.state
        raised = FaultAtLine(optimizer, n, error(f"line {n}")).run(lambda: _step_all(optimizer, params, grads[1:2]))
        assert isinstance(raised, error) or "Transform.step failed and changed no layer" in str(raised), (n, raised)
        assert _same_tree(params, before) and optimizer.state is state_before, n
        _step_all(optimizer, params, grads[1:])
        assert _same_tree(params, reference_params) and _same_state(optimizer.state, reference.state), n


def test_an_interrupt_at_any_copy_into_the_layers_restores_them_and_keeps_the_state(rng, monkeypatch):
    # the tracer above stops at the commit; this one reaches into the write-back, whose copies come before it
    params0, grads = random_tree(rng, SMALL), [random_tree(rng, SMALL) for _ in range(3)]
    tx = optax.adam(1e-2)
    reference, reference_params = Transform(tx), _copy(params0)
    _step_all(reference, reference_params, grads)
    real_copyto, calls, fail_at = np.copyto, [], 0

    def copyto(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyboardInterrupt(f"copy {fail_at}")
        return real_copyto(*args, **kwargs)

    monkeypatch.setattr(np, "copyto", copyto)
    copies = 3 * 4  # params and grads staged, then the write-back: three copies per parameter
    for at in range(1, copies + 1):
        optimizer, params = Transform(tx), _copy(params0)
        _step_all(optimizer, params, grads[:1])
        before, state_before = _copy(params), optimizer.state
        calls.clear()
        fail_at = at
        with pytest.raises(KeyboardInterrupt, match=f"copy {at}"):
            _step_all(optimizer, params, grads[1:2])
        fail_at = 0
        assert _same_tree(params, before) and optimizer.state is state_before, at
        _step_all(optimizer, params, grads[1:])
        assert _same_tree(params, reference_params) and _same_state(optimizer.state, reference.state), at
    calls.clear()
    _step_all(Transform(tx), _copy(params0), grads[:1])
    assert len(calls) == copies


def test_float64_parameters_are_updated_in_float64_as_the_functional_loop_does_under_x64(rng):
    as_float64 = lambda tree: jax.tree.map(lambda leaf: leaf.astype(np.float64), tree)  # noqa: E731
    params0, grads = as_float64(random_tree(rng, SMALL)), [as_float64(random_tree(rng, SMALL)) for _ in range(3)]
    params = _copy(params0)
    _step_all(Transform(optax.adam(1e-2)), params, grads)
    with jax.enable_x64(True):
        expected = run_transform(
            optax.adam(1e-2), _by_layer(params0), [_by_layer(g) for g in grads], apply=optax.apply_updates
        )[-1]
    got = _by_layer(params)
    assert params["dense"]["weights"].dtype == np.float64
    assert max(relative_error(got[k][n], expected[k][n]) for k in got for n in got[k]) <= 1e-14


def test_legacy_example_trains_with_a_clipped_warmup_cosine_transform_and_resumes_half_way(capsys):
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "legacy_mpneuralnetwork.py"
    accuracy = runpy.run_path(str(example))["main_transform"]()
    printed = capsys.readouterr().out
    assert accuracy > 0.9
    assert printed.count("[training]") == 8  # 4 epochs, checkpoint, 4 more in the resumed model
    assert "resumed half-way" in printed and "(176 steps)" in printed  # the step count continued across the resume
