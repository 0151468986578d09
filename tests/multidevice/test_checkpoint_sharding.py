"""load_state_dict onto a template whose arrays carry NamedShardings over a 4x2 mesh of 8 simulated devices.

The checkpoint comes from an unsharded run (numpy arrays, as numpy.savez or orbax give them back); each
restored leaf must land on its template leaf's sharding with the saved values. Run with 8 devices
(see conftest.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mpnn_opt
from mpnn_opt.checkpoint import load_state_dict, state_dict
from mpnn_opt.sharding import state_shardings

SPECS = {"dense": {"weights": P("data", "model"), "bias": P("model")}, "head": {"weights": P("model", "data")}}
SHAPES = {"dense": {"weights": (8, 6), "bias": (6,)}, "head": {"weights": (6, 4)}}
TRANSFORMS = {
    "adam": lambda: mpnn_opt.adam(),
    "inject-accumulate-torch_rmsprop": lambda: mpnn_opt.accumulate(
        mpnn_opt.inject_hyperparams(mpnn_opt.torch_rmsprop)(centered=True, momentum=0.9), 2
    ),
}


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda shape: rng.standard_normal(shape).astype(np.float32), SHAPES, is_leaf=_is_shape)


def _is_shape(node) -> bool:
    return isinstance(node, tuple) and all(isinstance(n, int) for n in node)


def saved_after_steps(tx, params, steps: int = 3) -> dict:
    state = tx.init(params)
    for seed in range(1, steps + 1):
        updates, state = tx.update(make_params(seed), state, params)
        params = mpnn_opt.apply_updates(params, updates)
    return {key: np.asarray(value) for key, value in state_dict(state).items()}


@pytest.mark.parametrize("abstract", [False, True], ids=["arrays", "shape-dtype-structs"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_restored_leaves_land_on_the_template_shardings(name, abstract):
    tx, params = TRANSFORMS[name](), make_params()
    saved = saved_after_steps(tx, params)
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    param_shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), SPECS)
    shardings = state_shardings(tx, params, param_shardings)
    template = jax.jit(tx.init, out_shardings=shardings)(jax.device_put(params, param_shardings))
    if abstract:
        template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), template)
    restored, report = load_state_dict(template, saved)
    assert report.complete and sorted(report.restored) == sorted(saved)
    assert jax.tree.structure(restored) == jax.tree.structure(template)
    template_leaves, sharded = state_dict(template), 0
    for key, leaf in state_dict(restored).items():
        template_leaf = template_leaves[key]
        assert leaf.sharding == template_leaf.sharding, (key, leaf.sharding, template_leaf.sharding)
        assert leaf.dtype == template_leaf.dtype, key
        np.testing.assert_array_equal(np.asarray(leaf), saved[key], err_msg=key)
        sharded += not leaf.sharding.is_fully_replicated
    assert sharded >= 6  # the moments of the three parameters, split over the mesh
