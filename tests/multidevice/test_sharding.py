"""Sharded params and state on a 4x2 ('data', 'model') mesh of 8 simulated CPU devices.

Oracle: the same jitted step run unsharded on one device. Run with 8 devices (see conftest.py).
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import mpnn_opt
from mpnn_opt.sharding import per_device_nbytes, state_shardings

STEPS = 3
COLLECTIVES = re.compile(r"\b(all-reduce|all-gather|collective-permute|reduce-scatter|all-to-all)\b")

# name -> (shape, PartitionSpec over the ('data', 'model') mesh)
LAYOUT = {
    "dense": {"weights": ((8, 6), P("data", "model")), "biases": ((1, 6), P(None, "model"))},
    "norm": {"gamma": ((1, 6), P(None, "model")), "beta": ((1, 6), P())},
    "head": {"weights": ((6, 4), P("model", "data"))},
}
TRANSFORMS = {
    **{
        f"{name}-{reg}": functools.partial(alias, regularization=reg)
        for name, alias in (("sgd", mpnn_opt.sgd), ("rmsprop", mpnn_opt.rmsprop), ("adam", mpnn_opt.adam))
        for reg in ("L1", "L2", None)
    },
    "adam-schedule": lambda: mpnn_opt.adam(optax.exponential_decay(0.01, 1, 0.5)),
    "chain-L1-rms-momentum": lambda: mpnn_opt.chain(
        mpnn_opt.add_regularization("L1", 0.01),
        mpnn_opt.scale_by_rms(0.9, 1e-8, eps_in_sqrt=False),
        mpnn_opt.momentum_velocity(0.01, 0.5),
    ),
}


def _is_spec_pair(node) -> bool:
    return isinstance(node, tuple) and len(node) == 2 and isinstance(node[1], P)


@functools.cache
def mesh(axis_type: AxisType = AxisType.Explicit) -> jax.sharding.Mesh:
    """jax.make_mesh's default axis type is Explicit (shardings in the types); Auto is the older mode."""
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type, axis_type))


def make_params(layout=LAYOUT, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda pair: rng.standard_normal(pair[0]).astype(np.float32), layout, is_leaf=_is_spec_pair)


def make_grads(layout=LAYOUT) -> list[dict]:
    return [make_params(layout, seed=step + 1) for step in range(STEPS)]


def param_shardings(layout=LAYOUT, axis_type: AxisType = AxisType.Explicit) -> dict:
    return jax.tree.map(lambda pair: NamedSharding(mesh(axis_type), pair[1]), layout, is_leaf=_is_spec_pair)


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    return step


def run_unsharded(tx, params, grads_seq):
    device = jax.devices()[0]
    params, grads_seq = jax.device_put((params, grads_seq), device)
    step = jax.jit(step_fn(tx))
    state = tx.init(params)
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state


def run_sharded(tx, params, grads_seq, p_shard, s_shard):
    """Returns final params and state, and the compiled step's HLO text."""
    step = jax.jit(step_fn(tx), in_shardings=(p_shard, s_shard, p_shard), out_shardings=(p_shard, s_shard))
    params = jax.device_put(params, p_shard)
    state = jax.jit(tx.init, out_shardings=s_shard)(params)
    hlo = step.lower(params, state, params).compile().as_text()
    for grads in grads_seq:
        params, state = step(params, state, jax.device_put(grads, p_shard))
    return params, state, hlo


@functools.cache
def sharded_and_oracle(name: str, axis_type: AxisType = AxisType.Explicit):
    tx = TRANSFORMS[name]()
    params, grads = make_params(), make_grads()
    p_shard = param_shardings(axis_type=axis_type)
    s_shard = state_shardings(tx, params, p_shard)
    sharded = run_sharded(tx, params, grads, p_shard, s_shard)
    return sharded, run_unsharded(tx, params, grads), p_shard


def assert_trees_close(got, expected) -> None:
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_sharded_params_and_state_give_the_single_device_numbers(name):
    (params, state, _), (oracle_params, oracle_state), _ = sharded_and_oracle(name)
    assert_trees_close(params, oracle_params)
    assert_trees_close(state, oracle_state)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_state_leaf_comes_out_with_its_parameters_sharding(name):
    (params, state, _), _, p_shard = sharded_and_oracle(name)
    params_def = jax.tree.structure(params)
    per_param = [
        node
        for node in jax.tree.leaves(state, is_leaf=lambda n: jax.tree.structure(n) == params_def)
        if jax.tree.structure(node) == params_def
    ]
    assert per_param, "every transform here keeps per-parameter state"
    for tree in per_param:
        for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(p_shard)):
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)
    for count in [leaf for leaf in jax.tree.leaves(state) if leaf.ndim == 0]:
        assert count.sharding.is_fully_replicated


@pytest.mark.parametrize("name", TRANSFORMS)
def test_state_shardings_agree_with_optax_tree_map_params(name):
    """optax.tree_map_params finds the per-parameter parts of a state its own way (by tracing init)."""
    tx, params, p_shard = TRANSFORMS[name](), make_params(), param_shardings()
    replicated = NamedSharding(mesh(), P())
    expected = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        jax.eval_shape(tx.init, params),
        p_shard,
        transform_non_params=lambda _: replicated,
    )
    assert state_shardings(tx, params, p_shard) == expected


@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_sharded_update_compiles_with_no_cross_device_collectives(name):
    (_, _, hlo), _, _ = sharded_and_oracle(name)
    assert COLLECTIVES.findall(hlo) == []


@pytest.mark.parametrize("name", ["adam-L2", "chain-L1-rms-momentum"])
def test_an_auto_axis_mesh_gives_the_same_numbers_and_shardings_with_no_collectives(name):
    (params, state, hlo), (oracle_params, oracle_state), p_shard = sharded_and_oracle(name, AxisType.Auto)
    assert_trees_close(params, oracle_params)
    assert_trees_close(state, oracle_state)
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(p_shard)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert COLLECTIVES.findall(hlo) == []


def test_global_norm_clipping_needs_an_all_reduce_and_still_matches_one_device():
    tx = mpnn_opt.chain(optax.clip_by_global_norm(1.0), mpnn_opt.adam(0.01, regularization=None))
    params, grads, p_shard = make_params(), make_grads(), param_shardings()
    got_params, got_state, hlo = run_sharded(tx, params, grads, p_shard, state_shardings(tx, params, p_shard))
    oracle_params, oracle_state = run_unsharded(tx, params, grads)
    assert "all-reduce" in COLLECTIVES.findall(hlo)
    assert_trees_close(got_params, oracle_params)
    assert_trees_close(got_state, oracle_state)


def test_state_shardings_work_on_abstract_shapes_and_init_under_out_shardings():
    tx = mpnn_opt.adam(0.01)
    params, p_shard = make_params(), param_shardings()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    from_abstract = state_shardings(tx, abstract, p_shard)
    assert from_abstract == state_shardings(tx, params, p_shard)
    expected_shapes = jax.tree.map(lambda x: (x.shape, x.dtype), jax.eval_shape(tx.init, abstract))
    state = jax.jit(tx.init, out_shardings=from_abstract)(jax.device_put(params, p_shard))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == expected_shapes
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(from_abstract)):
        assert leaf.sharding == sharding
    assert_trees_close(state, tx.init(params))


# ZeRO-1: every leaf has a dimension the 'data' axis (size 4) divides.
ZERO_LAYOUT = {
    "dense": {"weights": ((8, 6), P()), "biases": ((1, 8), P())},
    "head": {"weights": ((6, 12), P()), "biases": ((1, 12), P())},
}


def test_zero1_splits_state_over_data_axis_with_the_unsharded_numbers_and_a_quarter_of_the_memory():
    tx = mpnn_opt.adam(0.01, regularization="L2")
    params, grads, p_shard = make_params(ZERO_LAYOUT), make_grads(ZERO_LAYOUT), param_shardings(ZERO_LAYOUT)
    s_shard = state_shardings(tx, params, p_shard, zero_axis="data")
    got_params, got_state, hlo = run_sharded(tx, params, grads, p_shard, s_shard)
    oracle_params, oracle_state = run_unsharded(tx, params, grads)
    assert_trees_close(got_params, oracle_params)
    assert_trees_close(got_state, oracle_state)
    for leaf in jax.tree.leaves(got_params):
        assert leaf.sharding.is_fully_replicated

    per_param_state = (got_state[0].momentums, got_state[0].velocities)  # scale_by_adam's state
    full = sum(leaf.nbytes for leaf in jax.tree.leaves(per_param_state))
    per_device = per_device_nbytes(per_param_state)
    replicated = per_device_nbytes(jax.device_put(per_param_state, NamedSharding(mesh(), P())))
    print(
        f"\nZeRO-1 adam state: {full} bytes in all; per device {sorted(set(per_device.values()))} "
        f"sharded vs {sorted(set(replicated.values()))} replicated; step collectives {sorted(set(COLLECTIVES.findall(hlo)))}"
    )
    assert len(per_device) == 8
    assert set(per_device.values()) == {full // 4}
    assert set(replicated.values()) == {full}


def test_zero1_keeps_the_parameters_sharding_where_the_data_axis_divides_no_free_dimension():
    tx = mpnn_opt.sgd(momentum=0.5)
    params, p_shard = make_params(), param_shardings()
    velocities = state_shardings(tx, params, p_shard, zero_axis="data")[1].velocities
    assert velocities["dense"]["weights"].spec == P("data", "model")  # 'data' already used
    assert velocities["dense"]["biases"].spec == P(None, "model")  # 1 and 6: 4 divides neither
    assert velocities["norm"]["beta"].spec == P()  # (1, 6)
    assert velocities["head"]["weights"].spec == P("model", "data")


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_pack_refuses_sharded_leaves_with_an_error_naming_the_leaf(axis_type):
    """A packed buffer cannot hold leaves laid out differently; packing must not silently reshard.

    Today, on an Auto mesh, pack() turns a P('data', 'model') weight and a replicated one into a
    single P('data') buffer (unpack gives both back as P('data')); on an Explicit mesh it fails
    inside jnp.concatenate with a ShardingTypeError that names no leaf.
    """
    from mpnn_opt.packed import pack

    params = jax.device_put(make_params(), param_shardings(axis_type=axis_type))
    with pytest.raises(ValueError, match=r"\['dense'\]\['biases'\].*sharded"):
        pack(params)


MASKED_TRANSFORMS = {
    "masked": lambda: mpnn_opt.masked(mpnn_opt.adam(0.01), mpnn_opt.path_mask("dense/*", "head/*")),
    "partition": lambda: mpnn_opt.partition(
        {"adam": mpnn_opt.adam(0.01), "sgd": mpnn_opt.sgd(0.1, None, momentum=0.9)},
        lambda params: {
            layer: jax.tree.map(lambda _: "sgd" if layer == "norm" else "adam", leaves)
            for layer, leaves in params.items()
        },
    ),
}


@pytest.mark.parametrize("name", MASKED_TRANSFORMS)
def test_masked_and_partition_state_follows_the_parameter_sharding_not_replicated(name):
    """Their inner states mirror the params with None where a leaf is masked out; each real leaf gets its param's sharding."""
    tx, params, grads, p_shard = MASKED_TRANSFORMS[name](), make_params(), make_grads(), param_shardings()
    s_shard = state_shardings(tx, params, p_shard)
    params_out, state, hlo = run_sharded(tx, params, grads, p_shard, s_shard)
    expected_params, _ = run_unsharded(tx, params, grads)
    assert_trees_close(params_out, expected_params)
    assert not COLLECTIVES.search(hlo)
    flat_shardings = {jax.tree_util.keystr(path): s for path, s in jax.tree_util.tree_leaves_with_path(p_shard)}
    checked = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if leaf.ndim == 0:
            assert leaf.sharding.is_fully_replicated
            continue
        # the state leaf's path ends with the param's own path, e.g. ...momentums['dense']['weights']
        param_path = next(key for key in flat_shardings if jax.tree_util.keystr(path).endswith(key))
        assert leaf.sharding.is_equivalent_to(flat_shardings[param_path], leaf.ndim), (
            jax.tree_util.keystr(path),
            leaf.sharding,
        )
        checked += 1
    assert checked >= 3
