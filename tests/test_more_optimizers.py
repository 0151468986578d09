"""The torch-convention optimizers against real torch, and nadam / lion against optax: 50 steps each,
with the learning rate changed mid-run through inject_hyperparams (no recompilation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt.hyperparams import inject_hyperparams, with_hyperparam
from oracles import counting_step, random_tree, tree_relative_error

STEPS, SWITCH = 50, 25

TORCH_CASES = {
    "sgd momentum": (
        mpnn_opt.torch_sgd,
        dict(momentum=0.9, weight_decay=0.01),
        "SGD",
        dict(momentum=0.9, weight_decay=0.01),
    ),
    "sgd nesterov": (mpnn_opt.torch_sgd, dict(momentum=0.9, nesterov=True), "SGD", dict(momentum=0.9, nesterov=True)),
    "rmsprop": (
        mpnn_opt.torch_rmsprop,
        dict(decay_rate=0.9, weight_decay=0.01),
        "RMSprop",
        dict(alpha=0.9, weight_decay=0.01),
    ),
    "rmsprop centered momentum": (
        mpnn_opt.torch_rmsprop,
        dict(centered=True, momentum=0.5),
        "RMSprop",
        dict(centered=True, momentum=0.5),
    ),
    "adamw": (mpnn_opt.torch_adamw, dict(weight_decay=0.1), "AdamW", dict(weight_decay=0.1)),
    "adamw amsgrad": (mpnn_opt.torch_adamw, dict(amsgrad=True), "AdamW", dict(amsgrad=True)),
    "adagrad": (mpnn_opt.torch_adagrad, dict(weight_decay=0.01), "Adagrad", dict(weight_decay=0.01)),
}
STATIC = ("nesterov", "centered", "amsgrad", "momentum")


def _ours_trajectory(factory, kwargs, params0, grads, lr0, lr1):
    tx = inject_hyperparams(factory, static_args=STATIC)(learning_rate=lr0, **kwargs)
    step, traces = counting_step(tx)

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
    [
        (mpnn_opt.nadam, optax.nadam),
        (mpnn_opt.lion, lambda learning_rate: optax.lion(learning_rate, weight_decay=0.001)),
    ],
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
    tx = mpnn_opt.scale_by_torch_amsgrad(0.0, 0.5, 1e-8)
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    v = v_max = 0.0
    for t, g in enumerate([2.0, 0.1, 0.1], start=1):
        updates, state = tx.update({"w": jnp.array([g])}, state, params)
        v = 0.5 * v + 0.5 * g * g
        v_max = max(v_max, v)
        np.testing.assert_allclose(updates["w"], [g / (np.sqrt(v_max) / np.sqrt(1 - 0.5**t) + 1e-8)], rtol=1e-6)


def test_scale_by_rms_has_optax_math_eps_inside_the_root_by_default(rng):
    from oracles import run_transform

    params0 = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    got = run_transform(
        mpnn_opt.chain(mpnn_opt.scale_by_rms(0.9, 1e-4), mpnn_opt.scale_by_learning_rate(0.01)), params0, grads
    )
    expected = run_transform(optax.rmsprop(0.01, eps=1e-4), params0, grads, apply=optax.apply_updates)
    assert max(tree_relative_error(a, b) for a, b in zip(got, expected)) <= 1e-6


def test_torch_rmsprop_uses_torch_defaults(rng):
    torch = pytest.importorskip("torch")
    from oracles import run_transform

    w0 = rng.standard_normal(6).astype(np.float32)
    grads = [rng.standard_normal(6).astype(np.float32) for _ in range(STEPS)]
    tensor = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch.optim.RMSprop([tensor], lr=0.01)
    for g in grads:
        tensor.grad = torch.tensor(g)
        optimizer.step()
    got = run_transform(mpnn_opt.torch_rmsprop(0.01), {"w": w0}, [{"w": g} for g in grads])[-1]
    assert tree_relative_error(got, {"w": tensor.detach().numpy()}) <= 1e-6


def test_keras_adam_is_scale_by_adam_with_epsilon_hat_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    tx = mpnn_opt.chain(mpnn_opt.scale_by_adam(epsilon=eps, epsilon_hat=True), mpnn_opt.scale_by_learning_rate(lr))
    params = {"w": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    w, m, v = np.array([1.0, -1.0]), 0.0, 0.0
    for t, g in enumerate([np.array([0.01, -0.02]), np.array([0.03, 0.01]), np.array([-0.02, 0.02])], start=1):
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = mpnn_opt.apply_updates(params, updates)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)  # Keras Adam's update
        np.testing.assert_allclose(params["w"], w, rtol=1e-6)
    bias_corrected = mpnn_opt.chain(mpnn_opt.scale_by_adam(epsilon=eps), mpnn_opt.scale_by_learning_rate(lr))
    other, _ = bias_corrected.update({"w": jnp.array([0.01, -0.02])}, bias_corrected.init(params), params)
    first, _ = tx.update({"w": jnp.array([0.01, -0.02])}, tx.init(params), params)
    assert not np.allclose(other["w"], first["w"], rtol=1e-3)  # the two eps placements really differ


def test_momentum_with_lr_inside_or_outside_agrees_at_a_constant_rate_and_parts_when_it_changes():
    grads = [1.0, 2.0, -1.0, 0.5]
    factories = {"keras": mpnn_opt.momentum_velocity, "torch": mpnn_opt.torch_sgd}

    def run(convention):
        tx = inject_hyperparams(factories[convention])(learning_rate=0.1, momentum=0.9)
        params = {"w": jnp.array([0.0])}
        state, out = tx.init(params), []
        for t, g in enumerate(grads):
            if t == 2:
                state = with_hyperparam(state, "learning_rate", 0.01)
            updates, state = tx.update({"w": jnp.array([g])}, state, params)
            params = mpnn_opt.apply_updates(params, updates)
            out.append(float(params["w"][0]))
        return out

    keras, torch_like = run("keras"), run("torch")
    v = b = w_inside = w_outside = 0.0
    for t, g in enumerate(grads):
        lr = 0.1 if t < 2 else 0.01
        v = 0.9 * v - lr * g  # Keras/seed: lr inside the velocity
        b = 0.9 * b + g  # torch/optax: lr outside
        w_inside, w_outside = w_inside + v, w_outside - lr * b
        assert keras[t] == pytest.approx(w_inside, rel=1e-6) and torch_like[t] == pytest.approx(w_outside, rel=1e-6)
    assert keras[1] == pytest.approx(torch_like[1], rel=1e-6) and keras[3] != pytest.approx(torch_like[3], rel=1e-3)
