"""The documentation: ``mkdocs build --strict`` passes, every ``mpnn_opt.name`` it mentions exists, and its
```python blocks run as written."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
SNIPPETS = [
    (page.name, index, code)
    for page in PAGES
    for index, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M))
]


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason='mkdocs is not installed: python -m pip install -e ".[docs]" (the test extra includes it)',
)
def test_the_docs_build_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner about MkDocs 2.0
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,  # pymdownx.snippets reads benchmarks/*_results.md relative to the repository root
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert "scale_by_adam" in (tmp_path / "site" / "api" / "transforms" / "index.html").read_text()


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for name in parts[split:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_mpnn_opt_name_in_the_docs_and_readme_exists():
    texts = [page.read_text() for page in PAGES] + [(ROOT / "README.md").read_text()]
    texts += [page.read_text() for page in (ROOT / "docs" / "api").glob("*.md")]
    names = {name.rstrip(".") for text in texts for name in re.findall(r"\bmpnn_opt(?:\.[A-Za-z_]\w*)+", text)}
    missing = sorted(name for name in names if not _resolves(name))
    assert not missing, f"the docs mention names that mpnn_opt does not have: {missing}"


@pytest.mark.parametrize("page,index,code", SNIPPETS, ids=[f"{page}:{index}" for page, index, _ in SNIPPETS])
def test_each_docs_snippet_runs_as_written(page, index, code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"{page}, python block {index}:\n{code}\n{result.stderr}"
