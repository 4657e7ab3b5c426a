"""How the package installs: a headless engine without the GUI stack, one version, the
licence, the model cards in the wheel, README links that work on PyPI and the napari hub.

`.ci/package_smoke.sh` builds the wheel and installs it into fresh environments; these tests
check the same promises from the source tree, fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import napari_virtual_st
from napari_virtual_st import __version__, registry

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: What a headless install (the engine, the CLI, a Dask cohort worker) must never import.
GUI_STACK = (
    "napari",
    "npe2",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "vispy",
    "magicgui",
    "superqt",
    "matplotlib",
    "torch",
)


def _env() -> dict[str, str]:
    """This environment, importing the package under test (not another checkout's)."""
    source = str(Path(napari_virtual_st.__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
    }


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match is not None, requirement
    return match.group(0).lower()


def test_the_gui_stack_is_no_hard_dependency_and_comes_with_the_extras() -> None:
    project = PYPROJECT["project"]
    hard = {_requirement_name(r) for r in project["dependencies"]}
    assert hard.isdisjoint(name.lower() for name in GUI_STACK), hard
    assert "onnxruntime" in hard  # a plain install runs models (the plugin manager's install)
    extras = project["optional-dependencies"]
    for extra in ("napari", "all", "dev"):
        assert {"napari", "magicgui", "qtpy"} <= {_requirement_name(r) for r in extras[extra]}
    assert any(r.startswith("napari[all]") for r in extras["all"])
    assert "pyqt6" in {_requirement_name(r) for r in extras["dev"]}  # CI's widget tests
    assert {_requirement_name(r) for r in extras["gpu"]} == {"onnxruntime-gpu"}
    # CUDA/cuDNN as NVIDIA's wheels, which the engine preloads (preload_nvidia_libraries)
    assert [r.split(">=")[0] for r in extras["gpu-cuda"]] == ["onnxruntime-gpu[cuda,cudnn]"]


def test_one_version_source_and_the_licence() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    version_file = PYPROJECT["tool"]["hatch"]["version"]["path"]
    assert (ROOT / version_file).read_text(encoding="utf-8").count(__version__) == 1
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("BSD 3-Clause License")
    classifiers = project["classifiers"]
    assert "Framework :: napari" in classifiers
    assert any(c.startswith("Operating System ::") for c in classifiers)
    minimum = project["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {minimum}" in classifiers
    assert {"Homepage", "Bug Tracker", "Source Code"} <= set(project["urls"])


def test_every_bundled_model_ships_its_card_in_the_wheel() -> None:
    cards = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    shipped = {Path(target).name: source for source, target in cards.items()}
    for model in registry.bundled_models():
        assert model.info is not None, model.problem
        source = shipped.get(f"{model.name}.md")
        assert source == f"models/{model.info.family}/README.md", model.name
        assert (ROOT / source).is_file()
        assert model.card == ROOT / source  # a source checkout reads the same file


def test_readme_links_work_on_pypi_and_say_the_model_terms() -> None:
    """PyPI and the napari hub show the README without the repository: links are absolute."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = PYPROJECT["project"]["urls"]["Homepage"]
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets
    for target in targets:
        assert re.match(r"https?://", target), f"relative link in README.md: {target}"
        if target.startswith(home.replace("github.com", "raw.githubusercontent.com")):
            continue
        if target.startswith(home):
            path = re.sub(r"^/(blob|tree)/main/", "", target[len(home) :]).split("#")[0]
            assert not path or (ROOT / path).exists(), target
    flat = " ".join(readme.split())
    assert registry.BUNDLED_MODEL_TERMS in flat


def test_ci_runs_the_readme_test_command_then_the_package_smoke_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[dev,train]" '
        "&& python -m pytest"
    )
    assert command in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci
    assert ci.index(command) < ci.index(".ci/package_smoke.sh")


_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the headless engine must not import it")
            return None

    sys.meta_path.insert(0, Block())
    import pkgutil, napari_virtual_st
    for module in pkgutil.walk_packages(napari_virtual_st.__path__, "napari_virtual_st."):
        if not module.name.startswith("napari_virtual_st._napari"):
            __import__(module.name)
    try:
        import napari
    except ImportError:
        pass
    else:
        raise SystemExit("napari imported")
    from napari_virtual_st.cli import main
    from napari_virtual_st.registry import sample_slide_path
    assert main(["models", "--json"]) == 0
    assert main(["runtime"]) == 0
    out = sys.argv[2]
    assert main(["predict", str(sample_slide_path()), "--out", out, "--quiet"]) == 0
    assert main(["check", out]) == 0
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    assert not loaded, loaded
    print("headless ok")
    """
)


def test_engine_and_cli_run_with_the_gui_stack_absent(tmp_path: Path) -> None:
    """Every core module imports, and the CLI lists models and predicts over the bundled
    slide, in a process where importing napari, Qt, vispy, magicgui, matplotlib or torch fails."""
    script = tmp_path / "headless.py"
    script.write_text(_BLOCKER, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), ",".join(GUI_STACK), str(tmp_path / "s.vst.zarr")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("headless ok")


@pytest.mark.parametrize("module", ["napari_virtual_st", "napari_virtual_st.cli"])
def test_importing_the_package_loads_no_gui_module(module: str) -> None:
    code = (
        f"import sys, {module}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(GUI_STACK)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=_env(),
    )
    assert result.stdout.strip() == "[]"
