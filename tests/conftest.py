"""Shared fixtures: paths to the real public data in ../shared/data, and synthetic models."""

from __future__ import annotations

import faulthandler
import gc
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tear down, in order, what the tests leave for the interpreter's exit.

    While the QApplication and the virtual screen are still there: close every napari
    window still open, let napari's worker threads finish, and run Qt's pending deletions;
    then free the model sessions the engine keeps (its exit handler does that for users'
    scripts too) and collect cycles. The interpreter then exits normally: nothing native
    (Qt widgets, GL contexts, ONNX Runtime's thread pools) is left to its module teardown.
    ``test_napari_exit.py`` and ``test_run.py`` check a user's script's exit the same way.
    """
    if "napari._qt" in sys.modules:  # napari windows were made (Qt is there)
        _close_napari()
    if "napari_virtual_st.run.engine" in sys.modules:
        from napari_virtual_st.run.engine import release_kept_models

        release_kept_models()
    gc.collect()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Keep faulthandler on through the interpreter's exit (pytest turns it off here), so a
    crash there, were one to come back, prints every thread's Python stack in the log."""
    faulthandler.enable(file=sys.__stderr__, all_threads=True)


def _close_napari() -> None:
    import napari
    from qtpy.QtCore import QCoreApplication, QEvent, QThreadPool
    from qtpy.QtWidgets import QApplication

    napari.Viewer.close_all()
    app = QApplication.instance()
    if app is None:
        return
    QThreadPool.globalInstance().waitForDone(30_000)
    for _ in range(3):
        app.processEvents()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


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
