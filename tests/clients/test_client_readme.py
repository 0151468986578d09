"""The README's "With flax, with equinox, with optax" snippets run as written, each in a fresh process."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## With flax, with equinox, with optax", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_three_snippets():
    assert len(_snippets()) == 3


@pytest.mark.parametrize("index,expected", [(0, "flax loss"), (1, "equinox loss"), (2, "adam count")])
def test_each_snippet_runs_as_written_and_trains(index, expected):
    result = subprocess.run([sys.executable, "-c", _snippets()[index]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(expected)]
    assert lines, result.stdout
    if index < 2:  # the loss falls over the three steps
        losses = [float(line.split()[-1]) for line in lines]
        assert losses[-1] < losses[0], losses
