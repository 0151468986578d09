"""mpnn_opt.checkpoint: keys by name, exact round trips, resuming a changed optimizer, numpy, orbax and a fresh process."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt
from mpnn_opt import schedules
from mpnn_opt.checkpoint import LoadReport, load_state_dict, state_dict, state_kind

STEPS = 2
SCHEDULE = schedules.exponential_decay(0.01, 1, 0.5)
LAYER_MASK = {"dense": {"weights": True, "bias": False}, "head": {"weights": True}}
LABELS = {"dense": {"weights": "adam", "bias": "sgd"}, "head": {"weights": "adam"}}

OPTIMIZERS = {
    "sgd": lambda dtype: mpnn_opt.sgd(state_dtype=dtype),
    "rmsprop": lambda dtype: mpnn_opt.rmsprop(state_dtype=dtype),
    "adam-L1": lambda dtype: mpnn_opt.adam(regularization="L1", state_dtype=dtype),
    "adam-L2": lambda dtype: mpnn_opt.adam(regularization="L2", state_dtype=dtype),
    "adam-None": lambda dtype: mpnn_opt.adam(regularization=None, state_dtype=dtype),
    "torch_sgd": lambda dtype: mpnn_opt.torch_sgd(momentum=0.9, nesterov=True, state_dtype=dtype),
    "torch_rmsprop": lambda dtype: mpnn_opt.torch_rmsprop(centered=True, momentum=0.9, state_dtype=dtype),
    "torch_adamw": lambda dtype: mpnn_opt.torch_adamw(amsgrad=True, state_dtype=dtype),
    "torch_adagrad": lambda dtype: mpnn_opt.torch_adagrad(state_dtype=dtype),
    "nadam": lambda dtype: mpnn_opt.nadam(state_dtype=dtype),
    "lion": lambda dtype: mpnn_opt.lion(state_dtype=dtype),
    "adam-schedule": lambda dtype: mpnn_opt.adam(SCHEDULE, state_dtype=dtype),
    "chain-clip-adam": lambda dtype: mpnn_opt.chain(
        mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(state_dtype=dtype)
    ),
    "masked": lambda dtype: mpnn_opt.masked(mpnn_opt.adam(state_dtype=dtype), LAYER_MASK),
    "partition": lambda dtype: mpnn_opt.partition(
        {"adam": mpnn_opt.adam(state_dtype=dtype), "sgd": mpnn_opt.sgd(state_dtype=dtype)}, LABELS
    ),
    "accumulate": lambda dtype: mpnn_opt.accumulate(mpnn_opt.adam(state_dtype=dtype), 3),
    "skip_non_finite": lambda dtype: mpnn_opt.skip_non_finite(mpnn_opt.adam(state_dtype=dtype)),
    "inject_hyperparams": lambda dtype: mpnn_opt.inject_hyperparams(mpnn_opt.adam)(
        learning_rate=SCHEDULE, beta1=0.8, state_dtype=dtype
    ),
}


def make_params(dtype=jnp.float32, layers=("dense", "head"), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"dense": {"weights": (3, 4), "bias": (4,)}, "head": {"weights": (4, 2)}, "extra": {"weights": (2, 2)}}
    return {
        layer: {name: jnp.asarray(rng.standard_normal(shape), dtype) for name, shape in shapes[layer].items()}
        for layer in layers
    }


def trained_state(tx, params, steps=STEPS, seed=1):
    """The state after ``steps`` updates with random gradients (non-trivial moments, counters and flags)."""
    rng = np.random.default_rng(seed)
    state = tx.init(params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        updates, state = tx.update(grads, state, params)
        params = mpnn_opt.apply_updates(params, updates)
    return state


def through_npz(arrays: dict) -> dict:
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
    buffer.seek(0)
    with np.load(buffer) as loaded:
        return {key: loaded[key] for key in loaded.files}


def assert_states_identical(got, expected) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


def test_a_stage_is_named_by_its_state_class():
    assert state_kind(mpnn_opt.transforms.ScaleByAdamState) == "scale_by_adam"
    assert state_kind(mpnn_opt.hyperparams.InjectHyperparamsState) == "inject_hyperparams"
    assert state_kind(mpnn_opt.wrappers.SkipNonFiniteState) == "skip_non_finite"
    assert state_kind(mpnn_opt.transforms.ScaleByRmsState) == "scale_by_rms"


def test_keys_name_the_parameter_the_stage_and_the_field():
    params = make_params(layers=("dense",))
    keys = list(state_dict(mpnn_opt.adam(SCHEDULE).init(params)))
    assert keys == [
        "scale_by_adam.count",
        "dense/bias:scale_by_adam.momentums",
        "dense/weights:scale_by_adam.momentums",
        "dense/bias:scale_by_adam.velocities",
        "dense/weights:scale_by_adam.velocities",
        "schedule.count",  # the learning rate's schedule
        "schedule#2.count",  # the decoupled weight decay's
    ]
    wrapped = mpnn_opt.skip_non_finite(mpnn_opt.inject_hyperparams(mpnn_opt.sgd)(learning_rate=0.1))
    assert list(state_dict(wrapped.init(params))) == [
        "inject_hyperparams.count",
        "inject_hyperparams.hyperparams.learning_rate",
        "inject_hyperparams.hyperparams.weight_decay",
        "inject_hyperparams.hyperparams.momentum",
        "dense/bias:momentum_velocity.velocities",
        "dense/weights:momentum_velocity.velocities",
        "skip_non_finite.skipped",
        "skip_non_finite.last_finite",
    ]


def test_flax_variables_and_their_pure_arrays_give_the_same_keys():
    nnx = pytest.importorskip("flax.nnx")
    variables = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)  # leaves at ['kernel'].value
    tx = mpnn_opt.adam(regularization=None)
    keys = list(state_dict(tx.init(variables)))
    assert keys == list(state_dict(tx.init(nnx.to_pure_dict(variables))))
    assert "kernel:scale_by_adam.momentums" in keys


def test_partition_groups_are_scopes_and_masked_out_leaves_have_no_key():
    params = make_params()
    assert sorted(state_dict(OPTIMIZERS["partition"](None).init(params))) == [
        "dense/bias:partition[sgd].momentum_velocity.velocities",
        "dense/weights:partition[adam].scale_by_adam.momentums",
        "dense/weights:partition[adam].scale_by_adam.velocities",
        "head/weights:partition[adam].scale_by_adam.momentums",
        "head/weights:partition[adam].scale_by_adam.velocities",
        "partition[adam].scale_by_adam.count",
    ]
    assert "dense/bias:scale_by_adam.momentums" not in state_dict(OPTIMIZERS["masked"](None).init(params))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_round_trip_through_numpy_is_bit_and_dtype_exact(name, dtype):
    tx, params = OPTIMIZERS[name](dtype), make_params()
    state = trained_state(tx, params)
    restored, report = load_state_dict(tx.init(params), through_npz(state_dict(state)))
    assert report.complete and len(report.restored) == len(jax.tree.leaves(state))
    assert_states_identical(restored, state)


@pytest.mark.parametrize("size", [3, 1024, 2**20])
@pytest.mark.parametrize("sharded", [False, True], ids=["default-device", "template-sharding"])
def test_the_restored_state_does_not_share_memory_with_the_saved_arrays(size, sharded):
    # jax.device_put of a NumPy array on CPU may alias it (large, aligned arrays) or copy it after returning:
    # reusing the saved arrays (a buffer read into again, a dict updated in place) must not change the state
    params = {"w": jnp.zeros(size, jnp.float32)}
    tx = mpnn_opt.adam()
    template = jax.device_put(tx.init(params), jax.devices()[0]) if sharded else jax.eval_shape(tx.init, params)
    saved = {key: np.full(value.shape, 2, value.dtype) for key, value in state_dict(template).items()}
    restored, _ = load_state_dict(template, saved)
    for value in saved.values():
        value[...] = 7
    assert all(np.all(np.asarray(leaf) == 2) for leaf in jax.tree.leaves(restored))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_round_trip_of_float64_state_is_exact(name):
    with jax.enable_x64(True):
        tx, params = OPTIMIZERS[name](None), make_params(jnp.float64)
        state = trained_state(tx, params)
        assert any(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(state))
        restored, report = load_state_dict(jax.eval_shape(tx.init, params), through_npz(state_dict(state)))
        assert report.complete
        assert_states_identical(restored, state)


def test_counters_flags_and_injected_hyperparameters_come_back():
    params = make_params()
    tx = mpnn_opt.skip_non_finite(mpnn_opt.accumulate(mpnn_opt.inject_hyperparams(mpnn_opt.adam)(beta1=0.8), 3))
    state = tx.init(params)
    bad = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    for grads in (params, params, params, params, bad):
        _, state = tx.update(grads, state, params)
    state = mpnn_opt.with_hyperparam(state, "learning_rate", 0.5)
    restored, _ = load_state_dict(tx.init(params), through_npz(state_dict(state)))
    assert int(restored.skipped) == 1 and bool(restored.last_finite) is False
    assert int(restored.inner_state.micro_step) == 1
    assert int(mpnn_opt.read_value(restored, "count")) == 1
    assert float(mpnn_opt.read_value(restored, "learning_rate")) == 0.5
    assert float(mpnn_opt.read_value(restored, "beta1")) == np.float32(0.8)


def adam_keys(layer: str, name: str, scope: str = "") -> list[str]:
    return [f"{layer}/{name}:{scope}scale_by_adam.{field}" for field in ("momentums", "velocities")]


def test_inserting_clip_by_global_norm_in_front_of_adam_restores_everything():
    params = make_params()
    old = mpnn_opt.adam(regularization=None)
    state = trained_state(old, params)
    new = mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(regularization=None))
    restored, report = load_state_dict(new.init(params), state_dict(state))
    assert report == LoadReport(restored=tuple(sorted(state_dict(state))), fresh=(), dropped=(), mismatched=())
    assert_states_identical(restored[1], state)


def test_adding_a_layer_restores_the_others_and_reports_the_new_one_as_fresh():
    tx = mpnn_opt.adam(regularization=None)
    state = trained_state(tx, make_params())
    bigger = make_params(layers=("dense", "head", "extra"))
    template = tx.init(bigger)
    with pytest.raises(ValueError, match="extra/weights:scale_by_adam.momentums"):
        load_state_dict(template, state_dict(state))
    restored, report = load_state_dict(template, state_dict(state), strict=False)
    assert report.fresh == tuple(adam_keys("extra", "weights"))
    assert report.dropped == () and report.mismatched == ()
    assert report.restored == tuple(sorted(state_dict(state)))
    for field in ("momentums", "velocities"):
        for layer, leaves in getattr(state[1], field).items():
            for name, value in leaves.items():
                np.testing.assert_array_equal(getattr(restored[1], field)[layer][name], value)
        np.testing.assert_array_equal(getattr(restored[1], field)["extra"]["weights"], np.zeros((2, 2)))


def test_removing_a_layer_reports_its_moments_as_dropped():
    tx = mpnn_opt.adam(regularization=None)
    state = trained_state(tx, make_params())
    template = tx.init(make_params(layers=("dense",)))
    with pytest.raises(ValueError, match="head/weights:scale_by_adam.velocities"):
        load_state_dict(template, state_dict(state))
    restored, report = load_state_dict(template, state_dict(state), strict=False)
    assert report.dropped == tuple(adam_keys("head", "weights"))
    assert report.fresh == () and report.mismatched == ()
    np.testing.assert_array_equal(restored[1].momentums["dense"]["weights"], state[1].momentums["dense"]["weights"])
    np.testing.assert_array_equal(restored[1].velocities["dense"]["bias"], state[1].velocities["dense"]["bias"])


def test_reordering_the_params_dict_keeps_each_moment_with_its_parameter():
    tx = mpnn_opt.adam(regularization=None)
    params = make_params()
    state = trained_state(tx, params)
    reordered = {layer: dict(reversed(params[layer].items())) for layer in reversed(params)}
    restored, report = load_state_dict(tx.init(reordered), state_dict(state))
    assert report.complete
    for layer in params:
        for name in params[layer]:
            np.testing.assert_array_equal(restored[1].momentums[layer][name], state[1].momentums[layer][name])


def test_stages_of_the_same_kind_are_numbered_by_kind_not_by_position():
    params = make_params(layers=("head",))
    tx = mpnn_opt.chain(mpnn_opt.trace(0.9), mpnn_opt.trace(0.5))
    state = trained_state(tx, params)
    assert list(state_dict(state)) == ["head/weights:trace.trace", "head/weights:trace#2.trace"]
    clipped = mpnn_opt.chain(
        mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.trace(0.9), mpnn_opt.scale_by_adam(), mpnn_opt.trace(0.5)
    )
    restored, report = load_state_dict(clipped.init(params), state_dict(state), strict=False)
    assert report.fresh == (
        "head/weights:scale_by_adam.momentums",
        "head/weights:scale_by_adam.velocities",
        "scale_by_adam.count",
    )
    np.testing.assert_array_equal(restored[1].trace["head"]["weights"], state[0].trace["head"]["weights"])
    np.testing.assert_array_equal(restored[3].trace["head"]["weights"], state[1].trace["head"]["weights"])


def test_a_dtype_difference_raises_when_strict_and_is_reported_otherwise():
    params = make_params()
    saved = state_dict(trained_state(mpnn_opt.adam(), params))
    template = mpnn_opt.adam(state_dtype=jnp.bfloat16).init(params)
    key = "dense/weights:scale_by_adam.momentums"
    with pytest.raises(ValueError, match=rf"{key}  \(saved float32\[3, 4\], template bfloat16\[3, 4\]\)"):
        load_state_dict(template, saved)
    restored, report = load_state_dict(template, saved, strict=False)
    assert report.mismatched == tuple(sorted(k for k in saved if ":" in k))
    assert report.restored == ("scale_by_adam.count",)
    assert restored[0].momentums["dense"]["weights"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(restored[0].momentums["dense"]["weights"], np.zeros((3, 4)))


def test_a_shape_difference_is_mismatched():
    tx = mpnn_opt.adam(regularization=None)
    saved = state_dict(trained_state(tx, make_params()))
    params = make_params()
    params["head"]["weights"] = jnp.zeros((4, 3))
    _, report = load_state_dict(tx.init(params), saved, strict=False)
    assert report.mismatched == tuple(adam_keys("head", "weights"))
    assert report.reasons["head/weights:scale_by_adam.momentums"] == "saved float32[4, 2], template float32[4, 3]"


def test_an_abstract_template_has_no_initial_value_for_fresh_entries():
    tx = mpnn_opt.adam(regularization=None)
    saved = state_dict(trained_state(tx, make_params()))
    template = jax.eval_shape(tx.init, make_params(layers=("dense", "head", "extra")))
    with pytest.raises(ValueError, match=r"no initial value.*extra/weights:scale_by_adam.momentums"):
        load_state_dict(template, saved, strict=False)


def test_two_values_with_the_same_key_raise():
    params = {"a/b": jnp.zeros(2), "a": {"b": jnp.ones(2)}}
    with pytest.raises(ValueError, match="'a/b:trace.trace'"):
        state_dict(mpnn_opt.trace(0.9).init(params))


def test_the_report_reads_as_a_list_of_changes():
    report = LoadReport(restored=("a", "b"), fresh=("c",), dropped=(), mismatched=("d",), reasons={"d": "why"})
    assert str(report) == (
        "restored: 2\n"
        "fresh (not in the checkpoint; initial values kept): 1\n  c\n"
        "dropped (in the checkpoint only): 0\n"
        "mismatched (initial values kept): 1\n  d  (why)"
    )


def test_orbax_standard_checkpointer_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx, params = OPTIMIZERS["inject_hyperparams"](jnp.bfloat16), make_params()
    state = trained_state(tx, params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "step_2", state_dict(state))
    checkpointer.wait_until_finished()
    restored, report = load_state_dict(tx.init(params), checkpointer.restore(tmp_path / "step_2"))
    assert report.complete
    assert_states_identical(restored, state)


# resuming in a fresh process: the test trains SPLIT steps, saves, and a new interpreter finishes the run

SPLIT, TOTAL = 3, 6
HERE = pathlib.Path(__file__).parent


RESUME_TX = mpnn_opt.skip_non_finite(
    mpnn_opt.chain(
        mpnn_opt.clip_by_global_norm(1.0),
        mpnn_opt.accumulate(mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=SCHEDULE), 2),
    )
)


def resume_step(params, state, step):
    x = jax.random.normal(jax.random.key(step), (8, 3))
    loss = lambda p: jnp.mean((jnp.tanh(x @ p["dense"]["weights"] + p["dense"]["bias"]) @ p["head"]["weights"]) ** 2)  # noqa: E731
    updates, state = RESUME_TX.update(jax.grad(loss)(params), state, params)
    return mpnn_opt.apply_updates(params, updates), state


def run(params, state, start, stop):
    step = jax.jit(resume_step)
    for index in range(start, stop):
        params, state = step(params, state, index)
    return params, state


def save_run(path, params, state) -> None:
    arrays = {f"param:{i}": np.asarray(p) for i, p in enumerate(jax.tree.leaves(params))}
    np.savez(path, **arrays, **{key: np.asarray(value) for key, value in state_dict(state).items()})


def load_run(path) -> tuple[dict, dict, dict]:
    """The params and the optimizer's saved dict, plus everything saved as numpy arrays."""
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    structure = jax.tree.structure(make_params())
    params = jax.tree.unflatten(structure, [jnp.asarray(arrays[f"param:{i}"]) for i in range(structure.num_leaves)])
    return params, {key: value for key, value in arrays.items() if not key.startswith("param:")}, arrays


def finish_from(checkpoint: str, out: str) -> None:
    """Runs in the fresh process: load params and optimizer state, train up to TOTAL, save both."""
    params, saved, _ = load_run(checkpoint)
    state, _ = load_state_dict(RESUME_TX.init(params), saved)
    save_run(out, *run(params, state, SPLIT, TOTAL))


def test_training_resumed_in_a_fresh_process_continues_bit_identically(tmp_path):
    params = make_params()
    state = RESUME_TX.init(params)
    save_run(tmp_path / "half.npz", *run(params, state, 0, SPLIT))
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_checkpoint as t; t.finish_from(*sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "half.npz"), str(tmp_path / "resumed.npz")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr
    save_run(tmp_path / "uninterrupted.npz", *run(params, state, 0, TOTAL))
    _, _, resumed = load_run(tmp_path / "resumed.npz")
    _, _, uninterrupted = load_run(tmp_path / "uninterrupted.npz")
    assert sorted(resumed) == sorted(uninterrupted)
    for key, value in uninterrupted.items():
        assert resumed[key].dtype == value.dtype, key
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert uninterrupted["accumulate.micro_step"] == 0 and uninterrupted["scale_by_adam.count"] == TOTAL // 2
