"""Low-precision optimizer state and bf16 training (docs/low-precision.md).

Per-field moment dtypes (``mu_dtype``, ``nu_dtype``) on the Adam family, checked against the float32-state
run and against ``optax.adam(mu_dtype=...)``; bfloat16 params that stall with plain updates and keep learning
with float32 master weights or stochastic rounding, checked against the float32 run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mpnn_opt
from mpnn_opt import transforms
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


def _mlp_task():
    """A 32-512-1 tanh MLP (17,409 params) regressing a noisy sine of a projection, 4096 samples, fixed seed."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4096, 32)), jnp.float32)
    y = jnp.sin(x @ jnp.asarray(rng.normal(size=(32, 1)), jnp.float32) / 4)
    y = y + 0.1 * jnp.asarray(rng.normal(size=(4096, 1)), jnp.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (32, 512)) / 6,
        "b1": jnp.zeros(512),
        "w2": jax.random.normal(k2, (512, 1)) / 23,
        "b2": jnp.zeros(1),
    }

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)

    return loss, params


def test_8bit_adam_state_is_about_2_bytes_a_parameter_and_trains_as_float32_state():
    """400 Adam steps (lr 1e-3): final loss at most 2% above the float32-state run's (measured: 0.00470 vs 0.00465,
    +1.0%; +3.6% with data seed 6, so the 2% bound is met here, not everywhere), never NaN; the state measures 2.03 bytes a parameter with per_device_nbytes (8.00 for float32)."""
    loss, params = _mlp_task()
    n = sum(leaf.size for leaf in jax.tree.leaves(params))

    def run(direction):
        tx = mpnn_opt.chain(direction, mpnn_opt.scale_by_learning_rate(1e-3))

        @jax.jit
        def train(params):
            def step(carry, _):
                params, state = carry
                updates, state = tx.update(jax.grad(loss)(params), state, params)
                params = mpnn_opt.apply_updates(params, updates)
                return (params, state), loss(params)

            return jax.lax.scan(step, (params, tx.init(params)), None, length=400)

        (_, state), losses = train(params)
        return np.asarray(losses), sum(mpnn_opt.per_device_nbytes(state).values()) / n

    f32, f32_bytes = run(mpnn_opt.scale_by_adam())
    q8, q8_bytes = run(mpnn_opt.scale_by_adam_8bit())
    assert np.all(np.isfinite(q8))
    assert q8[-1] <= 1.02 * f32[-1]
    assert q8[-1] < 0.02 * q8[0]
    assert f32_bytes == pytest.approx(8.0, abs=0.01)
    assert q8_bytes <= 2.1


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


def test_8bit_blocks_read_back_within_half_a_level_and_keep_small_second_moments():
    tx = mpnn_opt.scale_by_adam_8bit()
    params = {"w": jnp.zeros((300,))}  # two blocks of 150
    g = jnp.asarray(np.random.default_rng(7).normal(size=300) * 10.0 ** np.linspace(-4, 0, 300), jnp.float32)
    _, state = tx.update({"w": g}, tx.init(params), params)
    m, r = state.momentums["w"], state.root_velocities["w"]
    assert isinstance(m, QuantizedBlocks) and m.values.dtype == jnp.int8 and m.values.shape == (2, 150)
    assert r.values.dtype == jnp.uint8 and r.scales.dtype == jnp.float32 and r.scales.shape == (2,)
    m_back = (m.values.astype(jnp.float32) * (m.scales / 127)[:, None]).reshape(-1)
    blocks_of = np.repeat(np.asarray(m.scales), 150)
    np.testing.assert_array_less(np.abs(np.asarray(m_back) - 0.1 * np.asarray(g)), blocks_of / 254 + 1e-12)
    root_back = (r.values.astype(jnp.float32) * (r.scales / 255)[:, None]).reshape(-1)
    assert np.all(np.asarray(root_back) > 0)  # even sqrt(v) of 1e-4 * ~1e-4 in a block scaled by ~1 is kept
