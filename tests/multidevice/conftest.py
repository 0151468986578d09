"""Tests here need 8 devices; they run in their own process (see tests/test_multidevice.py).

Run them directly with::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest -q tests/multidevice

In a session with fewer devices (the main suite) every test here is skipped, so the main suite
keeps its single device and collecting this folder there costs nothing.
"""

from __future__ import annotations

import pathlib

import jax
import pytest

DEVICES_NEEDED = 8
HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if jax.device_count() >= DEVICES_NEEDED:
        return
    skip = pytest.mark.skip(reason=f"needs {DEVICES_NEEDED} devices; run via tests/test_multidevice.py")
    for item in items:
        if HERE in pathlib.Path(item.path).parents:
            item.add_marker(skip)
