"""8-bit Adam state on a 4x2 ('data', 'model') mesh of 8 simulated CPU devices (run with 8 devices, see conftest.py).

Oracle: the same steps run on one device. The blocks of ``scale_by_adam_8bit`` run along each tensor's trailing
axes, so a tensor sharded on a leading axis, or on its blocked axis with whole blocks per shard, keeps its
sharding in the state and the update compiles with no cross-device communication.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import mpnn_opt
from mpnn_opt.precision import QuantizedBlocks, ScaleByAdam8bitState

STEPS = 3
COLLECTIVES = re.compile(r"\b(all-reduce|all-gather|collective-permute|reduce-scatter|all-to-all)\b")

# name -> (shape, the param's spec, the spec of its 8-bit values (scales: the same without the last entry))
ALIGNED = {
    "dense": ((64, 512), P("data", "model"), P("data", "model", None)),  # 256 of the last axis a shard: one block
    "embed": ((16, 8, 256), P("model", "data", None), P("model", "data", None, None)),  # leading axes sharded
    "bias": ((2048,), P(("data", "model")), P(("data", "model"), None)),  # 8 shards of 256: one block each
    "column": ((512, 1), P("model", None), P("model", None)),  # the trailing axes merged: 512, two shards of 256
    "scalar": ((3,), P(), P(None, None)),
}
# 512 rows over 'data' is 128 a shard, half a block: blocks would straddle two shards, so the column's moments
# are replicated over 'data' (an all-gather of its gradient each step)
STRADDLING = {"column": ((512, 1), P("data", None), P(None, None)), "dense": ALIGNED["dense"]}


@functools.cache
def mesh(axis_type: AxisType = AxisType.Explicit) -> jax.sharding.Mesh:
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type, axis_type))


def make_tree(layout: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 0)).astype(np.float32)
        for name, (shape, *_) in layout.items()
    }


def make_tx():
    return mpnn_opt.chain(mpnn_opt.scale_by_adam_8bit(), mpnn_opt.scale_by_learning_rate(0.01))


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    return step


def run_one_device(layout: dict):
    tx = make_tx()
    params = jax.device_put(make_tree(layout, 0), jax.devices()[0])
    state, step = tx.init(params), jax.jit(step_fn(tx))
    for seed in range(1, STEPS + 1):
        params, state = step(params, state, make_tree(layout, seed))
    return params, state


def run_explicit(layout: dict):
    """Init and steps under ``jax.set_mesh``: the state's shardings come from the params' (no out_shardings)."""
    tx = make_tx()
    shardings = {name: NamedSharding(mesh(), spec) for name, (_, spec, _) in layout.items()}
    with jax.set_mesh(mesh()):
        params = jax.device_put(make_tree(layout, 0), shardings)
        state = jax.jit(tx.init)(params)
        step = jax.jit(step_fn(tx))
        hlo = step.lower(params, state, params).compile().as_text()
        for seed in range(1, STEPS + 1):
            params, state = step(params, state, jax.device_put(make_tree(layout, seed), shardings))
    return params, state, hlo


def documented_shardings(layout: dict, axis_type: AxisType):
    """The state's shardings by the docstring's rule, written out: values take the spec in the layout, scales the
    same without its last entry, the count is replicated."""

    def blocks(spec: P) -> QuantizedBlocks:
        return QuantizedBlocks(NamedSharding(mesh(axis_type), spec), NamedSharding(mesh(axis_type), P(*spec[:-1])))

    adam = ScaleByAdam8bitState(
        NamedSharding(mesh(axis_type), P()),
        {name: blocks(values) for name, (_, _, values) in layout.items()},
        {name: blocks(values) for name, (_, _, values) in layout.items()},
    )
    return (adam, mpnn_opt.EmptyState())


def quantized(state) -> list[tuple[str, QuantizedBlocks]]:
    adam = state[0]
    return [(name, q) for tree in (adam.momentums, adam.root_velocities) for name, q in tree.items()]


def assert_same_numbers(got, expected) -> None:
    (got_params, got_state), (expected_params, expected_state) = got, expected
    for name in expected_params:
        np.testing.assert_allclose(np.asarray(got_params[name]), np.asarray(expected_params[name]), rtol=1e-6, atol=0)
    for (name, q), (_, oracle) in zip(quantized(got_state), quantized(expected_state)):
        np.testing.assert_array_equal(np.asarray(q.values), np.asarray(oracle.values), err_msg=name)
        np.testing.assert_array_equal(np.asarray(q.scales), np.asarray(oracle.scales), err_msg=name)


@functools.cache
def explicit_run():
    return run_explicit(ALIGNED)


def test_8bit_state_blocks_keep_each_tensors_sharding():
    _, state, _ = explicit_run()
    for name, q in quantized(state):
        shape, _, values_spec = ALIGNED[name]
        assert q.values.sharding.is_equivalent_to(NamedSharding(mesh(), values_spec), q.values.ndim), name
        assert q.scales.sharding.is_equivalent_to(NamedSharding(mesh(), P(*values_spec[:-1])), q.scales.ndim), name
    dense = state[0].momentums["dense"]
    assert dense.values.shape == (64, 2, 256)
    assert {shard.data.shape for shard in dense.values.addressable_shards} == {(16, 1, 256)}  # a quarter of the
    assert {shard.data.shape for shard in dense.scales.addressable_shards} == {(16, 1)}  # rows, one of two blocks
    bias = state[0].root_velocities["bias"]
    assert {shard.data.shape for shard in bias.values.addressable_shards} == {(1, 256)}
    assert state[0].count.sharding.is_fully_replicated


def test_8bit_sharded_update_compiles_with_no_all_gather_or_other_collective():
    _, _, hlo = explicit_run()
    assert "all-gather" not in hlo
    assert COLLECTIVES.findall(hlo) == []


def test_8bit_sharded_run_gives_the_one_device_numbers():
    params, state, _ = explicit_run()
    assert_same_numbers((params, state), run_one_device(ALIGNED))


@pytest.mark.parametrize("layout", [ALIGNED, STRADDLING], ids=["aligned", "straddling"])
def test_state_shardings_lay_the_8bit_blocks_out_as_documented(layout):
    """mpnn_opt.state_shardings asks each QuantizedBlocks for its shardings (shardings_for)."""
    tx, shardings = make_tx(), {name: NamedSharding(mesh(), spec) for name, (_, spec, _) in layout.items()}
    assert mpnn_opt.state_shardings(tx, make_tree(layout, 0), shardings) == documented_shardings(
        layout, AxisType.Explicit
    )


def test_8bit_state_on_an_auto_mesh_under_state_shardings_compiles_with_no_collectives():
    tx, shardings = (
        make_tx(),
        {name: NamedSharding(mesh(AxisType.Auto), spec) for name, (_, spec, _) in ALIGNED.items()},
    )
    params = jax.device_put(make_tree(ALIGNED, 0), shardings)
    state_shardings = mpnn_opt.state_shardings(tx, params, shardings)
    assert state_shardings == documented_shardings(ALIGNED, AxisType.Auto)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    step = jax.jit(
        step_fn(tx), in_shardings=(shardings, state_shardings, shardings), out_shardings=(shardings, state_shardings)
    )
    assert COLLECTIVES.findall(step.lower(params, state, params).compile().as_text()) == []
    for seed in range(1, STEPS + 1):
        params, state = step(params, state, jax.device_put(make_tree(ALIGNED, seed), shardings))
    assert_same_numbers((params, state), run_one_device(ALIGNED))


def test_8bit_blocks_that_would_straddle_shards_are_replicated_over_that_axis_and_still_match_one_device():
    params, state, hlo = run_explicit(STRADDLING)
    column = state[0].momentums["column"]
    assert column.values.sharding.is_fully_replicated and column.values.shape == (2, 256)
    assert params["column"].sharding.spec == P("data", None)  # the param itself stays sharded
    assert "all-gather" in hlo
    assert_same_numbers((params, state), run_one_device(STRADDLING))
