"""One type with optax, and optax's utilities on our states: isinstance, tree_get / tree_set,
tree_map_params, MultiSteps, apply_if_finite, optax.inject_hyperparams(mpnn_opt.adam); our read_value and
with_hyperparam on optax's injected states; our masks and labels inside nnx.Optimizer.

Oracles: optax's own optimizers through the same utilities, and values worked out by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax import tree_utils

import mpnn_opt

PARAMS = {"dense": {"weights": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.1, -0.1])}}


def _grads(step: int):
    return jax.tree.map(lambda p: jnp.cos(p * (step + 2)), PARAMS)


def _run(tx, steps: int = 4):
    params, state = PARAMS, tx.init(PARAMS)
    for step in range(steps):
        updates, state = tx.update(_grads(step), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _close(got, expected, rtol=2e-5):  # optax's float32 1 - b^t is 1.3e-5 off ours at t = 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("factory", [mpnn_opt.adam, mpnn_opt.sgd, mpnn_opt.clip_by_global_norm, mpnn_opt.chain])
def test_ours_are_instances_of_optax_types(factory):
    tx = factory() if factory is not mpnn_opt.clip_by_global_norm else factory(1.0)
    assert isinstance(tx, optax.GradientTransformation) and isinstance(tx, optax.GradientTransformationExtraArgs)
    assert isinstance(tx, mpnn_opt.GradientTransformation)


def test_tree_get_and_tree_set_find_the_one_count_of_adam():
    _, state = _run(mpnn_opt.adam(0.1))
    assert int(tree_utils.tree_get(state, "count")) == 4  # no placeholder count fields beside Adam's own
    reset = tree_utils.tree_set(state, count=jnp.asarray(0, jnp.int32))
    assert int(tree_utils.tree_get(reset, "count")) == 0
    assert int(mpnn_opt.read_value(reset, "count")) == 0


def test_tree_map_params_maps_exactly_the_per_parameter_state():
    tx = mpnn_opt.adam(0.1)
    state = tx.init(PARAMS)
    doubled = optax.tree_map_params(tx, lambda p: p + 1.0, state)
    assert int(doubled[0].count) == 0  # not a per-parameter leaf: untouched
    jax.tree.map(lambda m: np.testing.assert_array_equal(m, 1.0), doubled[0].momentums)


def test_multi_steps_and_apply_if_finite_wrap_ours_like_optax():
    ours, _ = _run(optax.MultiSteps(mpnn_opt.adam(0.1, None), every_k_schedule=2), steps=6)
    theirs, _ = _run(optax.MultiSteps(optax.adam(0.1), every_k_schedule=2), steps=6)
    _close(ours, theirs)
    guarded = optax.apply_if_finite(mpnn_opt.adam(0.1, None), max_consecutive_errors=2)
    state = guarded.init(PARAMS)
    bad = jax.tree.map(lambda g: g * jnp.nan, PARAMS)
    updates, state = guarded.update(bad, state, PARAMS)
    jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), updates)
    assert int(state.notfinite_count) == 1


def test_optax_inject_hyperparams_of_our_adam_changes_the_rate_like_optax_adam():
    def run(factory, rename):
        tx = optax.inject_hyperparams(factory)(learning_rate=0.1, **rename)
        params, state = PARAMS, tx.init(PARAMS)
        for step in range(4):
            if step == 2:
                state.hyperparams["learning_rate"] = jnp.asarray(0.01)
            updates, state = tx.update(_grads(step), state, params)
            params = optax.apply_updates(params, updates)
        return params

    _close(run(mpnn_opt.adam, {"regularization": None}), run(optax.adam, {}))


def test_read_value_and_with_hyperparam_work_on_optax_injected_states():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.1, b1=0.9)
    state = tx.init(PARAMS)
    assert float(mpnn_opt.read_value(state, "learning_rate")) == pytest.approx(0.1)
    state = mpnn_opt.with_hyperparam(state, "b1", 0.5)
    assert float(mpnn_opt.read_value(state, "b1")) == 0.5
    # the changed value is the one optax uses: one step equals optax.adam(0.1, b1=0.5)
    updates, _ = tx.update(_grads(0), state, PARAMS)
    expected, _ = optax.adam(0.1, b1=0.5).update(_grads(0), optax.adam(0.1, b1=0.5).init(PARAMS), PARAMS)
    _close(updates, expected)  # optax's injected float32 b2 and its Python-float b2 round 1 - b2^t apart
    scheduled = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(0.1, 0.0, 10))
    with pytest.raises(ValueError, match="schedule"):
        mpnn_opt.with_hyperparam(scheduled.init(PARAMS), "learning_rate", 0.5)


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.encoder = nnx.Linear(2, 3, rngs=rngs)
        self.head = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(self.encoder(x))


def _nnx_moved(tx) -> dict[str, bool]:
    model = Model(nnx.Rngs(0))
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # init sees paths ending in .value, update plain arrays
    for _ in range(2):
        optimizer.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    return {
        jax.tree_util.keystr(path): bool(jnp.any(a != b))
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(before))
    }


def test_path_masks_and_labels_work_inside_nnx_optimizer():
    frozen_encoder = mpnn_opt.chain(mpnn_opt.sgd(0.1, None), mpnn_opt.freeze(mpnn_opt.path_mask("encoder/*")))
    assert _nnx_moved(frozen_encoder) == {
        "['encoder']['bias']": False,
        "['encoder']['kernel']": False,
        "['head']['bias']": True,
        "['head']['kernel']": True,
    }
    labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: (
            "frozen"
            if mpnn_opt.path_mask("head/kernel")(params)
            and "head" in jax.tree_util.keystr(path)
            and "kernel" in jax.tree_util.keystr(path)
            else "train"
        ),
        params,
    )
    by_label = mpnn_opt.partition({"train": mpnn_opt.adam(0.1), "frozen": mpnn_opt.freeze(True)}, labels)
    assert _nnx_moved(by_label) == {
        "['encoder']['bias']": True,
        "['encoder']['kernel']": True,
        "['head']['bias']": True,
        "['head']['kernel']": False,
    }
    masked = mpnn_opt.masked(mpnn_opt.sgd(0.1, None), mpnn_opt.path_mask("*/bias"))
    assert _nnx_moved(masked) == {
        "['encoder']['bias']": True,
        "['encoder']['kernel']": True,
        "['head']['bias']": True,
        "['head']['kernel']": True,
    }  # masked leaves the others' updates as they came: the raw gradient, so every leaf moves
