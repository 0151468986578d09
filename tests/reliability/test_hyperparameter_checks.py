"""Every factory refuses a bad hyperparameter at construction, naming the argument as the user spelled it
and showing the value; it accepts real numbers of every usual kind, and gives the same numbers for them.

A number is a Python int or float, a NumPy scalar or a 0-d NumPy / JAX array of a real dtype. Strings
(even "0.1"), None, bools and complex values are a TypeError; arrays of another shape, NaN, +-inf and
values out of range a ValueError. Counts are ints (NumPy ints too), flags are bools, ``state_dtype`` (and
the Adam family's ``mu_dtype`` and ``nu_dtype``) is None or a floating dtype.
"""

from __future__ import annotations

from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpnn_opt
from mpnn_opt import accumulation, aliases, clipping, regularization, schedules, transforms, wrappers
from mpnn_opt.hyperparams import read_value

NAN, INF = float("nan"), float("inf")

# ---------------------------------------------------------------------------------------------------------------
# Values: (value, expected exception) for the bad ones, plain values for the good ones.

NOT_A_NUMBER = [
    ("0.1", TypeError),
    ("fast", TypeError),
    (None, TypeError),
    (True, TypeError),
    (False, TypeError),
    (np.bool_(True), TypeError),
    (0.1 + 0j, TypeError),
    (np.complex64(0.5), TypeError),
    (np.str_("0.1"), TypeError),
    (np.array("0.1"), TypeError),
    (np.array(True), TypeError),
    ([0.1], TypeError),
    (Decimal("0.1"), TypeError),
    (np.array([0.1, 0.2]), ValueError),
    (np.array([0.1]), ValueError),
    (jnp.full((3,), 0.1), ValueError),
    (NAN, ValueError),
    (INF, ValueError),
    (-INF, ValueError),
    (np.float32(NAN), ValueError),
    (jnp.asarray(INF), ValueError),
]
OUT_OF_RANGE = {
    "non_negative": [-0.1, -1, np.float32(-0.1), jnp.asarray(-1.0)],
    "positive": [0, 0.0, -1e-8, np.float64(0.0)],
    "unit": [1.0, 1, -0.1, 1.5, np.float32(1.0), jnp.asarray(1.0)],
    "finite": [],
    "finite or None": [],
}
NOT_AN_INT = [
    ("3", TypeError),
    (None, TypeError),
    (True, TypeError),
    (False, TypeError),
    (np.bool_(True), TypeError),
    (3.0, TypeError),
    (2.5, TypeError),
    (np.float64(3.0), TypeError),
    (np.array(3.0), TypeError),
    (NAN, TypeError),
    (3 + 0j, TypeError),
    (np.array([1, 2]), ValueError),
    (-1, ValueError),
    (np.int64(-1), ValueError),
]
NOT_A_FLAG = [
    (1, TypeError),
    (0, TypeError),
    ("yes", TypeError),
    ("True", TypeError),
    (None, TypeError),
    (1.0, TypeError),
    (np.int64(1), TypeError),
    (np.array(True), TypeError),
]
NOT_A_DTYPE = [
    (jnp.int32, TypeError),
    (np.int8, TypeError),
    ("int32", TypeError),
    (bool, TypeError),
    (np.complex64, TypeError),
    ("fast", TypeError),
    (0.1, TypeError),
    (True, TypeError),
    (np.zeros(3), TypeError),
    (jnp.zeros(()), TypeError),
]


def _bad_values(kind: str) -> list:
    if kind == "finite or None":
        return [(value, error) for value, error in NOT_A_NUMBER if value is not None]
    if kind in OUT_OF_RANGE:
        return NOT_A_NUMBER + [(value, ValueError) for value in OUT_OF_RANGE[kind]]
    if kind == "count":  # an int >= 1
        return NOT_AN_INT + [(0, ValueError), (np.int32(0), ValueError)]
    if kind == "index":  # an int >= 0
        return NOT_AN_INT
    return {"flag": NOT_A_FLAG, "dtype": NOT_A_DTYPE}[kind]


GOOD = {
    "non_negative": [
        0,
        0.1,
        3,
        np.float32(0.1),
        np.float64(0.1),
        np.float16(0.1),
        np.int64(2),
        np.array(0.1),
        np.array(0.1, np.float32),
        jnp.asarray(0.1),
        jnp.asarray(0.1, jnp.bfloat16),
        jnp.asarray(2),
    ],
    "positive": [1e-8, 1, np.float32(1e-6), np.float64(1e-8), np.int64(1), np.array(1e-8), jnp.asarray(1e-6)],
    "unit": [
        0,
        0.0,
        0.5,
        np.float32(0.9),
        np.float64(0.9),
        np.int64(0),
        np.array(0.9),
        jnp.asarray(0.9),
        jnp.asarray(0.5, jnp.bfloat16),
    ],
    "finite": [0.1, -0.5, 1, np.float32(0.1), np.float64(0.1), np.int64(1), np.array(0.1), jnp.asarray(0.1)],
    "finite or None": [None, 0.1, -0.5, np.float32(0.1), np.array(0.1), jnp.asarray(0.1)],
    "count": [2, 5, np.int64(5), np.int32(5), np.uint8(5), np.array(5), jnp.asarray(5)],
    "index": [0, 3, np.int64(3), np.array(0), jnp.asarray(3)],
    "flag": [True, False, np.bool_(True), np.bool_(False)],
    "dtype": [None, jnp.float32, np.float32, "float32", jnp.bfloat16, "bfloat16", np.dtype("float16"), jnp.float16],
}

# ---------------------------------------------------------------------------------------------------------------
# Factories: name -> (callable, the other arguments, {argument: kind}).

PARAMS = {"weights": jnp.asarray([[0.5, -1.0], [2.0, 0.25]]), "bias": jnp.asarray([0.1, -0.3])}
EMA = wrappers.params_ema_init(PARAMS)
STATE = {"state_dtype": "dtype"}
MOMENTS = {**STATE, "mu_dtype": "dtype", "nu_dtype": "dtype"}
LR = {"learning_rate": "non_negative"}

FACTORIES = {
    "sgd": (aliases.sgd, {}, {**LR, "weight_decay": "non_negative", "momentum": "unit", **STATE}),
    "rmsprop": (
        aliases.rmsprop,
        {},
        {**LR, "weight_decay": "non_negative", "decay_rate": "unit", "epsilon": "positive", **STATE},
    ),
    "adam": (
        aliases.adam,
        {},
        {**LR, "weight_decay": "non_negative", "beta1": "unit", "beta2": "unit", "epsilon": "positive", **MOMENTS},
    ),
    "adam L1": (aliases.adam, {"regularization": "L1"}, {**LR, "weight_decay": "non_negative"}),
    "adam None": (aliases.adam, {"regularization": None}, {**LR, "weight_decay": "non_negative"}),
    "scale_by_learning_rate": (transforms.scale_by_learning_rate, {"learning_rate": 0.1}, LR),
    "momentum_velocity": (
        transforms.momentum_velocity,
        {"learning_rate": 0.1, "momentum": 0.9},
        {**LR, "momentum": "unit", **STATE},
    ),
    "scale_by_rms": (
        transforms.scale_by_rms,
        {},
        {"decay_rate": "unit", "epsilon": "positive", "eps_in_sqrt": "flag", **STATE},
    ),
    "rms_step": (
        transforms.rms_step,
        {"learning_rate": 0.1},
        {**LR, "decay_rate": "unit", "epsilon": "positive", **STATE},
    ),
    "scale_by_adam": (
        transforms.scale_by_adam,
        {},
        {"beta1": "unit", "beta2": "unit", "epsilon": "positive", "epsilon_hat": "flag", **MOMENTS},
    ),
    "trace": (transforms.trace, {"decay": 0.9}, {"decay": "unit", "nesterov": "flag", **STATE}),
    "add_decayed_weights": (
        regularization.add_decayed_weights,
        {"weight_decay": 0.1},
        {"weight_decay": "non_negative"},
    ),
    "scale_by_centered_rms": (transforms.scale_by_centered_rms, {}, {"decay": "unit", "epsilon": "positive", **STATE}),
    "scale_by_torch_amsgrad": (
        transforms.scale_by_torch_amsgrad,
        {},
        {"beta1": "unit", "beta2": "unit", "epsilon": "positive", **MOMENTS},
    ),
    "scale_by_nadam": (
        transforms.scale_by_nadam,
        {},
        {"beta1": "unit", "beta2": "unit", "epsilon": "positive", **MOMENTS},
    ),
    "scale_by_torch_adagrad": (
        transforms.scale_by_torch_adagrad,
        {},
        {"initial_accumulator_value": "non_negative", "epsilon": "positive", **STATE},
    ),
    "scale_by_lion": (transforms.scale_by_lion, {}, {"beta1": "unit", "beta2": "unit", **STATE}),
    "add_regularization": (
        regularization.add_regularization,
        {"regularization": "L2", "weight_decay": 0.1},
        {"weight_decay": "non_negative"},
    ),
    "add_regularization None": (
        regularization.add_regularization,
        {"regularization": None, "weight_decay": 0.1},
        {"weight_decay": "non_negative"},
    ),
    "add_decoupled_weight_decay": (
        regularization.add_decoupled_weight_decay,
        {"learning_rate": 0.1, "weight_decay": 0.1},
        {**LR, "weight_decay": "non_negative"},
    ),
    "torch_sgd": (
        aliases.torch_sgd,
        {"learning_rate": 0.1, "momentum": 0.9},
        {**LR, "momentum": "unit", "nesterov": "flag", "weight_decay": "non_negative"},
    ),
    "torch_rmsprop": (
        aliases.torch_rmsprop,
        {},
        {
            **LR,
            "decay_rate": "unit",
            "epsilon": "positive",
            "weight_decay": "non_negative",
            "momentum": "unit",
            "centered": "flag",
        },
    ),
    "torch_rmsprop centered": (
        aliases.torch_rmsprop,
        {"centered": True},
        {"decay_rate": "unit", "epsilon": "positive"},
    ),
    "torch_adamw": (
        aliases.torch_adamw,
        {},
        {
            **LR,
            "beta1": "unit",
            "beta2": "unit",
            "epsilon": "positive",
            "weight_decay": "non_negative",
            "amsgrad": "flag",
            **MOMENTS,
        },
    ),
    "torch_adamw amsgrad": (
        aliases.torch_adamw,
        {"amsgrad": True},
        {"beta1": "unit", "beta2": "unit", "epsilon": "positive", **MOMENTS},
    ),
    "torch_adagrad": (
        aliases.torch_adagrad,
        {},
        {**LR, "epsilon": "positive", "initial_accumulator_value": "non_negative", "weight_decay": "non_negative"},
    ),
    "nadam": (
        aliases.nadam,
        {"learning_rate": 0.1},
        {**LR, "beta1": "unit", "beta2": "unit", "epsilon": "positive", **MOMENTS},
    ),
    "lion": (
        aliases.lion,
        {"learning_rate": 0.1},
        {**LR, "beta1": "unit", "beta2": "unit", "weight_decay": "non_negative"},
    ),
    "constant_schedule": (schedules.constant_schedule, {"value": 0.1}, {"value": "finite"}),
    "linear_schedule": (
        schedules.linear_schedule,
        {"init_value": 1.0, "end_value": 0.0, "transition_steps": 10},
        {"init_value": "finite", "end_value": "finite", "transition_steps": "count", "transition_begin": "index"},
    ),
    "exponential_decay": (
        schedules.exponential_decay,
        {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.5},
        {
            "init_value": "finite",
            "transition_steps": "count",
            "decay_rate": "positive",
            "transition_begin": "index",
            "staircase": "flag",
            "end_value": "finite or None",
        },
    ),
    "cosine_decay_schedule": (
        schedules.cosine_decay_schedule,
        {"init_value": 1.0, "decay_steps": 10},
        {"init_value": "finite", "decay_steps": "count", "alpha": "finite", "exponent": "positive"},
    ),
    "warmup_cosine_decay_schedule": (
        schedules.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 1, "decay_steps": 10},
        {
            "init_value": "finite",
            "peak_value": "finite",
            "warmup_steps": "count",
            "decay_steps": "count",
            "end_value": "finite",
            "exponent": "positive",
        },
    ),
    "piecewise_constant_schedule": (
        schedules.piecewise_constant_schedule,
        {"init_value": 1.0, "boundaries_and_scales": {5: 0.1}},
        {"init_value": "finite"},
    ),
    "clip": (clipping.clip, {"max_delta": 1.0}, {"max_delta": "non_negative"}),
    "clip_by_leaf_norm": (clipping.clip_by_leaf_norm, {"max_norm": 1.0}, {"max_norm": "positive"}),
    "clip_by_global_norm": (clipping.clip_by_global_norm, {"max_norm": 1.0}, {"max_norm": "positive"}),
    "accumulate": (accumulation.accumulate, {"inner": mpnn_opt.identity(), "every_k": 2}, {"every_k": "count"}),
    "params_ema_init": (wrappers.params_ema_init, {"params": PARAMS}, {"decay": "unit"}),
    "ema_params": (lambda **kwargs: wrappers.ema_params(EMA, **kwargs), {}, {"debias": "flag"}),
}


def _id(value) -> str:
    text = repr(value) if not isinstance(value, type) else value.__name__
    return text.replace(" ", "").replace("\n", "")[:40]


def _cases(values_of):
    return [
        pytest.param(name, argument, *entry, id=f"{name}-{argument}-{_id(entry[0])}")
        for name, (_, _, arguments) in FACTORIES.items()
        for argument, kind in arguments.items()
        for entry in values_of(kind)
    ]


BAD_CASES = _cases(_bad_values)
GOOD_CASES = _cases(lambda kind: [(value,) for value in GOOD[kind]])


def _build(name: str, **overrides):
    factory, base, _ = FACTORIES[name]
    return factory(**{**base, **overrides})


def _assert_names(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize("name, argument, value, error", BAD_CASES)
def test_a_bad_value_is_refused_at_construction_naming_the_argument_and_the_value(name, argument, value, error):
    with pytest.raises(error) as raised:
        _build(name, **{argument: value})
    _assert_names(raised, argument, repr(value))


@pytest.mark.parametrize("name, argument, value", GOOD_CASES)
def test_a_real_number_of_any_usual_kind_is_accepted(name, argument, value):
    _build(name, **{argument: value})


# ---------------------------------------------------------------------------------------------------------------
# Arguments of other shapes: regularization, convention, dicts and lists of schedules.

OTHER_BAD = [
    ("sgd", {"regularization": "L3"}, ValueError, ["regularization", "'L3'"]),
    ("adam", {"regularization": "l2"}, ValueError, ["regularization", "'l2'"]),
    ("adam", {"regularization": 2}, ValueError, ["regularization", "2"]),
    ("rmsprop", {"regularization": True}, ValueError, ["regularization", "True"]),
    (
        "add_regularization",
        {"regularization": np.array(["L1", "L2"])},
        ValueError,
        ["regularization", "array(['L1', 'L2']"],
    ),
    (
        "piecewise_constant_schedule",
        {"boundaries_and_scales": {5: -0.1}},
        ValueError,
        ["boundaries_and_scales[5]", "-0.1"],
    ),
    (
        "piecewise_constant_schedule",
        {"boundaries_and_scales": {5: "0.1"}},
        TypeError,
        ["boundaries_and_scales[5]", "'0.1'"],
    ),
    (
        "piecewise_constant_schedule",
        {"boundaries_and_scales": {5: NAN}},
        ValueError,
        ["boundaries_and_scales[5]", "nan"],
    ),
    ("piecewise_constant_schedule", {"boundaries_and_scales": {"5": 0.1}}, TypeError, ["boundaries_and_scales", "'5'"]),
    ("piecewise_constant_schedule", {"boundaries_and_scales": {-1: 0.1}}, ValueError, ["boundaries_and_scales", "-1"]),
    ("piecewise_constant_schedule", {"boundaries_and_scales": {5.0: 0.1}}, TypeError, ["boundaries_and_scales", "5.0"]),
    (
        "piecewise_constant_schedule",
        {"boundaries_and_scales": [(5, 0.1)]},
        TypeError,
        ["boundaries_and_scales", "[(5, 0.1)]"],
    ),
]


@pytest.mark.parametrize(
    "name, overrides, error, parts", OTHER_BAD, ids=[f"{case[0]}-{_id(case[1])}" for case in OTHER_BAD]
)
def test_a_bad_choice_or_container_is_refused_naming_it(name, overrides, error, parts):
    with pytest.raises(error) as raised:
        _build(name, **overrides)
    _assert_names(raised, *parts)


JOIN_BAD = [
    ([0.1, schedules.constant_schedule(0.0)], [5], TypeError, ["schedules[0]", "0.1"]),
    ([schedules.constant_schedule(1.0), schedules.constant_schedule(0.0)], [5.0], TypeError, ["boundaries[0]", "5.0"]),
    ([schedules.constant_schedule(1.0), schedules.constant_schedule(0.0)], ["5"], TypeError, ["boundaries[0]", "'5'"]),
    ([schedules.constant_schedule(1.0), schedules.constant_schedule(0.0)], [-1], ValueError, ["boundaries[0]", "-1"]),
    ([schedules.constant_schedule(1.0)] * 3, [5, 3], ValueError, ["boundaries", "[5, 3]"]),
]


@pytest.mark.parametrize(
    "pieces, boundaries, error, parts", JOIN_BAD, ids=[_id(case[1]) + str(index) for index, case in enumerate(JOIN_BAD)]
)
def test_join_schedules_refuses_bad_pieces_and_boundaries(pieces, boundaries, error, parts):
    with pytest.raises(error) as raised:
        schedules.join_schedules(pieces, boundaries)
    _assert_names(raised, *parts)


def test_join_schedules_accepts_numpy_int_boundaries():
    joined = schedules.join_schedules(
        [schedules.constant_schedule(1.0), schedules.constant_schedule(0.5)], [np.int64(3)]
    )
    assert float(joined(2)) == 1.0 and float(joined(3)) == 0.5


# ---------------------------------------------------------------------------------------------------------------
# Contradictory combinations.

CONTRADICTIONS = [
    (
        "torch_sgd nesterov without momentum",
        lambda: aliases.torch_sgd(0.1, momentum=0.0, nesterov=True),
        ["nesterov", "momentum", "0.0"],
    ),
    (
        "torch_sgd nesterov with int 0",
        lambda: aliases.torch_sgd(0.1, momentum=0, nesterov=True),
        ["nesterov", "momentum=0"],
    ),
    (
        "torch_sgd nesterov with np.float32 0",
        lambda: aliases.torch_sgd(0.1, momentum=np.float32(0), nesterov=True),
        ["nesterov", repr(np.float32(0))],
    ),
    (
        "exponential_decay end above a decay",
        lambda: schedules.exponential_decay(1.0, 10, 0.5, end_value=2.0),
        ["end_value", "2.0", "init_value"],
    ),
    (
        "exponential_decay end below a growth",
        lambda: schedules.exponential_decay(1.0, 10, 2.0, end_value=0.5),
        ["end_value", "0.5", "init_value"],
    ),
    (
        "warmup_cosine end with a zero peak",
        lambda: schedules.warmup_cosine_decay_schedule(0.0, 0.0, 1, 10, end_value=0.1),
        ["end_value", "0.1", "peak_value"],
    ),
    (
        "warmup_cosine decay inside warm-up",
        lambda: schedules.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10),
        ["decay_steps", "10"],
    ),
]


@pytest.mark.parametrize(
    "build, parts", [case[1:] for case in CONTRADICTIONS], ids=[case[0] for case in CONTRADICTIONS]
)
def test_a_contradictory_combination_is_refused_naming_both_arguments(build, parts):
    with pytest.raises(ValueError) as raised:
        build()
    _assert_names(raised, *parts)


def test_the_contradictions_edges_are_accepted():
    aliases.torch_sgd(0.1, momentum=0.0, nesterov=False)
    aliases.torch_sgd(0.1, momentum=0.1, nesterov=True)
    schedules.exponential_decay(1.0, 10, 0.5, end_value=1.0)
    schedules.exponential_decay(-1.0, 10, 0.5, end_value=-0.5)  # a negative init rises towards 0: no claim made
    schedules.warmup_cosine_decay_schedule(0.0, 0.0, 1, 10, end_value=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Schedules and traced values pass unchecked; the dtype given is the dtype of the state.


def test_a_schedule_and_a_traced_value_pass_unchecked():
    mpnn_opt.adam(learning_rate=schedules.linear_schedule(0.1, 0.0, 10))

    def build(value):
        aliases.torch_sgd(value, momentum=value, nesterov=True, weight_decay=value)
        mpnn_opt.adam(value, weight_decay=value, beta1=value, beta2=value, epsilon=value)
        accumulation.accumulate(mpnn_opt.identity(), jnp.asarray(value, jnp.int32))
        return value

    jax.make_jaxpr(build)(0.5)


@pytest.mark.parametrize("state_dtype", ["bfloat16", jnp.bfloat16, np.float32, "float16"], ids=_id)
def test_state_dtype_given_any_way_is_the_dtype_of_the_state(state_dtype):
    state = mpnn_opt.adam(0.1, state_dtype=state_dtype).init(PARAMS)
    assert {leaf.dtype for leaf in jax.tree.leaves(read_value(state, "momentums"))} == {jnp.dtype(state_dtype)}


# ---------------------------------------------------------------------------------------------------------------
# Same numbers for the same value, whatever its kind.

KINDS = {
    "np.float32": np.float32,
    "np.float64": np.float64,
    "np.array": np.array,
    "jnp scalar": jnp.asarray,
}
NUMBERS = [
    ("adam", {"learning_rate": 0.01, "weight_decay": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}),
    ("sgd", {"learning_rate": 0.01, "weight_decay": 0.01, "momentum": 0.9}),
    ("rmsprop", {"learning_rate": 0.01, "weight_decay": 0.01, "decay_rate": 0.9, "epsilon": 1e-6}),
    ("torch_sgd", {"learning_rate": 0.01, "weight_decay": 0.01, "momentum": 0.9}),
    ("torch_rmsprop", {"learning_rate": 0.01, "weight_decay": 0.01, "decay_rate": 0.9, "epsilon": 1e-6}),
    ("torch_adamw", {"learning_rate": 0.01, "weight_decay": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}),
    ("torch_adagrad", {"learning_rate": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1, "epsilon": 1e-6}),
    ("nadam", {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}),
    ("lion", {"learning_rate": 0.01, "weight_decay": 0.01, "beta1": 0.8, "beta2": 0.99}),
]


def _two_steps(tx):
    grads = [jax.tree.map(lambda p: 0.3 * p + 0.1, PARAMS), jax.tree.map(lambda p: -0.7 * p, PARAMS)]
    params, state = PARAMS, tx.init(PARAMS)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = mpnn_opt.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name, hyperparameters", NUMBERS, ids=[case[0] for case in NUMBERS])
def test_the_same_value_as_a_numpy_or_jax_scalar_gives_the_same_numbers_as_a_python_float(name, hyperparameters, kind):
    converted = {argument: KINDS[kind](value) for argument, value in hyperparameters.items()}
    as_floats = {
        argument: float(value) for argument, value in converted.items()
    }  # the very same value, as a Python float
    got, expected = _two_steps(_build(name, **converted)), _two_steps(_build(name, **as_floats))
    for got_leaf, expected_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got_leaf, expected_leaf, rtol=1e-6, atol=1e-9)


def test_a_numpy_int_count_gives_the_same_schedule_and_accumulation_as_an_int():
    for count in (0, 4, 9, 15):
        ours = schedules.warmup_cosine_decay_schedule(0.0, 1.0, np.int64(3), np.int32(10), end_value=0.1)(count)
        plain = schedules.warmup_cosine_decay_schedule(0.0, 1.0, 3, 10, end_value=0.1)(count)
        assert float(ours) == float(plain)
    got = _two_steps(accumulation.accumulate(mpnn_opt.sgd(0.1, None), np.int64(2)))
    expected = _two_steps(accumulation.accumulate(mpnn_opt.sgd(0.1, None), 2))
    for got_leaf, expected_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got_leaf, expected_leaf)
