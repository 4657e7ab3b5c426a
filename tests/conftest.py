"""Shared fixtures: paths to the real public data in ../shared/data, and synthetic models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))

_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status once every plugin has finished (Xvfb stopped).

    After a full run, the interpreter's own teardown (Qt/vispy objects of the napari tests
    collected after their QApplication, and native thread pools of ONNX Runtime/torch) has
    been seen to crash (SIGSEGV) after all tests passed and the summary was printed, which
    would turn a green run red. Every result is reported by then, so skip that teardown.
    What users meet (one viewer, a run, the viewer closed, a normal exit) is checked without
    this shortcut by ``test_napari_exit.py``.
    """
    if _EXIT_STATUS and os.environ.get("VST_PYTEST_NORMAL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


SHARED_DATA = TESTS_DIR.parent.parent / "shared" / "data"
WSI_DIR = SHARED_DATA / "wsi"


def _real_file(name: str) -> Path:
    path = WSI_DIR / name
    if not path.exists():
        pytest.skip(
            f"real slide {name} not available: ../shared/data/wsi is absent beside the checkout"
        )
    return path


@pytest.fixture
def cmu_small_svs() -> Path:
    """Real Aperio SVS, 2220×2967 px, one level, 0.499 µm/px (OpenSlide test data)."""
    return _real_file("CMU-1-Small-Region.svs")


@pytest.fixture
def tiny_svs() -> Path:
    """Real Aperio SVS, 16×16 px crop of CMU-1."""
    return _real_file("openslide-python_small.svs")


@pytest.fixture
def ndpi_dapi() -> Path:
    """Real Hamamatsu NDPI (fluorescence, DAPI), 3968×4864 px, 7 levels, 0.228 µm/px."""
    return _real_file("hamamatsu_test3-DAPI-2-387.ndpi")


@pytest.fixture
def synthetic_model(tmp_path: Path) -> Path:
    """A synthetic contract model (mean colour → 5 genes, 32 px tiles of 55 µm)."""
    from synthetic_models import write_mean_colour_model

    return write_mean_colour_model(tmp_path / "synthetic_mean_colour.onnx")
