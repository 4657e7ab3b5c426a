"""The check every shipped model's tests share: the file's recorded held-out metrics
(``vst.metrics``) are what ``models/evaluate.py`` measures from the file now."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_file_reproduces_its_recorded_metrics(path: Path) -> None:
    """Re-measure ``path`` on A1 and compare every recorded score (within 1e-3); a model
    declaring spot context is checked on its contextual and its per-tile scores. Skips where
    ``../shared/data`` is absent."""
    from models.evaluate import evaluate_onnx
    from models.workshop.data import HER2ST
    from napari_virtual_st.predictor import Predictor

    if not HER2ST.is_dir():
        pytest.skip(f"HER2ST data not found at {HER2ST} (../shared/data)")
    recorded = Predictor(path, providers=["cpu"]).info.metadata["metrics"]
    measured = evaluate_onnx(path)
    for labels in ("raw", "smoothed_3x3"):
        for key, value in recorded[labels].items():
            assert measured[labels][key] == pytest.approx(value, abs=1e-3), (labels, key)
    if "per_tile" in recorded:  # a model declaring spot context: its per-tile scores too
        for key, value in recorded["per_tile"]["raw"].items():
            assert measured["per_tile"]["raw"][key] == pytest.approx(value, abs=1e-3), key
