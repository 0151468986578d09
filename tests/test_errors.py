"""Bad input: clear errors that name the argument, the value or the parameter's path."""

from __future__ import annotations

import re

import jax.numpy as jnp
import pytest

import mpnn_opt

INVALID = [
    ("sgd", "learning_rate", -0.1, ">= 0"),
    ("sgd", "weight_decay", -1.0, ">= 0"),
    ("sgd", "momentum", 1.0, r"\[0, 1\)"),
    ("sgd", "momentum", -0.1, r"\[0, 1\)"),
    ("sgd", "regularization", "L3", "'L1', 'L2' or None"),
    ("rmsprop", "decay_rate", 1.5, r"\[0, 1\)"),
    ("rmsprop", "epsilon", 0.0, "> 0"),
    ("rmsprop", "learning_rate", float("nan"), ">= 0"),
    ("adam", "beta1", 1.0, r"\[0, 1\)"),
    ("adam", "beta2", -0.5, r"\[0, 1\)"),
    ("adam", "epsilon", -1e-8, "> 0"),
    ("adam", "regularization", "l2", "'L1', 'L2' or None"),
    ("adam", "weight_decay", -0.001, ">= 0"),
]


@pytest.mark.parametrize("alias, argument, value, expectation", INVALID)
def test_invalid_hyperparameter_raises_at_construction_naming_argument_and_value(alias, argument, value, expectation):
    with pytest.raises(ValueError) as error:
        getattr(mpnn_opt, alias)(**{argument: value})
    message = str(error.value)
    assert argument in message and repr(value) in message
    assert re.search(expectation, message)


def test_non_numeric_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="number"):
        mpnn_opt.adam(learning_rate="fast")


def test_a_schedule_is_accepted_where_a_learning_rate_is():
    tx = mpnn_opt.adam(learning_rate=lambda count: 0.001)
    assert tx.init({"w": jnp.ones(2)}) is not None


@pytest.mark.parametrize("alias", ["sgd", "rmsprop", "adam"])
def test_updates_with_another_structure_name_the_first_differing_path(alias):
    tx = getattr(mpnn_opt, alias)()
    params = {"dense": {"weights": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"\['dense'\]\['bias'\]"):
        tx.update({"dense": {"weights": jnp.ones((2, 2)), "biases": jnp.ones(2)}}, state, params)


@pytest.mark.parametrize("alias", ["sgd", "rmsprop", "adam"])
def test_updates_of_the_wrong_shape_name_the_path_instead_of_broadcasting(alias):
    tx = getattr(mpnn_opt, alias)(regularization=None)
    params = {"dense": {"weights": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match=r"\['dense'\]\['weights'\] has shape \(1, 2\)"):
        tx.update({"dense": {"weights": jnp.ones((1, 2))}}, tx.init(params), params)


@pytest.mark.parametrize("alias", ["sgd", "rmsprop", "adam"])
def test_integer_params_are_a_type_error_not_a_silent_truncation(alias):
    tx = getattr(mpnn_opt, alias)()
    with pytest.raises(TypeError, match=r"\['steps'\] has dtype int32"):
        tx.init({"weights": jnp.ones(2), "steps": jnp.arange(3)})


def test_integer_gradients_are_a_type_error():
    tx = mpnn_opt.adam(regularization=None)
    params = {"weights": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"updates at \['weights'\]"):
        tx.update({"weights": jnp.ones(2, jnp.int32)}, tx.init(params), params)
