"""The class adapter never loses or half-applies state: faults, interrupts, threads, reused ids, float64.

Oracles: an uninterrupted run of the same optimizer (compared bit for bit), and mpneuralnetwork 1.1.1's
own optimizers (compared to float rounding).
"""

from __future__ import annotations

import gc
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from faults import FaultAtLine
from mpneuralnetwork import optimizers as seed
from mpneuralnetwork import serialization

from mpnn_opt.optimizers import _adapter as ours
from mpnn_opt.optimizers import _staging as _layer_tree
from mpnn_opt.optimizers import _stepper
from oracles import SeedLayer, random_tree, relative_error

CLASSES = ("SGD", "RMSprop", "Adam")
SETTINGS = {
    "SGD": dict(learning_rate=0.05, weight_decay=0.01, momentum=0.9),
    "RMSprop": dict(learning_rate=0.01, weight_decay=0.01, decay_rate=0.95, epsilon=1e-6),
    "Adam": dict(learning_rate=0.01, weight_decay=0.02, beta1=0.8, beta2=0.99, epsilon=1e-7),
}
# two layers, four parameters: every line of a step runs a few times, not dozens
SMALL = {"dense": {"weights": (6, 5), "biases": (1, 5)}, "norm": {"gamma": (1, 5), "beta": (1, 5)}}
STEPS_BEFORE, STEPS_AFTER = 2, 3


class Run:
    """One optimizer training its own copy of a model on a fixed gradient sequence; ``layers`` as mpneuralnetwork has them."""

    def __init__(self, optimizer, params0: dict, grads_seq: list[dict]) -> None:
        self.optimizer = optimizer
        self.params = {layer: {n: p.copy() for n, p in leaves.items()} for layer, leaves in params0.items()}
        self.grads_seq = grads_seq
        self.steps = 0

    def layers(self, present: tuple | None = None) -> list:
        """The layers with this step's gradients (copies: the seed adds its penalty into them in place)."""
        grads = self.grads_seq[self.steps % len(self.grads_seq)]
        return [SeedLayer(self.params[k], {n: g.copy() for n, g in grads[k].items()}) for k in (present or self.params)]

    def step(self, present: tuple | None = None) -> None:
        self.optimizer.step(self.layers(present))
        self.steps += 1

    def state(self) -> dict:
        """The optimizer's state by (layer, name) instead of id, copied; plus ``t`` where there is one."""
        state = {}
        for slot, value in self.optimizer.params.items():
            if not isinstance(value, dict):
                state[slot] = value
                continue
            for layer, leaves in self.params.items():
                for name, param in leaves.items():
                    if id(param) in value:
                        state[(slot, layer, name)] = np.array(value[id(param)], copy=True)
        return state


def _same_params(run: Run, other: Run) -> bool:
    return all(np.array_equal(run.params[k][n], other.params[k][n]) for k in run.params for n in run.params[k])


def _same_state(run: Run, other: Run) -> bool:
    mine, theirs = run.state(), other.state()
    return mine.keys() == theirs.keys() and all(np.array_equal(mine[key], theirs[key]) for key in mine)


def _problem(
    rng: np.random.Generator, shapes: dict = SMALL, dtype=np.float32, steps: int = 8
) -> tuple[dict, list[dict]]:
    return random_tree(rng, shapes, dtype), [random_tree(rng, shapes, dtype) for _ in range(steps)]


# --- a fault at any line of step -----------------------------------------------------------------------


def _fault_scenario(variant: str, rng) -> tuple:
    """``(params0, grads, prepare, early)``: ``prepare(run)`` runs before the faulted step, ``early`` names the layers before it."""
    params0, grads = _problem(rng)
    if variant == "steady":  # the state stays on the device between steps
        return params0, grads, lambda run: None, None
    if variant == "after_params_read":  # reading params moves the state to the host; the step rebuilds it
        return params0, grads, lambda run: run.optimizer.params, None
    assert variant == "layer_joins"  # a new layout: materialize the old state, start the new layer from zeros
    return params0, grads, lambda run: None, ("dense",)


@pytest.mark.parametrize("variant", ["steady", "after_params_read", "layer_joins"])
@pytest.mark.parametrize("name", CLASSES)
def test_a_keyboard_interrupt_at_any_line_of_step_changes_nothing_and_the_run_continues_bit_identically(
    name, variant, rng
):
    params0, grads, prepare, early = _fault_scenario(variant, rng)

    def fresh() -> Run:
        run = Run(getattr(ours, name)(**SETTINGS[name]), params0, grads)
        for _ in range(STEPS_BEFORE):
            run.step(early)
        prepare(run)
        return run

    reference = fresh()
    counter = FaultAtLine(reference.optimizer, None)
    assert counter.run(reference.step) is None
    lines = counter.lines
    for _ in range(STEPS_AFTER - 1):
        reference.step()
    assert lines > 100  # the whole step up to its commit, not a fraction of it

    for n in range(lines):
        faulty, unfaulted = fresh(), fresh()
        raised = FaultAtLine(faulty.optimizer, n, KeyboardInterrupt(f"line {n}")).run(faulty.step)
        assert isinstance(raised, KeyboardInterrupt), (n, raised)
        assert _same_params(faulty, unfaulted), f"fault at line {n} changed a layer"
        assert getattr(faulty.optimizer, "t", None) == getattr(unfaulted.optimizer, "t", None), (
            f"fault at line {n} changed t"
        )
        for _ in range(STEPS_AFTER):
            faulty.step()
        assert _same_params(faulty, reference), (
            f"after a fault at line {n} the run does not continue as the uninterrupted one"
        )
        assert _same_state(faulty, reference), (
            f"after a fault at line {n} the state differs from the uninterrupted run's"
        )


def test_an_exception_at_any_line_of_step_changes_nothing_and_the_run_continues_bit_identically(rng):
    params0, grads = _problem(rng)
    fresh_run = lambda: Run(ours.Adam(**SETTINGS["Adam"]), params0, grads)  # noqa: E731
    reference = fresh_run()
    reference.step()
    counter = FaultAtLine(reference.optimizer, None)
    assert counter.run(reference.step) is None
    reference.step()
    for n in range(counter.lines):
        faulty = fresh_run()
        faulty.step()
        raised = FaultAtLine(faulty.optimizer, n, MemoryError(f"line {n}")).run(faulty.step)
        # inside the compiled call's guard it arrives wrapped, naming the class
        assert isinstance(raised, MemoryError) or "Adam.step failed and changed no layer" in str(raised), (n, raised)
        assert faulty.optimizer.t == 1
        faulty.step()
        faulty.step()
        assert _same_params(faulty, reference) and _same_state(faulty, reference), n


# --- faults around the compiled call ------------------------------------------------------------------


def _patch_compiled_update(monkeypatch, when: str, error: BaseException) -> list:
    """Makes the next compiled update raise ``error`` before or after running (once); returns the list of calls."""
    real = _stepper.compiled
    calls = []

    def patched(*key):
        function = real(*key).update

        def update(*args):
            calls.append(when)
            if len(calls) == 1 and when == "before":
                raise error
            result = function(*args)
            if len(calls) == 1 and when == "after":
                jax.block_until_ready(result)
                raise error
            return result

        return real(*key)._replace(update=update)

    monkeypatch.setattr(_stepper, "compiled", patched)
    return calls


@pytest.mark.parametrize("error", [KeyboardInterrupt(), FloatingPointError("injected")], ids=["interrupt", "exception"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("name", CLASSES)
def test_a_fault_before_or_after_the_compiled_call_keeps_the_live_state_and_the_next_steps_match(
    name, when, error, rng, monkeypatch
):
    params0, grads = _problem(rng)
    reference, faulty = (Run(getattr(ours, name)(**SETTINGS[name]), params0, grads) for _ in range(2))
    for _ in range(3):
        reference.step()
    faulty.step()
    live = faulty.optimizer._state
    calls = _patch_compiled_update(monkeypatch, when, error)
    with pytest.raises((KeyboardInterrupt, RuntimeError)):
        faulty.step()
    assert calls == [when]
    assert faulty.optimizer._state is live and not any(b.is_deleted() for b in jax.tree.leaves(live))
    assert getattr(faulty.optimizer, "t", 1) == 1
    faulty.step()
    faulty.step()
    assert _same_params(faulty, reference) and _same_state(faulty, reference)


# --- real SIGINT during the write-back -------------------------------------------------------------------


def _signal_on_copy(monkeypatch, at_call: int) -> list:
    """Makes numpy's copyto raise a real SIGINT on its ``at_call``-th call (counted from now); returns the call log."""
    real = np.copyto
    log = []

    def copyto(*args, **kwargs):
        log.append(len(log))
        if len(log) == at_call:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "copyto", copyto)
    return log


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread only"
)
@pytest.mark.parametrize("name", CLASSES)
def test_a_real_sigint_at_any_copy_of_a_step_changes_nothing(name, rng, monkeypatch):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    params0, grads = _problem(rng)
    reference = Run(getattr(ours, name)(**SETTINGS[name]), params0, grads)
    for _ in range(4):
        reference.step()
    copies = 2 * 4 + 4  # staging params and grads, then writing 4 parameters back
    for at_call in range(1, copies + 1):
        faulty = Run(getattr(ours, name)(**SETTINGS[name]), params0, grads)
        faulty.step()
        before = {k: {n: p.copy() for n, p in v.items()} for k, v in faulty.params.items()}
        with monkeypatch.context() as patch:
            log = _signal_on_copy(patch, at_call)
            with pytest.raises(KeyboardInterrupt):
                faulty.step()
        assert len(log) >= at_call
        assert all(np.array_equal(faulty.params[k][n], before[k][n]) for k in before for n in before[k]), at_call
        for _ in range(3):
            faulty.step()
        assert _same_params(faulty, reference) and _same_state(faulty, reference), at_call


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread only"
)
def test_a_second_sigint_while_the_layers_are_being_restored_is_held_until_they_are(rng, monkeypatch):
    params0, grads = _problem(rng)
    run = Run(ours.Adam(**SETTINGS["Adam"]), params0, grads)
    run.step()
    before = {k: {n: p.copy() for n, p in v.items()} for k, v in run.params.items()}
    real_restore = _layer_tree.restore

    def restore_interrupted(*args):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C pressed again
        real_restore(*args)

    monkeypatch.setattr(_layer_tree, "restore", restore_interrupted)
    _signal_on_copy(monkeypatch, at_call=2 * 4 + 2)  # during the write-back, two parameters written
    with pytest.raises(KeyboardInterrupt):
        run.step()
    assert all(np.array_equal(run.params[k][n], before[k][n]) for k in before for n in before[k])
    assert run.optimizer.t == 1


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread only"
)
def test_a_sigint_handler_that_does_not_raise_runs_once_after_the_write_back_and_the_step_applies(rng, monkeypatch):
    params0, grads = _problem(rng)
    reference, run = (Run(ours.RMSprop(**SETTINGS["RMSprop"]), params0, grads) for _ in range(2))
    reference.step()
    calls = []

    def handler(signum, frame):
        calls.append([p.copy() for p in run.params["dense"].values()])  # what the layers hold when it runs

    previous = signal.signal(signal.SIGINT, handler)
    try:
        _signal_on_copy(monkeypatch, at_call=2 * 4 + 1)  # the first copy of the write-back
        run.step()
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 1
    assert all(
        np.array_equal(held, now) for held, now in zip(calls[0], run.params["dense"].values())
    )  # after the write-back
    assert _same_params(run, reference)


# --- threads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SGD", "RMSprop"])
def test_one_optimizer_stepping_two_models_from_two_threads_gives_each_model_its_serial_result(name, rng):
    # SGD's and RMSprop's state is per parameter, so each model's result does not depend on the interleaving
    shapes_a = {"dense": {"weights": (40, 30), "biases": (1, 30)}}
    shapes_b = {"conv": {"kernels": (3, 2, 3, 3), "biases": (3, 4, 4)}, "norm": {"gamma": (1, 5), "beta": (1, 5)}}
    problems = [_problem(rng, shapes_a), _problem(rng, shapes_b)]
    serial = [Run(getattr(ours, name)(**SETTINGS[name]), *problem) for problem in problems]
    for run in serial:
        for _ in range(30):
            run.step()
    shared = getattr(ours, name)(**SETTINGS[name])
    threaded = [Run(shared, *problem) for problem in problems]
    errors = []

    def train(run: Run) -> None:
        try:
            for _ in range(30):
                run.step()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def read_state() -> None:
        for _ in range(30):
            shared.params  # noqa: B018 - moves the state to the host while the other threads step

    threads = [threading.Thread(target=train, args=(run,)) for run in threaded] + [threading.Thread(target=read_state)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for got, expected in zip(threaded, serial):
        assert _same_params(got, expected) and _same_state(got, expected)


def test_one_adam_stepping_one_model_from_four_threads_equals_the_serial_steps(rng):
    params0, grads = _problem(rng, steps=1)  # one gradient: the result cannot depend on which thread stepped
    serial = Run(ours.Adam(**SETTINGS["Adam"]), params0, grads)
    for _ in range(100):
        serial.step()
    threaded = Run(ours.Adam(**SETTINGS["Adam"]), params0, grads)
    layers = threaded.layers()
    threads = [threading.Thread(target=lambda: [threaded.optimizer.step(layers) for _ in range(25)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert threaded.optimizer.t == 100
    assert _same_params(threaded, serial) and _same_state(threaded, serial)


# --- reused ids ------------------------------------------------------------------------------------------


def _array_with_id(target: int, shape: tuple, dtype) -> np.ndarray:
    """A new array whose id() is ``target`` (the id of a freed array), found by allocating until CPython reuses it."""
    kept = []
    for _ in range(100_000):
        candidate = np.empty(shape, dtype)
        if id(candidate) == target:
            return candidate
        kept.append(candidate)
    raise AssertionError("CPython did not reuse the freed array's id")


@pytest.mark.parametrize("name", CLASSES)
def test_a_new_array_that_gets_a_freed_arrays_id_starts_from_zero_state_as_a_new_parameter(name, rng):
    # the seed keys its state by id(param): after ``layer.beta = layer.beta.copy()`` the copy can get the id
    # of an array freed earlier, and then that array's state
    params0, grads = _problem(rng)
    run = Run(getattr(ours, name)(**SETTINGS[name]), params0, grads)
    run.step()
    run.step()
    state = {
        slot: value if not isinstance(value, dict) else {key: array.copy() for key, array in value.items()}
        for slot, value in run.optimizer.params.items()
    }
    freed_id = id(run.params["norm"]["beta"])
    value = run.params["norm"]["beta"].copy()
    run.params["norm"]["beta"] = None
    gc.collect()
    new_beta = _array_with_id(freed_id, value.shape, value.dtype)
    np.copyto(new_beta, value)
    run.params["norm"]["beta"] = new_beta
    # the oracle: the seed's optimizer in the same state for the other parameters, given beta as a parameter it never saw
    seed_optimizer = getattr(seed, name)(**SETTINGS[name])
    seed_params = {k: {n: p.copy() for n, p in v.items()} for k, v in run.params.items()}
    for slot, entries in state.items():
        if not isinstance(entries, dict):
            setattr(seed_optimizer, slot, entries)
            continue
        for k, leaves in run.params.items():
            for n, param in leaves.items():
                if n != "beta":
                    getattr(seed_optimizer, slot)[id(seed_params[k][n])] = entries[id(param)].copy()
    seed_optimizer.step(
        [SeedLayer(seed_params[k], {n: g.copy() for n, g in run.grads_seq[run.steps][k].items()}) for k in seed_params]
    )
    run.step()
    assert relative_error(run.params["norm"]["beta"], seed_params["norm"]["beta"]) <= 1e-6
    assert max(relative_error(run.params[k][n], seed_params[k][n]) for k in seed_params for n in seed_params[k]) <= 1e-6


def test_entries_for_freed_arrays_leave_params_so_restore_model_weights_gives_the_new_array_its_saved_state(rng):
    params0, grads = _problem(rng)
    run = Run(ours.SGD(**SETTINGS["SGD"]), params0, grads)
    run.step()
    freed_id = id(run.params["dense"]["weights"])
    saved = run.optimizer.params["velocities"][freed_id].copy()
    run.params["dense"]["weights"] = None
    gc.collect()
    new_weights = _array_with_id(freed_id, saved.shape, np.float32)
    new_weights[...] = params0["dense"]["weights"]
    run.params["dense"]["weights"] = new_weights
    assert freed_id not in run.optimizer.params["velocities"]  # the seed would still list the freed array's entry
    # restore_model_weights copies into the entry it finds for id(param), or into a new one: the saved state
    checkpoint = {"optimizer_velocities_layer_0_weights": 2 * saved}
    serialization.restore_model_weights(run.layers(), checkpoint, run.optimizer)
    before = new_weights.copy()
    run.step()
    grad = run.grads_seq[1]["dense"]["weights"]
    expected = before + (0.9 * (2 * saved) - 0.05 * (grad + 0.01 * before))
    np.testing.assert_allclose(new_weights, expected, rtol=1e-5, atol=1e-7)


# --- float64 parameters ------------------------------------------------------------------------------------


def test_float64_parameters_are_updated_in_float64_as_the_seed_does():
    moved = {}
    for module in (ours, seed):
        weight = np.ones((2, 2), np.float64)
        optimizer = module.SGD(learning_rate=0.01, regularization="L2", weight_decay=0.0, momentum=0.0)
        for _ in range(100):
            optimizer.step([SeedLayer({"weights": weight}, {"weights": np.full((2, 2), 1e-6)})])  # lr * grad = 1e-8
        moved[module.__name__] = 1.0 - weight
    assert moved[ours.__name__].dtype == np.float64
    np.testing.assert_allclose(moved[ours.__name__], moved["mpneuralnetwork.optimizers"], rtol=1e-6)
    np.testing.assert_allclose(moved[ours.__name__], 1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["L1", "L2"])
@pytest.mark.parametrize("name", CLASSES)
def test_float64_parameters_match_the_seed_and_the_state_is_float32_as_the_seeds(name, mode, rng):
    params0, grads = _problem(rng, dtype=np.float64)
    ours_run = Run(getattr(ours, name)(**SETTINGS[name], regularization=mode), params0, grads)
    seed_run = Run(
        getattr(seed, name)(**SETTINGS[name], regularization=mode),
        params0,
        [{k: {n: g.copy() for n, g in v.items()} for k, v in step.items()} for step in grads],
    )
    for step in range(8):
        ours_run.step()
        seed_run.optimizer.step(
            [SeedLayer(seed_run.params[k], {n: g.copy() for n, g in grads[step][k].items()}) for k in params0]
        )
    # float32 state on both sides; RMSprop's and Adam's parameters agree far below float32 rounding. The seed's SGD
    # adds its velocity as rounded into the float32 state, ours the velocity before that rounding (6e-8 relative)
    tolerance = 3e-7 if name == "SGD" else 1e-8
    assert (
        max(relative_error(ours_run.params[k][n], seed_run.params[k][n]) for k in params0 for n in params0[k])
        <= tolerance
    )
    state = ours_run.optimizer.params
    assert all(
        array.dtype == np.float32 for value in state.values() if isinstance(value, dict) for array in value.values()
    )
    assert not jax.config.read("jax_enable_x64")
    assert jnp.asarray(np.float64(1.0)).dtype == jnp.float32  # enable_x64 did not leak out of the step


# --- tied weights ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L1", "L2"])
@pytest.mark.parametrize("name", CLASSES)
def test_one_array_in_two_layers_is_updated_twice_a_step_sharing_one_state_as_in_the_seed(name, mode, rng):
    shared = rng.standard_normal((4, 5)).astype(np.float32)
    grads = [
        [rng.standard_normal(shape).astype(np.float32) for shape in [(4, 5), (4, 5), (5,), (4, 5), (5,)]]
        for _ in range(5)
    ]
    results = {}
    for module in (ours, seed):
        weights, biases_a, biases_b, other = (
            shared.copy(),
            np.zeros(5, np.float32),
            np.zeros(5, np.float32),
            shared.copy(),
        )
        optimizer = getattr(module, name)(**SETTINGS[name], regularization=mode)
        for g in grads:
            g = [x.copy() for x in g]
            optimizer.step(
                [
                    SeedLayer({"weights": weights, "biases": biases_a}, {"weights": g[0], "biases": g[2]}),
                    SeedLayer({"weights": other}, {"weights": g[3]}),
                    SeedLayer({"weights": weights, "biases": biases_b}, {"weights": g[1], "biases": g[4]}),
                ]
            )
        results[module.__name__] = (weights, biases_a, biases_b, other)
        state = optimizer.params
        assert all(
            len(value) == 4 for value in state.values() if isinstance(value, dict)
        )  # one entry for the tied array
    for got, expected in zip(results[ours.__name__], results["mpneuralnetwork.optimizers"]):
        assert relative_error(got, expected) <= 2e-6


def test_one_array_under_a_regularized_and_an_unregularized_name_is_refused_naming_both(rng):
    array = rng.standard_normal(5).astype(np.float32)
    layers = [
        SeedLayer({"weights": array}, {"weights": np.ones(5, np.float32)}),
        SeedLayer({"biases": array}, {"biases": np.ones(5, np.float32)}),
    ]
    with pytest.raises(
        ValueError,
        match=r"layer_1 \(SeedLayer\) parameter 'biases' is the array of layer_0 \(SeedLayer\) parameter 'weights'",
    ):
        ours.SGD().step(layers)


# --- the seed's base class, from_seed, Adam's t -----------------------------------------------------------------


def test_the_base_optimizer_does_nothing_in_step_and_has_the_seeds_params_and_config(rng):
    params, grads = random_tree(rng), random_tree(rng)
    before = {k: {n: p.copy() for n, p in v.items()} for k, v in params.items()}
    optimizer, seed_optimizer = ours.Optimizer(0.01, "L2", 0.001), seed.Optimizer(0.01, "L2", 0.001)
    assert optimizer.step([SeedLayer(params[k], grads[k]) for k in params]) is None
    assert all(np.array_equal(params[k][n], before[k][n]) for k in params for n in params[k])
    assert optimizer.params == seed_optimizer.params == {}
    assert optimizer.get_config() == seed_optimizer.get_config()


@pytest.mark.parametrize("regularization", [None, "L1", "l2", "off"])
@pytest.mark.parametrize("name", CLASSES)
def test_from_seed_continues_exactly_as_the_seed_optimizer_whatever_its_regularization(name, regularization, rng):
    # the seed's SGD and RMSprop apply L1 for anything but 'L2'; its Adam applies nothing for anything but 'L1'/'L2'
    params0, grads = _problem(rng, steps=6)
    uninterrupted, converted = (Run(getattr(seed, name)(**SETTINGS[name]), params0, grads) for _ in range(2))
    for run in (uninterrupted, converted):
        run.optimizer.regularization = regularization
    for _ in range(6):
        uninterrupted.step()
    for _ in range(3):
        converted.step()
    converted.optimizer = getattr(ours, name).from_seed(
        converted.optimizer
    )  # on the same arrays: the state is keyed by their ids
    for _ in range(3):
        converted.step()
    assert (
        max(relative_error(converted.params[k][n], uninterrupted.params[k][n]) for k in params0 for n in params0[k])
        <= 2e-6
    )


def test_adam_counts_a_step_over_layers_without_parameters_as_the_seed_does():
    optimizer, seed_optimizer = ours.Adam(), seed.Adam()
    for each in (optimizer, seed_optimizer):
        each.step([object()])
        each.step([])
    assert optimizer.t == seed_optimizer.t == 2


def test_adam_past_two_to_the_31_steps_matches_the_seeds_formula(rng):
    params0, grads = _problem(rng, steps=2)
    ours_run, seed_run = (
        Run(ours.Adam(**SETTINGS["Adam"]), params0, grads),
        Run(seed.Adam(**SETTINGS["Adam"]), params0, grads),
    )
    for run in (ours_run, seed_run):
        run.step()
        run.optimizer.t = 2**31 + 5  # bias correction 1 - beta**t is 1.0 there, in float64 as in float32
        run.step()
    assert ours_run.optimizer.t == seed_run.optimizer.t == 2**31 + 6
    assert (
        max(relative_error(ours_run.params[k][n], seed_run.params[k][n]) for k in params0 for n in params0[k]) <= 1e-6
    )


# --- hyperparameters -----------------------------------------------------------------------------------------

BAD_VALUES = ["0.1", None, True, np.bool_(False), float("nan"), float("inf"), -1, np.array([1.0, 2.0]), [0.1], 10**400]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("name", CLASSES)
def test_a_bad_hyperparameter_is_refused_at_construction_and_at_assignment_naming_it_and_changing_nothing(
    name, value, rng
):
    params0, grads = _problem(rng, steps=1)
    for attribute in SETTINGS[name]:
        with pytest.raises((TypeError, ValueError), match=attribute):
            getattr(ours, name)(**{**SETTINGS[name], attribute: value})
        run = Run(getattr(ours, name)(**SETTINGS[name]), params0, grads)
        with pytest.raises((TypeError, ValueError), match=attribute) as refused:
            setattr(run.optimizer, attribute, value)
        assert repr(value)[:20] in str(refused.value) or str(value)[:20] in str(refused.value)
        assert getattr(run.optimizer, attribute) == SETTINGS[name][attribute]
        run.step()
        expected = Run(
            getattr(seed, name)(**SETTINGS[name]),
            params0,
            [{k: {n: g.copy() for n, g in v.items()} for k, v in grads[0].items()}],
        )
        expected.step()
        assert max(relative_error(run.params[k][n], expected.params[k][n]) for k in params0 for n in params0[k]) <= 1e-6


@pytest.mark.parametrize("value", ["L3", "l2", 2, ("L2",), np.array("L2")], ids=repr)
def test_a_bad_regularization_is_refused_at_construction_and_at_assignment(value):
    with pytest.raises((TypeError, ValueError), match="regularization"):
        ours.Adam(regularization=value)
    optimizer = ours.Adam()
    with pytest.raises((TypeError, ValueError), match="regularization"):
        optimizer.regularization = value
    assert optimizer.regularization == "L2"


@pytest.mark.parametrize("value", ["3", -1, 1.5, True, None], ids=repr)
def test_a_bad_step_count_is_refused_naming_t(value):
    optimizer = ours.Adam()
    with pytest.raises((TypeError, ValueError), match=r"Adam\.t"):
        optimizer.t = value
    assert optimizer.t == 0


@pytest.mark.parametrize(
    "value", [0.05, 1, np.float32(0.05), np.float64(0.05), np.int64(1), np.array(0.05), jnp.asarray(0.05)], ids=repr
)
def test_python_numpy_and_0d_jax_scalars_are_accepted_and_kept_as_python_numbers(value, rng):
    params0, grads = _problem(rng, steps=1)
    run = Run(ours.SGD(**SETTINGS["SGD"]), params0, grads)
    run.optimizer.learning_rate = value
    assert type(run.optimizer.learning_rate) in (int, float) and run.optimizer.learning_rate == pytest.approx(
        float(value)
    )
    assert type(ours.SGD(learning_rate=value).learning_rate) in (int, float)
    run.step()
    expected = Run(
        seed.SGD(**dict(SETTINGS["SGD"], learning_rate=float(value))),
        params0,
        [{k: {n: g.copy() for n, g in v.items()} for k, v in grads[0].items()}],
    )
    expected.step()
    assert max(relative_error(run.params[k][n], expected.params[k][n]) for k in params0 for n in params0[k]) <= 1e-6
