"""Type checkers agree that ours are optax's type: pyright and mypy check a user's script that passes our
transforms where flax and optax expect theirs, and theirs where we expect ours. Both run from a folder
outside the repository, so they find mpnn_opt through the README's editable install (a plain path entry).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("user_script_types.py")


def _run(command: list[str], folder: pathlib.Path) -> str:
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_pyright_reports_no_error_on_a_script_mixing_ours_with_flax_and_optax(tmp_path):
    shutil.copy(SCRIPT, tmp_path / "user.py")
    report = _run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "user.py"], tmp_path)
    assert "exit 0" in report and "0 errors" in report, report


def test_mypy_finds_the_package_and_reports_no_error(tmp_path):
    shutil.copy(SCRIPT, tmp_path / "user.py")
    report = _run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", "user.py"], tmp_path)
    assert "exit 0" in report and "Success" in report, report
    # mypy reads mpnn_opt's own annotations (not Any): it knows the type and reports a wrong call
    (tmp_path / "bad.py").write_text("import mpnn_opt\nreveal_type(mpnn_opt.adam())\nmpnn_opt.adam(bogus=1)\n")
    report = _run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", "bad.py"], tmp_path)
    assert 'Revealed type is "mpnn_opt.base.GradientTransformation"' in report, report
    assert 'Unexpected keyword argument "bogus"' in report and "exit 1" in report, report
