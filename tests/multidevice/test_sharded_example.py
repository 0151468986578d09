"""examples/sharded_training.py on the 4x2 mesh: the same losses as its own one-device run."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sharded_training.py"


@pytest.mark.parametrize("zero", [False, True], ids=["state-like-params", "zero1"])
def test_sharded_example_trains_with_the_one_device_losses(zero, capsys):
    sharded, single = runpy.run_path(str(EXAMPLE))["main"](zero=zero)
    printed = capsys.readouterr().out
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    assert sharded[-1] < sharded[0] / 10
    assert "mesh {'data': 4, 'model': 2} on 8 cpu devices" in printed
    total, low, high = map(
        int, re.search(r"Adam moments: (\d+) bytes in all, per device min (\d+) max (\d+)", printed).groups()
    )
    # (elements, ways split) per leaf, from the example's specs on a 4x2 mesh; 2 moments of float32.
    # Layout like params: layer0 weights/bias over 'model' (2), layer1 weights over 'model' (2).
    # ZeRO-1 adds 'data' (4) on the first free dimension it divides: layer0 weights (16 rows),
    # layer1 weights (64 columns), layer1 bias (64), layer2 weights (64 rows); not layer2 bias (1).
    leaves = {"l0w": 16 * 64, "l0b": 64, "l1w": 64 * 64, "l1b": 64, "l2w": 64, "l2b": 1}
    ways = {"l0w": 2, "l0b": 2, "l1w": 2, "l1b": 1, "l2w": 1, "l2b": 1}
    if zero:
        ways.update(l0w=8, l1w=8, l1b=4, l2w=4)
    assert total == 2 * 4 * sum(leaves.values())
    assert low == high == 2 * 4 * sum(leaves[name] // ways[name] for name in leaves)
