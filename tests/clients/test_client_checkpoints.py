"""Optimizer states saved with orbax-checkpoint or flax.serialization resume bit-identically in a new process.

Each scenario trains a tiny model for ``SAVE_AT`` steps, saves ``{"params", "opt_state"}``, and goes on to
``STEPS`` uninterrupted in this process: that run is the oracle. A fresh Python process (one per backend)
builds the model and ``tx.init(params)`` again, restores the checkpoint into that target the documented
way, runs the remaining steps and writes its final params and state; they must equal the oracle's bit
for bit. The scenarios put something in the state that a fresh ``init`` does not have: Adam's moments,
an injected learning rate changed with ``with_hyperparam``, a half-full accumulation window, a count of
skipped non-finite steps.

orbax restores named tuples only from a target; without one it gives dicts and lists, which
``update`` refuses (the last test).
"""

from __future__ import annotations

import functools
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt

STEPS, SAVE_AT = 7, 3  # SAVE_AT is odd: accumulate(every_k=2) saves with its window half full
NAN_STEP, NEW_LR_STEP = 1, 2  # before SAVE_AT, so only the checkpoint knows about them

SCENARIOS: dict[str, Callable[[], Any]] = {
    "adam": lambda: mpnn_opt.adam(),  # the seed's defaults: lr 1e-3, 'L2' decoupled, weight_decay 1e-3
    "clip_then_injected_adam": lambda: mpnn_opt.chain(
        mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=1e-3)
    ),
    "accumulate": lambda: mpnn_opt.accumulate(mpnn_opt.adam(1e-2), every_k=2),
    "skip_non_finite": lambda: mpnn_opt.skip_non_finite(mpnn_opt.rmsprop(1e-2)),
}

BACKENDS = {"orbax": ("standard_checkpointer", "checkpoint_manager"), "flax": ("to_bytes", "to_state_dict")}


def make_params() -> dict:
    rng = np.random.default_rng(0)
    return {
        "dense": {"weights": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "bias": jnp.zeros(3)},
        "norm": {"scale": jnp.ones(3)},
    }


def batch(scenario: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    if scenario == "skip_non_finite" and step == NAN_STEP:
        x[0, 0] = np.nan
    return x, y


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["dense"]["weights"] + params["dense"]["bias"])
    return jnp.mean((params["norm"]["scale"] * hidden - y) ** 2)


@functools.cache
def optimizer(scenario: str) -> tuple[Any, Callable]:
    """The scenario's transformation and its jitted training step, built once per process."""
    tx = SCENARIOS[scenario]()

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return mpnn_opt.apply_updates(params, updates), opt_state

    return tx, step


def run(scenario: str, params: dict, opt_state: Any, start: int, stop: int) -> tuple[dict, Any]:
    """Steps ``start .. stop - 1`` of the scenario's training."""
    step = optimizer(scenario)[1]
    for index in range(start, stop):
        if scenario == "clip_then_injected_adam" and index == NEW_LR_STEP:
            opt_state = mpnn_opt.with_hyperparam(opt_state, "learning_rate", 3e-3)
        params, opt_state = step(params, opt_state, *batch(scenario, index))
    return params, opt_state


def target(tx: Any) -> dict:
    """What a new process builds before restoring: fresh params and ``tx.init(params)``."""
    params = make_params()
    return {"params": params, "opt_state": tx.init(params)}


def save(method: str, directory: pathlib.Path, tree: dict) -> None:
    if method == "standard_checkpointer":
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(directory.absolute(), tree)
    elif method == "checkpoint_manager":
        import orbax.checkpoint as ocp

        with ocp.CheckpointManager(
            directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2)
        ) as manager:
            manager.save(SAVE_AT, args=ocp.args.StandardSave(tree))
    elif method == "to_bytes":
        from flax import serialization

        directory.write_bytes(serialization.to_bytes(tree))
    else:
        from flax import serialization

        directory.write_bytes(serialization.msgpack_serialize(serialization.to_state_dict(tree)))


def restore(method: str, directory: pathlib.Path, tx: Any) -> dict:
    """The documented restore of each method, into ``target(tx)`` (orbax's standard checkpointer: its abstract form)."""
    if method == "standard_checkpointer":
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(directory.absolute(), jax.eval_shape(lambda: target(tx)))
    if method == "checkpoint_manager":
        import orbax.checkpoint as ocp

        with ocp.CheckpointManager(directory.absolute()) as manager:
            assert manager.latest_step() == SAVE_AT
            return manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target(tx)))
    from flax import serialization

    if method == "to_bytes":
        return serialization.from_bytes(target(tx), directory.read_bytes())
    return serialization.from_state_dict(target(tx), serialization.msgpack_restore(directory.read_bytes()))


def resume_in_this_process(backend: str, root: pathlib.Path) -> None:
    """The new process's work: restore every checkpoint under ``root``, finish training, save the results."""
    for method in BACKENDS[backend]:
        for scenario in SCENARIOS:
            tx = optimizer(scenario)[0]
            restored = restore(method, root / f"{method}-{scenario}", tx)
            assert jax.tree.structure(restored) == jax.tree.structure(target(tx)), method
            params, opt_state = run(scenario, restored["params"], restored["opt_state"], SAVE_AT, STEPS)
            leaves = jax.tree.leaves((params, opt_state))
            np.savez(root / f"{method}-{scenario}-final.npz", *[np.asarray(leaf) for leaf in leaves])


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, tuple[dict, tuple]]:
    """For each scenario: the state at ``SAVE_AT`` (to save) and the final state of the uninterrupted run."""
    runs = {}
    for scenario in SCENARIOS:
        params = make_params()
        at_save = run(scenario, params, optimizer(scenario)[0].init(params), 0, SAVE_AT)
        runs[scenario] = (dict(params=at_save[0], opt_state=at_save[1]), run(scenario, *at_save, SAVE_AT, STEPS))
    return runs


def resumed_in_a_new_process(backend: str, root: pathlib.Path, uninterrupted: dict) -> pathlib.Path:
    for method in BACKENDS[backend]:
        for scenario, (at_save, _) in uninterrupted.items():
            save(method, root / f"{method}-{scenario}", at_save)
    result = subprocess.run([sys.executable, __file__, backend, str(root)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture(scope="module")
def orbax_root(tmp_path_factory, uninterrupted) -> pathlib.Path:
    pytest.importorskip("orbax.checkpoint")
    return resumed_in_a_new_process("orbax", tmp_path_factory.mktemp("orbax"), uninterrupted)


@pytest.fixture(scope="module")
def flax_root(tmp_path_factory, uninterrupted) -> pathlib.Path:
    pytest.importorskip("flax")
    return resumed_in_a_new_process("flax", tmp_path_factory.mktemp("flax"), uninterrupted)


def assert_resumed_run_is_bit_identical(root: pathlib.Path, method: str, scenario: str, uninterrupted: dict) -> None:
    expected = jax.tree.leaves(uninterrupted[scenario][1])
    with np.load(root / f"{method}-{scenario}-final.npz", allow_pickle=False) as resumed:
        got = [resumed[f"arr_{index}"] for index in range(len(resumed.files))]
    assert len(got) == len(expected)
    for got_leaf, expected_leaf in zip(got, expected):
        assert got_leaf.dtype == expected_leaf.dtype
        np.testing.assert_array_equal(got_leaf, np.asarray(expected_leaf))


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", BACKENDS["orbax"])
def test_orbax_checkpoint_resumes_bit_identically_in_a_new_process(orbax_root, uninterrupted, method, scenario):
    assert_resumed_run_is_bit_identical(orbax_root, method, scenario, uninterrupted)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", BACKENDS["flax"])
def test_flax_serialization_resumes_bit_identically_in_a_new_process(flax_root, uninterrupted, method, scenario):
    assert_resumed_run_is_bit_identical(flax_root, method, scenario, uninterrupted)


def test_the_checkpoint_holds_what_a_fresh_init_does_not(uninterrupted):
    """Guards the scenarios: resuming from ``tx.init`` instead of the saved state ends elsewhere."""
    for scenario in SCENARIOS:
        at_save, (expected_params, _) = uninterrupted[scenario]
        params, _ = run(scenario, at_save["params"], optimizer(scenario)[0].init(make_params()), SAVE_AT, STEPS)
        differs = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected_params))]
        assert any(differs), scenario


def test_orbax_without_a_target_restores_dicts_that_update_refuses(orbax_root):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = optimizer("skip_non_finite")[0]
    with ocp.StandardCheckpointer() as checkpointer:
        untyped = checkpointer.restore(orbax_root / "standard_checkpointer-skip_non_finite")
        typed = checkpointer.restore(
            orbax_root / "standard_checkpointer-skip_non_finite", jax.eval_shape(lambda: target(tx))
        )
    assert type(untyped["opt_state"]) is dict and set(untyped["opt_state"]) == {"inner_state", "skipped", "last_finite"}
    assert type(typed["opt_state"]) is mpnn_opt.wrappers.SkipNonFiniteState
    assert int(typed["opt_state"].skipped) == 1
    with pytest.raises(TypeError, match="SkipNonFiniteState"):
        tx.update(untyped["params"], untyped["opt_state"], untyped["params"])


if __name__ == "__main__":
    resume_in_this_process(sys.argv[1], pathlib.Path(sys.argv[2]))
