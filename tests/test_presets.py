"""The torch-convention optimizers against real torch, and nadam / lion against optax: 50 steps each,
with the learning rate changed mid-run through inject_hyperparams (no recompilation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt import presets
from mpnn_opt.hyperparams import inject_hyperparams, with_hyperparam
from oracles import random_tree, tree_relative_error

STEPS, SWITCH = 50, 25

TORCH_CASES = {
    "sgd momentum": (presets.torch_sgd, dict(momentum=0.9, weight_decay=0.01), "SGD", dict(momentum=0.9, weight_decay=0.01)),
    "sgd nesterov": (presets.torch_sgd, dict(momentum=0.9, nesterov=True), "SGD", dict(momentum=0.9, nesterov=True)),
    "rmsprop": (presets.torch_rmsprop, dict(alpha=0.9, weight_decay=0.01), "RMSprop", dict(alpha=0.9, weight_decay=0.01)),
    "rmsprop centered momentum": (presets.torch_rmsprop, dict(centered=True, momentum=0.5), "RMSprop", dict(centered=True, momentum=0.5)),
    "adamw": (presets.torch_adamw, dict(weight_decay=0.1), "AdamW", dict(weight_decay=0.1)),
    "adamw amsgrad": (presets.torch_adamw, dict(amsgrad=True), "AdamW", dict(amsgrad=True)),
    "adagrad": (presets.torch_adagrad, dict(weight_decay=0.01), "Adagrad", dict(weight_decay=0.01)),
}
STATIC = ("nesterov", "centered", "amsgrad", "momentum")


def _ours_trajectory(factory, kwargs, params0, grads, lr0, lr1):
    tx = inject_hyperparams(factory, static_args=STATIC)(learning_rate=lr0, **kwargs)
    traces = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)
        updates, state = tx.update(g, state, params)
        return mpnn_opt.apply_updates(params, updates), state

    params, history = jax.tree.map(jnp.asarray, params0), []
    state = tx.init(params)
    for t, g in enumerate(grads):
        if t == SWITCH:
            state = with_hyperparam(state, "learning_rate", lr1)
        params, state = step(params, state, g)
        history.append(jax.tree.map(np.asarray, params))
    assert len(traces) == 1
    return history


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_convention_optimizer_matches_torch_for_50_steps_with_a_learning_rate_change(case, rng):
    torch = pytest.importorskip("torch")
    factory, kwargs, torch_name, torch_kwargs = TORCH_CASES[case]
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    leaves0, treedef = jax.tree.flatten(params0)
    tensors = [torch.nn.Parameter(torch.tensor(leaf)) for leaf in leaves0]
    optimizer = getattr(torch.optim, torch_name)(tensors, lr=0.01, **torch_kwargs)
    expected = []
    for t, g in enumerate(grads):
        if t == SWITCH:
            optimizer.param_groups[0]["lr"] = 0.003
        for tensor, leaf in zip(tensors, jax.tree.leaves(g)):
            tensor.grad = torch.tensor(leaf)
        optimizer.step()
        expected.append(jax.tree.unflatten(treedef, [tensor.detach().numpy().copy() for tensor in tensors]))
    got = _ours_trajectory(factory, kwargs, params0, grads, 0.01, 0.003)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


@pytest.mark.parametrize(
    "ours, theirs",
    [(presets.nadam, optax.nadam), (presets.lion, lambda learning_rate: optax.lion(learning_rate, weight_decay=0.001))],
    ids=["nadam", "lion"],
)
def test_optax_convention_optimizer_matches_optax_for_50_steps_with_a_learning_rate_change(ours, theirs, rng):
    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    tx = optax.inject_hyperparams(theirs)(learning_rate=0.01)
    params, state, expected = params0, tx.init(params0), []
    for t, g in enumerate(grads):
        if t == SWITCH:
            state.hyperparams["learning_rate"] = jnp.asarray(0.003)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        expected.append(params)
    got = _ours_trajectory(ours, {}, params0, grads, 0.01, 0.003)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


def test_amsgrad_keeps_the_largest_second_moment_by_hand():
    from mpnn_opt.extra_transforms import scale_by_amsgrad

    tx = scale_by_amsgrad(0.0, 0.5, 1e-8)
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    v = v_max = 0.0
    for t, g in enumerate([2.0, 0.1, 0.1], start=1):
        updates, state = tx.update({"w": jnp.array([g])}, state, params)
        v = 0.5 * v + 0.5 * g * g
        v_max = max(v_max, v)
        np.testing.assert_allclose(updates["w"], [g / (np.sqrt(v_max) / np.sqrt(1 - 0.5**t) + 1e-8)], rtol=1e-6)
