"""Packed parameters: the layout, the views, and every alias giving the per-leaf numbers on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt
from mpnn_opt.packed import Packed, pack, regularized_mask, unpack
from oracles import SEED_ALIASES, SEED_SETTINGS, random_tree, run_seed, run_transform, tree_relative_error

ALIASES, SETTINGS = SEED_ALIASES, SEED_SETTINGS
STEPS = 20


def _run_packed(tx, params0, grads_seq) -> list[dict]:
    """``run_transform`` on packed params and grads; the history comes back unpacked, as numpy."""
    history = run_transform(tx, pack(params0), [pack(grads) for grads in grads_seq])
    return [jax.tree.map(np.asarray, unpack(packed)) for packed in history]


def _max_step_error(ours, theirs) -> float:
    return max(tree_relative_error(a, b) for a, b in zip(ours, theirs))


def test_pack_puts_regularized_and_unregularized_leaves_in_two_buffers_in_leaf_order(rng):
    params = random_tree(rng)  # conv/{biases,kernels}, dense/{biases,weights}, norm/{beta,gamma} in key order
    packed = pack(params)
    assert packed.layout.names == ("float32_unregularized_bias_beta_gamma", "float32_regularized")
    assert packed.layout.regularized == (False, True)
    by_hand_free = np.concatenate(
        [
            params["conv"]["biases"].ravel(),
            params["dense"]["biases"].ravel(),
            params["norm"]["beta"].ravel(),
            params["norm"]["gamma"].ravel(),
        ]
    )
    by_hand_regularized = np.concatenate([params["conv"]["kernels"].ravel(), params["dense"]["weights"].ravel()])
    np.testing.assert_array_equal(packed.buffers[0], by_hand_free)
    np.testing.assert_array_equal(packed.buffers[1], by_hand_regularized)
    assert packed.size == sum(leaf.size for leaf in jax.tree.leaves(params))


def test_unpack_returns_the_original_tree_exactly_with_mixed_dtypes_and_none_leaves(rng):
    params = {
        "a": {"weights": rng.standard_normal((3, 4)).astype(np.float32), "bias": None},
        "b": {"weights": jnp.asarray(rng.standard_normal((5, 1)), jnp.bfloat16)},
    }
    packed = pack(params)
    assert packed.layout.names == ("float32_regularized", "bfloat16_regularized")
    back = unpack(packed)
    assert back["a"]["bias"] is None
    np.testing.assert_array_equal(back["a"]["weights"], params["a"]["weights"])
    assert back["b"]["weights"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(back["b"]["weights"], np.float32), np.asarray(params["b"]["weights"], np.float32)
    )


def test_grad_through_unpack_comes_back_packed_and_equals_the_packed_per_leaf_grad(rng):
    params = random_tree(rng)
    loss = lambda tree: sum(jnp.sum(jnp.sin(leaf) * (i + 1)) for i, leaf in enumerate(jax.tree.leaves(tree)))  # noqa: E731
    packed_grad = jax.jit(jax.grad(lambda packed: loss(unpack(packed))))(pack(params))
    assert isinstance(packed_grad, Packed)
    expected = pack(jax.grad(loss)(jax.tree.map(jnp.asarray, params)))
    for got, want in zip(packed_grad.buffers, expected.buffers):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_grad_through_unpack_is_one_concatenate_per_buffer_not_a_padded_sum_per_leaf():
    # Per-leaf slices transpose into one zero-padded full buffer per leaf, summed (quadratic in the
    # leaf count: 140 ms for 1000 leaves of 100 here); a split transposes into a single concatenate.
    params = {f"layer{i:03d}": {"weights": jnp.full((2, 5), float(i)), "bias": jnp.zeros(3)} for i in range(50)}
    loss = lambda packed: sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(unpack(packed)))  # noqa: E731
    primitives = [equation.primitive.name for equation in jax.make_jaxpr(jax.grad(loss))(pack(params)).jaxpr.eqns]
    assert primitives.count("concatenate") == 2  # one per buffer: weights (regularized) and bias
    assert "pad" not in primitives


@pytest.mark.parametrize("regularization", ["L1", "L2", None])
@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_on_packed_params_equals_the_per_leaf_path(name, regularization, rng):
    alias, _ = ALIASES[name]
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    tx = alias(**dict(SETTINGS[name], regularization=regularization))
    assert _max_step_error(_run_packed(tx, params0, grads), run_transform(tx, params0, grads)) <= 1e-6


@pytest.mark.parametrize("regularization", ["L1", "L2"])
@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_on_packed_params_reproduces_mpneuralnetwork(name, regularization, rng):
    alias, seed_class = ALIASES[name]
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    kwargs = dict(SETTINGS[name], regularization=regularization)
    assert (
        _max_step_error(_run_packed(alias(**kwargs), params0, grads), run_seed(seed_class(**kwargs), params0, grads))
        <= 1e-6
    )


def test_a_custom_pack_mask_is_honoured_by_regularized_mask_and_by_the_group_names(rng):
    params = random_tree(rng)
    mask = {"conv": {"biases": False, "kernels": False}, "dense": {"biases": True, "weights": True}, "norm": False}
    grads = [random_tree(rng) for _ in range(5)]
    expected = run_transform(mpnn_opt.adam(0.01, "L2", 0.1, mask=mask), params, grads)
    packed = pack(params, mask)
    assert packed.layout.regularized == (False, True)
    packed_grads = [pack(g, mask) for g in grads]
    for optimizer_mask in (regularized_mask, None):  # explicit mask, then the default name rule on group names
        history = run_transform(mpnn_opt.adam(0.01, "L2", 0.1, mask=optimizer_mask), packed, packed_grads)
        assert _max_step_error([jax.tree.map(np.asarray, unpack(p)) for p in history], expected) <= 1e-6


def test_adam_l2_on_packed_params_by_hand():
    # One step from w=2, g=0.5 for a weight and a bias: both become w - lr*g/(|g|+eps); the weight then decays.
    # The packed buffers are 1-D: the default mask reads pack's groups, not the buffers' shapes.
    lr, wd, eps = 0.1, 0.5, 1e-8
    packed = pack({"weights": jnp.array([[2.0]]), "bias": jnp.array([2.0])})
    grads = pack({"weights": jnp.array([[0.5]]), "bias": jnp.array([0.5])})
    tx = mpnn_opt.adam(lr, "L2", wd, epsilon=eps)
    updates, _ = tx.update(grads, tx.init(packed), packed)
    new = unpack(mpnn_opt.apply_updates(packed, updates))
    stepped = 2.0 - lr * 0.5 / (0.5 + eps)
    np.testing.assert_allclose(new["weights"], [[stepped - lr * wd * stepped]], rtol=1e-6)
    np.testing.assert_allclose(new["bias"], [stepped], rtol=1e-6)


def test_pack_refuses_an_array_mask_naming_the_leaf():
    params = {"layer": {"weights": np.ones((2, 2), np.float32)}}
    with pytest.raises(TypeError, match=r"\['layer'\]\['weights'\].*Python bool"):
        pack(params, mask={"layer": {"weights": jnp.array([[True, False], [True, True]])}})


def test_pack_refuses_integer_leaves_naming_the_leaf():
    with pytest.raises(TypeError, match=r"\['steps'\].*int32"):
        pack({"steps": np.arange(3, dtype=np.int32)})


def test_updates_packed_with_another_layout_are_refused():
    packed = pack({"weights": jnp.ones(3), "bias": jnp.ones(2)})
    other = pack({"weights": jnp.ones(5)})
    tx = mpnn_opt.sgd(0.1, None)
    with pytest.raises(ValueError, match="updates"):
        tx.update(other, tx.init(packed), packed)


def test_unpack_refuses_a_plain_tree():
    with pytest.raises(TypeError, match="expected a Packed"):
        unpack({"weights": jnp.ones(3)})


def test_packed_training_example_learns_and_tracks_the_per_leaf_run(capsys):
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "packed_training.py"
    packed_losses, tree_losses = runpy.run_path(str(example))["main"]()
    capsys.readouterr()
    assert packed_losses[-1] < 0.01 * packed_losses[0]
    np.testing.assert_allclose(packed_losses, tree_losses, rtol=1e-4)
