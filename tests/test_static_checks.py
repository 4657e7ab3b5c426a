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


def test_recorded_results_hold_no_path_of_the_machine_that_made_them() -> None:
    """Benchmark and model records are committed: their paths are the checkout's own
    (``src``, ``benchmarks/.cache/...``), never a worktree or temporary folder of one machine."""
    import re

    machine_path = re.compile(r'"(/(tmp|work|home|root|Users|var)/[^"]*)"')
    found = [
        f"{path.relative_to(ROOT)}: {match.group(1)}"
        for folder in ("benchmarks/results", "models/results")
        for path in sorted((ROOT / folder).glob("*.json"))
        for match in machine_path.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found[:10])


def test_benchmark_records_name_their_code_relative_to_the_checkout() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from revisions import source_label
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert source_label(ROOT / "src") == "src"
    assert source_label("/tmp/vst-bench-base-abc/tree/src") == "base worktree/src"
