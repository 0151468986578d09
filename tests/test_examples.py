"""The quickstart trains to the accuracy README promises."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_reaches_over_90_percent_accuracy(capsys):
    accuracy = runpy.run_path(str(EXAMPLES / "quickstart.py"))["main"]()
    printed = capsys.readouterr().out
    assert accuracy > 0.9
    assert printed.count("loss") == 15
