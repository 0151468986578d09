"""Low-precision optimizer state and bf16 training (docs/low-precision.md).

Per-field moment dtypes (``mu_dtype``, ``nu_dtype``) on the Adam family, checked against the float32-state
run and against ``optax.adam(mu_dtype=...)``; bfloat16 params that stall with plain updates and keep learning
with float32 master weights or stochastic rounding, checked against the float32 run; 8-bit block-wise moments
(``scale_by_adam_8bit``), checked against the float32-state run and against their formula computed in numpy.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt import precision, transforms
from mpnn_opt.precision import MasterWeightsState, QuantizedBlocks

BF16 = jnp.bfloat16
BF16_HALF_ULP = 2.0**-9  # bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-9, relative


def _regression(seed: int = 0, n: int = 256, d: int = 8):
    """A least-squares problem ``y = X w* + noise`` and its zero start."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=(d,)), jnp.float32) + 0.1 * jnp.asarray(rng.normal(size=(n,)), jnp.float32)

    def loss(params):
        return jnp.mean((x @ params["w"].astype(jnp.float32) + params["b"].astype(jnp.float32) - y) ** 2)

    return loss, {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def _train(tx, loss, params, steps: int):
    """``steps`` full-batch steps under one jit (a scan); returns the final params and state."""

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, tx.init(params)), length=steps)[0]

    return run(params)


# ---------------------------------------------------------------------------------------------------------------
# Per-field dtypes

ADAM_FAMILY = {
    "scale_by_adam": lambda **dtypes: transforms.scale_by_adam(**dtypes),
    "scale_by_torch_amsgrad": lambda **dtypes: transforms.scale_by_torch_amsgrad(**dtypes),
    "scale_by_nadam": lambda **dtypes: transforms.scale_by_nadam(**dtypes),
    "adam": lambda **dtypes: mpnn_opt.adam(**dtypes),
    "torch_adamw": lambda **dtypes: mpnn_opt.torch_adamw(**dtypes),
    "torch_adamw amsgrad": lambda **dtypes: mpnn_opt.torch_adamw(amsgrad=True, **dtypes),
    "nadam": lambda **dtypes: mpnn_opt.nadam(**dtypes),
}


def _moments(state) -> tuple:
    """The first-moment tree and the second-moment trees (``v``, and AMSGrad's ``v_max``) of an Adam-family state."""
    (block,) = [s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "momentums")) if hasattr(s, "momentums")]
    second = [block.velocities] + ([block.max_velocities] if hasattr(block, "max_velocities") else [])
    return block.momentums, second


@pytest.mark.parametrize("name", ADAM_FAMILY)
@pytest.mark.parametrize(
    "dtypes, expected_mu, expected_nu",
    [
        ({}, jnp.float32, jnp.float32),
        ({"mu_dtype": BF16}, BF16, jnp.float32),
        ({"nu_dtype": "bfloat16"}, jnp.float32, BF16),
        ({"state_dtype": BF16}, BF16, BF16),
        ({"state_dtype": BF16, "mu_dtype": jnp.float32}, jnp.float32, BF16),
        ({"state_dtype": jnp.float16, "nu_dtype": jnp.float32}, jnp.float16, jnp.float32),
    ],
    ids=["defaults", "mu bf16", "nu bf16", "state bf16", "state bf16 mu f32", "state f16 nu f32"],
)
def test_mu_dtype_and_nu_dtype_set_each_moment_and_fall_back_to_state_dtype(name, dtypes, expected_mu, expected_nu):
    params = {"w": jnp.ones((3, 2), BF16), "b": jnp.ones((2,), BF16)}
    tx = ADAM_FAMILY[name](**dtypes)
    initial = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    for state in (initial, tx.update(grads, initial, params)[1]):
        mu, second = _moments(state)
        assert {leaf.dtype for leaf in jax.tree.leaves(mu)} == {jnp.dtype(expected_mu)}
        assert {leaf.dtype for tree in second for leaf in jax.tree.leaves(tree)} == {jnp.dtype(expected_nu)}
    updates, _ = tx.update(grads, initial, params)
    assert all(u.dtype == BF16 for u in jax.tree.leaves(updates))  # the updates keep the params' dtype


@pytest.mark.parametrize("argument", ["mu_dtype", "nu_dtype"])
@pytest.mark.parametrize("factory", [transforms.scale_by_adam, mpnn_opt.torch_adamw, mpnn_opt.nadam])
def test_a_bad_moment_dtype_is_refused_at_construction_naming_the_argument(factory, argument):
    with pytest.raises(TypeError, match=f"{argument} must be None or a floating dtype.*int8"):
        factory(**{argument: jnp.int8})


def test_bf16_first_moment_tracks_optax_adam_with_mu_dtype():
    """optax.adam(mu_dtype=bfloat16) is the oracle: same state layout, the same first step, and both within the
    bound that bf16 rounding allows of the float32-state run.

    Bound: storing ``m`` in bf16 rounds it by at most ``2^-9 |m|`` each step; the error then decays with
    ``beta1``, so the accumulated relative error is at most ``2^-9 / (1 - beta1)`` (1.95% at beta1 = 0.9).
    optax rounds twice a step (it computes ``beta1 * m`` in bf16 before adding), hence twice that bound.
    Measured on these gradients (positive, no cancellation, 30 steps): ours 1.6%, optax 3.5% (max over 4096).
    """
    rng = np.random.default_rng(1)
    grads = [{"w": jnp.asarray(rng.uniform(0.5, 2.0, size=(4096,)), jnp.float32)} for _ in range(30)]
    params = {"w": jnp.zeros((4096,), jnp.float32)}

    def run(tx, steps):
        state, updates = tx.init(params), []
        for g in grads[:steps]:
            u, state = tx.update(g, state, params)
            updates.append(u["w"])
        return jnp.stack(updates), state

    u_oracle, s_oracle = run(optax.adam(0.01, mu_dtype=BF16), 30)
    u_ours, s_ours = run(mpnn_opt.adam(0.01, None, mu_dtype=BF16), 30)
    u_f32, s_f32 = run(mpnn_opt.adam(0.01, None), 30)
    m_oracle, m_ours, m_f32 = s_oracle[0].mu["w"], s_ours[1].momentums["w"], s_f32[1].momentums["w"]
    assert m_oracle.dtype == m_ours.dtype == BF16
    assert s_oracle[0].nu["w"].dtype == s_ours[1].velocities["w"].dtype == jnp.float32

    first_oracle, first_ours = run(optax.adam(0.01, mu_dtype=BF16), 1), run(mpnn_opt.adam(0.01, None, mu_dtype=BF16), 1)
    np.testing.assert_array_equal(first_ours[1][1].momentums["w"], first_oracle[1][0].mu["w"])  # round(0.1 g)
    # optax's float32 ``1 - beta**t`` differs from our cancellation-free one by ~1e-5 at beta2 = 0.999, t = 1
    np.testing.assert_allclose(first_ours[0], first_oracle[0], rtol=2e-5)

    bound = BF16_HALF_ULP / (1 - 0.9)
    np.testing.assert_allclose(m_ours.astype(jnp.float32), m_f32, rtol=bound)
    np.testing.assert_allclose(m_oracle.astype(jnp.float32), m_f32, rtol=2 * bound)
    np.testing.assert_allclose(u_ours, u_f32, rtol=bound)
    np.testing.assert_allclose(u_ours, u_oracle, rtol=3 * bound)


@pytest.mark.parametrize("dtypes", [{"mu_dtype": BF16}, {"nu_dtype": BF16}, {"state_dtype": BF16}], ids=str)
def test_bf16_moments_train_as_the_float32_state_run_does(dtypes):
    """300 Adam steps (lr 0.01) on a least-squares problem: the final params stay within 2^-9 (one bf16 rounding,
    0.2%) of the distance the float32-state run travelled, and the final loss within 1% of its loss.

    Measured: 4.7e-4 (mu bf16), 4.6e-4 (nu bf16), 1.4e-4 (both) of the distance; losses within 0.4%.
    """
    loss, params = _regression()
    p32, _ = _train(mpnn_opt.adam(0.01, None), loss, params, 300)
    p_low, state = _train(mpnn_opt.adam(0.01, None, **dtypes), loss, params, 300)
    distance = max(float(jnp.max(jnp.abs(p32[k] - params[k]))) for k in params)
    for k in params:
        np.testing.assert_allclose(p_low[k], p32[k], rtol=0, atol=BF16_HALF_ULP * distance)
    assert abs(float(loss(p_low)) - float(loss(p32))) <= 0.01 * float(loss(p32))
    mu, (nu,) = _moments(state)
    assert mu["w"].dtype == jnp.dtype(dtypes.get("mu_dtype", dtypes.get("state_dtype", jnp.float32)))
    assert nu["w"].dtype == jnp.dtype(dtypes.get("nu_dtype", dtypes.get("state_dtype", jnp.float32)))


def test_injected_hyperparameters_stay_float32_with_bf16_moments():
    tx = mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=0.1, mu_dtype=BF16, nu_dtype=BF16)
    params = {"w": jnp.ones((4,), BF16)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((4,), 0.5, BF16)}, state, params)
    assert {value.dtype for value in state.hyperparams.values()} == {jnp.dtype(jnp.float32)}
    assert "mu_dtype" not in state.hyperparams and "nu_dtype" not in state.hyperparams
    mu, (nu,) = _moments(state)
    assert mu["w"].dtype == nu["w"].dtype == BF16


# ---------------------------------------------------------------------------------------------------------------
# bfloat16 params: the stall, and the two remedies


def _stall_task():
    """Least squares from a start of magnitude ~1 (bf16 spacing 2^-8..2^-7) to a target 0.1 away, and Adam at
    lr 1e-4: each step (<= 1e-4) is below half the spacing, so plain bf16 updates all round away. The noise
    (0.3) sets the float32 run's floor (0.087) well above the excess that bf16 params cannot avoid (about one
    spacing from the optimum: ~1e-3 for stochastic rounding)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 16)), jnp.float32)
    start = jnp.asarray(rng.uniform(0.8, 1.6, size=16), jnp.float32)
    target = start + jnp.asarray(rng.normal(scale=0.1, size=16), jnp.float32)
    y = x @ target + 0.3 * jnp.asarray(rng.normal(size=256), jnp.float32)

    def loss(params):
        return jnp.mean((x @ params["w"].astype(jnp.float32) - y) ** 2)

    return loss, {"w": start}


def _losses(tx, loss, params, steps: int = 2000, key: jax.Array | None = None) -> np.ndarray:
    """The loss after each of ``steps`` steps; with a ``key``, updates are added by apply_updates_stochastic."""

    @jax.jit
    def run(params):
        def step(carry, i):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            if key is None:
                params = mpnn_opt.apply_updates(params, updates)
            else:
                params = mpnn_opt.apply_updates_stochastic(params, updates, jax.random.fold_in(key, i))
            return (params, state), loss(params)

        return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))[1]

    return np.asarray(run(params))


@pytest.fixture(scope="module")
def stall():
    """The float32 run and the plain bf16 run of the stall task (Adam, lr 1e-4, 2000 steps)."""
    loss, params = _stall_task()
    bf16 = jax.tree.map(lambda p: p.astype(BF16), params)
    tx = mpnn_opt.adam(1e-4, None)
    return loss, bf16, tx, _losses(tx, loss, params), _losses(tx, loss, bf16)


def test_plain_bf16_updates_stall_where_the_float32_run_keeps_learning(stall):
    _, _, _, f32, plain = stall
    assert f32[-1] < 0.95 * f32[999]  # float32 still falls over the second half: 0.1894, 0.0968 at 1000, 0.0868
    assert f32[-1] < 0.5 * f32[0]
    assert np.all(plain == plain[0])  # bf16: not one step survives the rounding (0.1920 throughout)
    assert plain[-1] > 2 * f32[-1]


def test_master_weights_train_bf16_params_as_the_float32_run_does(stall):
    """Final loss within 2% of the float32 run's (measured: +0.26%); the rest is the bf16 rounding of the
    final params themselves."""
    loss, bf16, tx, f32, _ = stall
    master = _losses(mpnn_opt.master_weights(tx), loss, bf16)
    assert abs(master[-1] - f32[-1]) <= 0.02 * f32[-1]


def test_stochastic_rounding_trains_bf16_params_as_the_float32_run_does(stall):
    """Final loss within 3% of the float32 run's: measured -0.2% with this key, within 1.1% over keys 0..4 (the
    rounding noise keeps the params jittering by about one bf16 spacing around the optimum)."""
    loss, bf16, tx, f32, _ = stall
    rounded = _losses(tx, loss, bf16, key=jax.random.key(0))
    assert abs(rounded[-1] - f32[-1]) <= 0.03 * f32[-1]


def test_master_weights_updates_move_the_params_exactly_to_the_rounded_master():
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(64,)), BF16), "b": jnp.asarray(rng.normal(size=(3,)) * 1e-3, BF16)}
    tx = mpnn_opt.master_weights(mpnn_opt.adam(1e-3, None))
    state = tx.init(params)
    assert isinstance(state, MasterWeightsState)
    floats = [leaf.dtype for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert set(floats) == {jnp.dtype(jnp.float32)} and len(floats) == 6  # the master, and Adam's m and v
    for _ in range(20):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), BF16), params)
        updates, state = tx.update(grads, state, params)
        params = mpnn_opt.apply_updates(params, updates)
        for k in params:
            assert params[k].dtype == BF16
            np.testing.assert_array_equal(params[k], state.master[k].astype(BF16))
    moved = jax.tree.map(lambda m, p: float(jnp.max(jnp.abs(m - p.astype(jnp.float32)))), state.master, params)
    assert 0 < moved["w"] < 2.0**-7  # the master holds the bits the params cannot


def test_master_weights_take_params_changed_outside_the_optimizer():
    params = {"w": jnp.ones((4,), BF16)}
    tx = mpnn_opt.master_weights(mpnn_opt.torch_sgd(1e-3))
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones((4,), BF16)}, state, params)  # master 1 - 1e-3, params still 1
    loaded = {"w": jnp.full((4,), 3.0, BF16)}
    updates, state = tx.update({"w": jnp.ones((4,), BF16)}, state, loaded)
    np.testing.assert_allclose(state.master["w"], 3.0 - 1e-3, rtol=1e-7)
    np.testing.assert_array_equal(mpnn_opt.apply_updates(loaded, updates)["w"], jnp.full((4,), 3.0, BF16))
    with pytest.raises(ValueError, match="master_weights: update needs params"):
        tx.update({"w": jnp.ones((4,), BF16)}, state)


def test_stochastic_rounding_is_reproducible_with_the_same_key():
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(1000,)), BF16), "f32": jnp.ones((3,), jnp.float32), "none": None}
    updates = {
        "w": jnp.asarray(rng.normal(size=(1000,)) * 1e-3, jnp.float32),
        "f32": jnp.full((3,), 1e-3),
        "none": None,
    }
    first = mpnn_opt.apply_updates_stochastic(params, updates, jax.random.key(7))
    again = mpnn_opt.apply_updates_stochastic(params, updates, jax.random.key(7))
    other = mpnn_opt.apply_updates_stochastic(params, updates, jax.random.key(8))
    np.testing.assert_array_equal(first["w"], again["w"])
    assert first["w"].dtype == BF16 and first["none"] is None
    assert np.any(np.asarray(first["w"]) != np.asarray(other["w"]))
    np.testing.assert_array_equal(first["f32"], mpnn_opt.apply_updates(params, updates)["f32"])  # float32: plain add


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    """For each of 1000 sums ``s`` of mixed signs and magnitudes, the mean of K = 2000 stochastic roundings equals
    ``s`` within 6 standard errors. Each rounding is ``lo`` or ``hi`` around ``s`` (spacing ``h = hi - lo``), so its
    standard deviation is at most ``h / 2`` and the mean's at most ``h / (2 sqrt(K))``; 6 of those are exceeded
    with probability ~2e-9 per sum (the keys are fixed, so the test is deterministic anyway)."""
    rng = np.random.default_rng(5)
    params = jnp.asarray(rng.normal(size=(1000,)) * 10.0 ** rng.uniform(-3, 3, size=1000), BF16)
    updates = (params.astype(jnp.float32) * rng.uniform(-0.02, 0.02, size=1000)).astype(jnp.float32)
    exact = params.astype(jnp.float32) + updates
    keys = jax.random.split(jax.random.key(9), 2000)
    rounded = jax.jit(jax.vmap(lambda key: mpnn_opt.apply_updates_stochastic(params, updates, key)))(keys)
    rounded = np.asarray(rounded.astype(jnp.float32))
    lo = np.asarray(exact.astype(BF16).astype(jnp.float32))
    spacing = np.abs(np.nextafter(exact.astype(BF16), jnp.asarray(np.inf, BF16)).astype(jnp.float32) - lo)
    assert np.all(np.abs(rounded - np.asarray(exact)) < 2 * spacing)  # one of the two neighbours
    assert np.all(np.abs(rounded.mean(axis=0) - np.asarray(exact)) <= 6 * spacing / (2 * np.sqrt(2000)))
    # nearest rounding would be off by up to h/2: most of the sums here are not representable
    assert np.mean(np.asarray(exact) != lo) > 0.9


# ---------------------------------------------------------------------------------------------------------------
# 8-bit block-wise moments


def _mlp_regression(seed: int):
    """A 32-128-1 tanh MLP (4,353 params) regressing a sine of a projection of 4096 samples plus noise of 0.3 (the
    noise keeps the loss off 0, so a relative gap measures how well it trains, not how fast it memorizes)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(4096, 32)), jnp.float32)
    y = jnp.sin(x @ jnp.asarray(rng.normal(size=(32, 1)), jnp.float32) / 4)
    y = y + 0.3 * jnp.asarray(rng.normal(size=(4096, 1)), jnp.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (32, 128)) / 6,
        "b1": jnp.zeros(128),
        "w2": jax.random.normal(k2, (128, 1)) / 16,
        "b2": jnp.zeros(1),
    }

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)

    return loss, params, 1e-3


def _mlp_classifier(seed: int):
    """A 16-256-8 ReLU MLP (6,408 params), softmax cross-entropy on 2048 samples labelled by a random tanh teacher,
    10% of the labels replaced at random (so the loss stays well above 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2048, 16)).astype(np.float32)
    labels = (np.tanh(x @ rng.normal(size=(16, 32))) @ rng.normal(size=(32, 8))).argmax(axis=1)
    labels = np.where(rng.random(2048) < 0.1, rng.integers(0, 8, 2048), labels)
    onehot = jax.nn.one_hot(jnp.asarray(labels), 8)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (16, 256)) / 4,
        "b1": jnp.zeros(256),
        "w2": jax.random.normal(k2, (256, 8)) / 16,
        "b2": jnp.zeros(8),
    }

    def loss(p):
        logits = jax.nn.relu(jnp.asarray(x) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))

    return loss, params, 1e-3


def _rnn_sequence(seed: int):
    """A tanh RNN (2 inputs, 48 hidden units, a linear readout: 2,497 params) reading 256 sequences of 24 steps and
    predicting, at each step, a sine of a leaky running sum of the inputs plus noise of 0.3."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 24, 2)).astype(np.float32)
    running, targets, weights = np.zeros(256), [], rng.normal(size=2)
    for t in range(24):
        running = 0.8 * running + x[:, t] @ weights
        targets.append(np.sin(running))
    y = jnp.asarray(np.stack(targets, axis=1)[..., None] + 0.3 * rng.normal(size=(256, 24, 1)), jnp.float32)
    k = jax.random.split(jax.random.key(seed), 3)
    params = {
        "w_in": jax.random.normal(k[0], (2, 48)) / np.sqrt(2),
        "w_h": jax.random.normal(k[1], (48, 48)) * 0.9 / np.sqrt(48),
        "b": jnp.zeros(48),
        "w_out": jax.random.normal(k[2], (48, 1)) / np.sqrt(48),
        "b_out": jnp.zeros(1),
    }

    def loss(p):
        def cell(h, x_t):
            h = jnp.tanh(x_t @ p["w_in"] + h @ p["w_h"] + p["b"])
            return h, h @ p["w_out"] + p["b_out"]

        _, out = jax.lax.scan(cell, jnp.zeros((256, 48)), jnp.swapaxes(jnp.asarray(x), 0, 1))
        return jnp.mean((jnp.swapaxes(out, 0, 1) - y) ** 2)

    return loss, params, 1e-3


EIGHT_BIT_TASKS = {"mlp regression": _mlp_regression, "mlp classifier": _mlp_classifier, "rnn sequence": _rnn_sequence}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", EIGHT_BIT_TASKS)
def test_8bit_adam_trains_as_float32_state_adam_in_about_2_bytes_a_parameter(task, seed):
    """400 full-batch steps: the final loss within 2% of the float32-state run's (oracle: optax.scale_by_adam),
    never NaN, and the state at most 2.1 bytes a parameter by per_device_nbytes (8.0 with float32 moments).

    Measured (final loss vs the oracle's, seeds 0, 1, 2): mlp regression +0.03%, -0.17%, +0.33%; mlp classifier
    +0.03%, -0.06%, -0.18%; rnn sequence -0.19%, -0.42%, +0.18%. Over seeds 0..11 the largest gaps are 0.45%,
    0.27%, 0.42% (optax.scale_by_adam(mu_dtype=bfloat16): 1.45%, 0.87%, 0.82%). Bytes a parameter: 2.036, 2.033,
    2.043. Rounding to the nearest level instead (the dither at 0.5) ends up to 10.2%, 8.0%, 10.8% off."""
    loss, params, lr = EIGHT_BIT_TASKS[task](seed)
    oracle = _losses(optax.chain(optax.scale_by_adam(), optax.scale(-lr)), loss, params, 400)
    tx = mpnn_opt.chain(mpnn_opt.scale_by_adam_8bit(), mpnn_opt.scale_by_learning_rate(lr))
    q8 = _losses(tx, loss, params, 400)
    assert np.all(np.isfinite(q8))
    assert abs(q8[-1] / oracle[-1] - 1) <= 0.02, (q8[-1], oracle[-1])
    assert q8[-1] < 0.5 * q8[0]  # it learned
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert sum(mpnn_opt.per_device_nbytes(tx.init(params)).values()) / n <= 2.1


@pytest.mark.parametrize(
    "shape, block_size, values_shape",
    [
        ((32, 512), 256, (32, 2, 256)),  # the last axis, cut into blocks of 256
        ((16, 8, 256), 256, (16, 8, 1, 256)),
        ((32, 300), 256, (32, 2, 150)),  # 300 values: two blocks of 150, not 256 + 44 and 212 of padding
        ((4, 3, 100), 256, (4, 2, 150)),  # a last axis under 256: the trailing 3 x 100 merged
        ((512, 1), 256, (2, 256)),  # a column: flattened
        ((300,), 256, (2, 150)),
        ((3,), 256, (1, 3)),  # fewer values than a block: one block of 3
        ((), 256, (1, 1)),
        ((32, 512), 64, (32, 8, 64)),
        ((7, 10), 4, (7, 3, 4)),  # ceil(10 / 4) = 3 blocks of ceil(10 / 3) = 4, 2 of them padding
    ],
)
def test_8bit_blocks_run_along_the_trailing_axes_that_reach_block_size(shape, block_size, values_shape):
    tx = mpnn_opt.scale_by_adam_8bit(block_size=block_size)
    state = tx.init({"w": jnp.zeros(shape)})
    for q, dtype in ((state.momentums["w"], jnp.int8), (state.root_velocities["w"], jnp.uint8)):
        assert q.values.shape == values_shape and q.values.dtype == dtype
        assert q.scales.shape == values_shape[:-1] and q.scales.dtype == jnp.float32


@pytest.mark.parametrize("block_size, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (None, TypeError)])
def test_8bit_block_size_must_be_a_positive_int(block_size, error):
    with pytest.raises(error, match=f"block_size must be an int >= 1, got {block_size!r}"):
        mpnn_opt.scale_by_adam_8bit(block_size=block_size)


def _levels(levels: int, power: int) -> np.ndarray:
    """The documented read-back levels ``(j / levels)^power``, ``j = 0..levels``, in float64."""
    return (np.arange(levels + 1) / levels) ** power


def _round_by_hand(x: np.ndarray, scales: np.ndarray, table: np.ndarray, dither: np.ndarray) -> np.ndarray:
    """The documented rounding of ``|x| / s``: the lower level ``j`` (the largest with ``table[j] <= a``), plus one
    where ``dither < (a - table[j]) / (table[j + 1] - table[j])``."""
    a = np.abs(x.astype(np.float64)) / np.where(scales > 0, scales, 1.0)[..., None]
    j = np.clip(np.searchsorted(table, a, side="right") - 1, 0, len(table) - 2)
    p = (a - table[j]) / (table[j + 1] - table[j])
    return j + (dither < p), np.abs(dither - p)


@pytest.mark.parametrize("levels", [127, 255])
def test_8bit_level_search_finds_the_level_below_every_value_at_and_around_each_boundary(levels):
    # The quantizer finds each value's level from a cube-root estimate plus one comparison either way. Every float32
    # level (j / L)^3 (the quantizer's own float32 values) and its neighbouring floats, then a log-uniform sweep of [1e-30, 1]:
    # with a dither of 1 nothing rounds up, so the stored level is the largest j with level(j) <= a (at most L - 1).
    table = np.asarray(precision._level(jnp.arange(levels + 1, dtype=jnp.float32), levels))  # float32, as compared
    points = np.concatenate([table, np.nextafter(table, np.float32(0)), np.nextafter(table, np.float32(2))])
    sweep = np.exp(np.random.default_rng(0).uniform(np.log(1e-30), 0.0, 2**16)).astype(np.float32)
    a = np.clip(np.concatenate([points, sweep, [0.0, 1e-45, 1e-38, 1.2e-38]]).astype(np.float32), 0, 1)
    a = np.concatenate([a, np.zeros((-len(a)) % 255, np.float32)]).reshape(-1, 255)
    blocks = np.concatenate([a, np.ones((len(a), 1), np.float32)], axis=1)  # each block's largest: scale 1
    q = jax.jit(lambda b: precision._quantize(b, levels == 127, jnp.ones_like(b)))(jnp.asarray(blocks))
    positive = blocks >= np.finfo(np.float32).tiny  # XLA:CPU flushes subnormals to zero: they store as zeros
    expected = np.clip(np.searchsorted(table, np.where(positive, blocks, 0), side="right") - 1, 0, levels - 1)
    got = np.asarray(q.values).astype(np.int64)
    if levels == 255:  # a positive sqrt(v) never reads back as 0
        expected = np.where(positive, np.maximum(expected, 1), 0)
    assert np.array_equal(got, expected), np.argwhere(got != expected)[:5]


def _mix(h: np.ndarray) -> np.ndarray:
    """lowbias32, in numpy: uint32 products wrap, as the hash means them to."""
    h = np.asarray(h, np.uint32)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x7FEB352D)
        h = (h ^ (h >> np.uint32(15))) * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _documented_dither(shape: tuple, step: int, path: str, moment: str) -> np.ndarray:
    """``mix(i ^ mix(mix(t) ^ c)) >> 8, / 2^24``, with ``c = crc32(path)`` for m and its complement for sqrt(v)."""
    c = zlib.crc32(path.encode()) ^ (0 if moment == "m" else 0xFFFFFFFF)
    seed = _mix(_mix(np.uint32(step)) ^ np.uint32(c))
    index = np.arange(np.prod(shape), dtype=np.uint32).reshape(shape)
    return (_mix(index ^ seed) >> np.uint32(8)) / 2.0**24


def test_8bit_state_after_one_step_is_the_documented_formula_computed_by_hand():
    """From the zero state, one step stores ``m = 0.1 g`` and ``sqrt(v) = sqrt(0.001) |g|``; both are blocked as
    documented ((2, 300) -> 2 x 2 blocks of 150), scaled by each block's largest magnitude and rounded with the
    documented dither (the leaf's path is ``['w']``, the step 1). numpy in float64 finds the same levels, except
    where the dither is within 1e-6 of the probability (float32 there)."""
    rng = np.random.default_rng(7)
    g = (rng.normal(size=(2, 300)) * 10.0 ** rng.uniform(-6, 0, size=(2, 300))).astype(np.float32)
    g[0, :5] = 0.0
    tx = mpnn_opt.scale_by_adam_8bit()
    params = {"w": jnp.zeros((2, 300))}
    _, state = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
    m, r = state.momentums["w"], state.root_velocities["w"]
    assert m.values.shape == r.values.shape == (2, 2, 150) and m.scales.shape == r.scales.shape == (2, 2)

    m_dither = _documented_dither((2, 2, 150), 1, "['w']", "m")
    r_dither = _documented_dither((2, 2, 150), 1, "['w']", "sqrt(v)")
    m_exact = (np.float32(1 - 0.9) * g).reshape(2, 2, 150)
    r_exact = np.sqrt(np.float32(1 - 0.999) * (g * g)).reshape(2, 2, 150)
    np.testing.assert_array_equal(m.scales, np.abs(m_exact).max(axis=-1))
    np.testing.assert_array_equal(r.scales, r_exact.max(axis=-1))

    m_q, m_margin = _round_by_hand(m_exact, np.asarray(m.scales), _levels(127, 3), m_dither)
    r_q, r_margin = _round_by_hand(r_exact, np.asarray(r.scales), _levels(255, 3), r_dither)
    r_q = np.where(r_exact > 0, np.maximum(r_q, 1), 0)  # the floor: a positive sqrt(v) keeps at least level 1
    certain = (m_margin > 1e-6) & (r_margin > 1e-6)
    assert certain.mean() > 0.99
    np.testing.assert_array_equal(np.asarray(m.values)[certain], (np.sign(m_exact) * m_q)[certain])
    np.testing.assert_array_equal(np.asarray(r.values)[certain], r_q[certain])
    assert np.all(np.asarray(m.values)[0, 0, :5] == 0) and np.all(np.asarray(r.values)[0, 0, :5] == 0)  # g = 0

    # the documented read-back, m = s (q / 127)^3 and v = (s (q / 255)^3)^2, is what the next step starts from
    m_back = (np.asarray(m.values) / 127.0) ** 3 * np.asarray(m.scales)[..., None]
    r_back = (np.asarray(r.values) / 255.0) ** 3 * np.asarray(r.scales)[..., None]
    g2 = np.float32(0.5)
    direction, _ = tx.update({"w": jnp.full((2, 300), g2)}, state, params)
    bc1, bc2 = 1 - 0.9**2, 1 - 0.999**2
    m2 = 0.9 * m_back.reshape(2, 300) + 0.1 * g2
    v2 = 0.999 * r_back.reshape(2, 300) ** 2 + 0.001 * g2**2
    np.testing.assert_allclose(direction["w"], (m2 / bc1) / (np.sqrt(v2 / bc2) + 1e-8), rtol=2e-6, atol=1e-7)


def test_8bit_rounding_is_unbiased_so_small_steps_of_the_moments_are_not_lost():
    """The same moments stored at 2000 step counts (2000 dithers): the mean read-back equals the float32 value within
    6 standard errors (each rounding is one of two neighbouring levels ``h`` apart: std <= h / 2). Rounding to the
    nearest level would be off by up to h / 2 every time, and Adam's ``v`` moves by far less than a level a step.
    The exception is the floor: a sqrt(v) under the first level (``s / 255^2``) always reads back as that level."""
    rng = np.random.default_rng(8)
    g = (rng.normal(size=(256,)) * 10.0 ** rng.uniform(-4, 0, size=256)).astype(np.float32)
    tx = mpnn_opt.scale_by_adam_8bit()
    params = {"w": jnp.zeros((256,))}
    state = tx.init(params)
    states = jax.jit(jax.vmap(lambda count: tx.update({"w": jnp.asarray(g)}, state._replace(count=count), params)[1]))(
        jnp.arange(2000, dtype=jnp.int32)
    )
    for q, exact, table in (
        (states.momentums["w"], np.float32(1 - 0.9) * g, _levels(127, 3)),
        (states.root_velocities["w"], np.sqrt(np.float32(1 - 0.999) * (g * g)), _levels(255, 3)),
    ):
        scale = float(q.scales[0, 0])
        values = np.asarray(q.values)[:, 0, :].astype(np.float64)
        back = np.sign(values) * table[np.abs(values).astype(int)] * scale
        j = np.clip(np.searchsorted(table, np.abs(exact) / scale, side="right") - 1, 0, len(table) - 2)
        spacing = (table[j + 1] - table[j]) * scale
        floored = (q.values.dtype == jnp.uint8) & (np.abs(exact) < table[1] * scale)  # sqrt(v) under level 1
        assert np.all(back[:, floored] == table[1] * scale)
        back, exact, spacing = back[:, ~floored], exact[~floored], spacing[~floored]
        assert np.all(np.abs(back - exact) <= spacing * (1 + 1e-5))  # one of the two neighbours
        assert np.all(np.abs(back.mean(axis=0) - exact) <= 6 * spacing / (2 * np.sqrt(2000)) + 1e-12)
        assert np.mean(np.abs(back[0] - exact) > 0.01 * spacing) > 0.9  # most values lie between two levels


def test_8bit_moments_keep_values_a_million_times_below_their_blocks_largest():
    """The cube map's first level is ``s / 127^3`` (4.9e-7 s) for m and ``s / 255^3`` (6e-8 s) for sqrt(v), and a
    positive sqrt(v) never reads back as 0. A steady gradient of 1e-6..1e-1 times its block's largest keeps moving
    its parameter: Adam's direction is 1 there; the 8-bit one stays within 15% of 1 from 1e-2 up (measured: 8.3%;
    m's levels there are 11% apart), and below 1e-4 (a few levels) is noisy but right on average (measured over 10
    steps: 0.20 to 4.8, mean 0.93 to 1.07).
    Exact zeros stay zero."""
    g = np.zeros(256, np.float32)
    g[0], g[1:129] = 1.0, 10.0 ** np.linspace(-6, -1, 128)
    tx = mpnn_opt.scale_by_adam_8bit()
    params = {"w": jnp.zeros((256,))}
    state = tx.init(params)
    for _ in range(10):
        direction, state = tx.update({"w": jnp.asarray(g)}, state, params)
        d = np.asarray(direction["w"])
        assert np.all(np.isfinite(d)) and np.all(d[129:] == 0) and np.all(d[:129] > 0.1) and np.all(d < 8)
        np.testing.assert_allclose(d[g >= 1e-2], 1.0, rtol=0.15)
        assert 0.8 <= d[(g > 0) & (g < 1e-4)].mean() <= 1.2
    assert np.all(np.asarray(state.root_velocities["w"].values)[0, :129] >= 1)
    assert np.all(np.asarray(state.root_velocities["w"].values)[0, 129:] == 0)


def test_8bit_parameter_rounds_the_same_way_with_or_without_other_parameters_beside_it():
    """The dither depends on the step, the leaf's path and the value's position only: a leaf's 8-bit state is bit for
    bit the same whatever else is in the tree, and two leaves of one shape do not share their dithers."""
    rng = np.random.default_rng(9)
    grads = [{name: jnp.asarray(rng.normal(size=(4, 300)), jnp.float32) for name in "ab"} for _ in range(5)]
    tx = mpnn_opt.scale_by_adam_8bit()

    def final_state(names: str):
        params = {name: jnp.zeros((4, 300)) for name in names}
        state = tx.init(params)
        for g in grads:
            _, state = tx.update({name: g[name] for name in names}, state, params)
        return state

    both, alone = final_state("ab"), final_state("b")
    for field in ("momentums", "root_velocities"):
        for part in ("values", "scales"):
            np.testing.assert_array_equal(
                getattr(getattr(both, field)["b"], part), getattr(getattr(alone, field)["b"], part)
            )
    same_grads = [{"a": g["a"], "b": g["a"]} for g in grads]
    params = {"a": jnp.zeros((4, 300)), "b": jnp.zeros((4, 300))}
    state = tx.init(params)
    for g in same_grads:
        _, state = tx.update(g, state, params)
    assert np.any(np.asarray(state.momentums["a"].values) != np.asarray(state.momentums["b"].values))


def test_8bit_block_size_stays_static_under_inject_hyperparams():
    tx = mpnn_opt.inject_hyperparams(mpnn_opt.scale_by_adam_8bit)(beta1=0.8, block_size=64)
    params = {"w": jnp.zeros((4, 128))}
    state = tx.init(params)
    assert "block_size" not in state.hyperparams and "beta1" in state.hyperparams
    _, state = jax.jit(tx.update)({"w": jnp.ones((4, 128))}, state, params)
    assert state.inner_state.momentums["w"].values.shape == (4, 2, 64)


# ---------------------------------------------------------------------------------------------------------------
# state_dtype='int8' on the Adam aliases

INT8_ALIASES = {
    "adam L2": (
        lambda dtype: mpnn_opt.adam(0.01, "L2", 0.001, state_dtype=dtype),
        lambda: mpnn_opt.chain(
            mpnn_opt.scale_by_adam_8bit(0.9, 0.999, 1e-8),
            mpnn_opt.scale_by_learning_rate(0.01),
            mpnn_opt.add_decoupled_weight_decay(0.01, 0.001),
        ),
    ),
    "adam L1": (
        lambda dtype: mpnn_opt.adam(0.01, "L1", 0.001, beta2=0.99, state_dtype=dtype),
        lambda: mpnn_opt.chain(
            mpnn_opt.add_regularization("L1", 0.001),
            mpnn_opt.scale_by_adam_8bit(0.9, 0.99, 1e-8),
            mpnn_opt.scale_by_learning_rate(0.01),
        ),
    ),
    "torch_adamw": (
        lambda dtype: mpnn_opt.torch_adamw(0.01, weight_decay=0.05, epsilon=1e-6, state_dtype=dtype),
        lambda: mpnn_opt.chain(
            mpnn_opt.scale_by_adam_8bit(0.9, 0.999, 1e-6),
            mpnn_opt.add_decayed_weights(0.05),
            mpnn_opt.scale_by_learning_rate(0.01),
        ),
    ),
}


@pytest.mark.parametrize("name", INT8_ALIASES)
def test_state_dtype_int8_is_the_chain_with_scale_by_adam_8bit_bit_for_bit(name):
    alias, by_hand = INT8_ALIASES[name]
    rng = np.random.default_rng(10)
    params = {"dense": {"weights": jnp.asarray(rng.normal(size=(16, 300)), jnp.float32)}, "bias": jnp.zeros(300)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(5)]

    def run(tx):
        step = jax.jit(lambda p, s, g: tx.update(g, s, p))
        state, history = tx.init(params), []
        for g in grads:
            updates, state = step(params, state, g)
            history.append(updates)
        return history, state

    got, expected = run(alias("int8")), run(by_hand())
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    blocks = [
        n
        for n in jax.tree.leaves(got[1], is_leaf=lambda n: isinstance(n, QuantizedBlocks))
        if isinstance(n, QuantizedBlocks)
    ]
    assert len(blocks) == 4 and {q.values.dtype for q in blocks} == {jnp.dtype(jnp.int8), jnp.dtype(jnp.uint8)}


@pytest.mark.parametrize("task", EIGHT_BIT_TASKS)
def test_adam_with_state_dtype_int8_keeps_about_2_bytes_a_parameter(task):
    """The alias's whole state (the 8-bit blocks, the count, the stateless blocks' empty states): 2.036, 2.033,
    2.043 bytes a parameter by per_device_nbytes, against 8.0 for adam's float32 moments."""
    _, params, _ = EIGHT_BIT_TASKS[task](0)
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    int8 = sum(mpnn_opt.per_device_nbytes(mpnn_opt.adam(state_dtype="int8").init(params)).values()) / n
    f32 = sum(mpnn_opt.per_device_nbytes(mpnn_opt.adam().init(params)).values()) / n
    assert int8 <= 2.1 and f32 == pytest.approx(8.0, abs=0.01)


def test_state_dtype_int8_is_refused_where_it_cannot_apply_naming_the_argument():
    with pytest.raises(ValueError, match="state_dtype='int8' .* needs amsgrad=False"):
        mpnn_opt.torch_adamw(amsgrad=True, state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype='int8' .* is not available for nadam"):
        mpnn_opt.nadam(state_dtype="int8")
    with pytest.raises(ValueError, match="mu_dtype must be None with state_dtype='int8'.*bfloat16"):
        mpnn_opt.adam(state_dtype="int8", mu_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="nu_dtype must be None with state_dtype='int8'"):
        mpnn_opt.torch_adamw(state_dtype="int8", nu_dtype="float32")
    # the dtype objects stay refused, as every integer state dtype is: the 8-bit format is the string 'int8'
    with pytest.raises(TypeError, match="state_dtype must be .*or the string 'int8', got <class 'jax.numpy.int8'>"):
        mpnn_opt.adam(state_dtype=jnp.int8)
    with pytest.raises(TypeError, match="mu_dtype must be None or a floating dtype.*'int8'.*state_dtype='int8'"):
        mpnn_opt.adam(mu_dtype="int8")
    with pytest.raises(TypeError, match="state_dtype must be None or a floating dtype.*int8"):
        mpnn_opt.transforms.scale_by_adam(state_dtype="int8")  # the block keeps optax's meaning: float moments
    with pytest.raises(TypeError, match="state_dtype must be None or a floating dtype.*int8"):
        mpnn_opt.sgd(state_dtype="int8")


def test_state_dtype_int8_stays_static_under_inject_hyperparams():
    tx = mpnn_opt.inject_hyperparams(mpnn_opt.adam)(learning_rate=0.01, regularization=None, state_dtype="int8")
    params = {"w": jnp.zeros((4, 256))}
    state = tx.init(params)
    assert "state_dtype" not in state.hyperparams
    updates, state = jax.jit(tx.update)({"w": jnp.ones((4, 256))}, state, params)
    np.testing.assert_allclose(updates["w"], -0.01, rtol=1e-5)  # Adam's first step: -lr * sign(g)
    assert state.inner_state[1].momentums["w"].values.dtype == jnp.int8
