"""cpu_compiler_options: which jits get XLA:CPU's thread splitting turned off, and that it changes no number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt

NO_SPLIT = {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}


def test_small_trees_on_cpu_get_the_option_and_large_or_empty_ones_nothing():
    small = {"w": jnp.ones((512, 512)), "b": np.ones(3, np.float32)}  # 262,144 elements at most
    assert mpnn_opt.cpu_compiler_options(small) == NO_SPLIT
    assert mpnn_opt.cpu_compiler_options(jax.ShapeDtypeStruct((1 << 20,), jnp.float32)) == {}  # 2^20: split
    assert mpnn_opt.cpu_compiler_options({"w": jax.ShapeDtypeStruct(((1 << 20) - 1,), jnp.float32)}) == NO_SPLIT
    assert mpnn_opt.cpu_compiler_options(small, parallel_loop_min_elements=1000) == {}
    assert mpnn_opt.cpu_compiler_options({}) == {}
    assert mpnn_opt.compiler_options.PARALLEL_LOOP_MIN_ELEMENTS == 1 << 20


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_a_bad_threshold_raises_naming_the_argument(bad):
    with pytest.raises(ValueError, match="parallel_loop_min_elements"):
        mpnn_opt.cpu_compiler_options({"w": jnp.ones(3)}, parallel_loop_min_elements=bad)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_a_step_compiled_with_the_option_is_not_split_and_gives_the_same_numbers(name, rng):
    tx = getattr(mpnn_opt, name)()
    params = mpnn_opt.pack(
        {"dense": {"weights": jnp.asarray(rng.standard_normal((300, 300)), jnp.float32), "bias": jnp.zeros(300)}}
    )
    grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    results = {}
    for label, options in (("default", {}), ("option", mpnn_opt.cpu_compiler_options(params))):
        compiled = jax.jit(step, compiler_options=options).lower(params, grads, tx.init(params)).compile()
        assert ("outer_dimension_partitions" in compiled.as_text()) == (label == "default")
        p, state = params, tx.init(params)
        for _ in range(3):
            p, state = compiled(p, grads, state)
        results[label] = p
    for got, want in zip(jax.tree.leaves(results["option"]), jax.tree.leaves(results["default"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
