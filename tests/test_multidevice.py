"""Runs the 8-device suite (tests/multidevice) in its own process, and checks state_shardings' errors.

The device count of a JAX process is fixed when jax first initialises its backend, so the
8 simulated CPU devices need a fresh interpreter whose environment sets XLA_FLAGS before jax is
imported; this session keeps its single device.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mpnn_opt
from mpnn_opt.sharding import state_shardings

TESTS = pathlib.Path(__file__).parent


def test_the_eight_device_suite_passes_in_its_own_process():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "multidevice")],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert " passed" in report and "skipped" not in report, report


def _one_device_setup():
    mesh = jax.make_mesh((1,), ("data",))
    params = {"w": np.zeros((4, 2), np.float32), "b": np.zeros((2,), np.float32)}
    shardings = {"w": NamedSharding(mesh, P("data")), "b": NamedSharding(mesh, P())}
    return params, shardings


def test_state_shardings_names_a_structure_mismatch():
    params, shardings = _one_device_setup()
    with pytest.raises(ValueError, match="param_shardings must have the structure of params"):
        state_shardings(mpnn_opt.adam(), params, {"w": shardings["w"]})


def test_state_shardings_names_an_unknown_zero_axis():
    params, shardings = _one_device_setup()
    with pytest.raises(ValueError, match="zero_axis 'model' is not an axis of the mesh"):
        state_shardings(mpnn_opt.adam(), params, shardings, zero_axis="model")


def test_state_shardings_refuses_shardings_that_are_not_named():
    params, shardings = _one_device_setup()
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(TypeError, match="must be NamedSharding, got SingleDeviceSharding"):
        state_shardings(mpnn_opt.adam(), params, {"w": single, "b": single})
