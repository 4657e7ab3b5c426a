"""The static checks CI would otherwise skip: mypy on the package and ruff on the repo.

CI runs only ``python -m pytest``, so the type and lint rules in pyproject.toml (among them
the rule that the core engine never imports napari, Qt or torch) are kept by these tests.
Each is skipped where its tool is not installed (``pip install -e ".[dev]"`` installs both).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it is in the 'dev' extra)")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("needs the source checkout (pyproject.toml holds the tool settings)")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_package_type_checks() -> None:
    result = _run_tool("mypy")  # packages and settings come from [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_repo_passes_ruff() -> None:
    result = _run_tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
