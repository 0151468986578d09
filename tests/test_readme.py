"""Every ```python block of README.md runs as written, each in a fresh process."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 4  # the training loop and the three client snippets


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_each_readme_snippet_runs_as_written(index):
    result = subprocess.run(
        [sys.executable, "-c", SNIPPETS[index]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=README.parent,
    )
    assert result.returncode == 0, f"README snippet {index} failed:\n{SNIPPETS[index]}\n{result.stderr}"


def test_the_training_loop_prints_a_falling_loss():
    loop = next(snippet for snippet in SNIPPETS if "train_step" in snippet and "mpnn_opt.adam" in snippet)
    result = subprocess.run([sys.executable, "-c", loop], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(losses) >= 2 and losses[-1] < 0.5 * losses[0], result.stdout
