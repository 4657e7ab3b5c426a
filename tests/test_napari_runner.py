"""The Predict widget's run as a generator of events (no viewer, no Qt)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_virtual_st._napari.runner import (
    BatchEvent,
    RunRequest,
    StageEvent,
    StoreReadyEvent,
    run_prediction,
    run_prediction_outcome,
)
from napari_virtual_st._napari.store_view import StoreView
from napari_virtual_st.errors import CancelledError, MissingResolutionError
from napari_virtual_st.store import PredictionStore


def _drain(gen):
    """All events of a run and its return value."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _request(slide: Path, model: Path, tmp_path: Path, **kwargs) -> RunRequest:
    return RunRequest(
        slide_path=slide,
        model_path=model,
        store_path=tmp_path / "run.vst.zarr",
        batch_size=kwargs.pop("batch_size", 8),
        **kwargs,
    )


def test_events_carry_every_batch_the_store_holds(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    request = _request(cmu_small_svs, synthetic_model, tmp_path)
    events, store_path = _drain(run_prediction(request))
    assert store_path == request.store_path
    stages = [e.message for e in events if isinstance(e, StageEvent)]
    assert stages[:4] == [
        "opening the slide",
        "loading the model",
        "finding tissue",
        "laying out spots",
    ]
    ready = [e for e in events if isinstance(e, StoreReadyEvent)]
    assert len(ready) == 1 and ready[0].providers[-1] == "CPUExecutionProvider"
    view = ready[0].view
    assert view.spots_done == 0 and np.isnan(view.expression).all()
    batches = [e for e in events if isinstance(e, BatchEvent)]
    assert sum(b.progress.spots.stop - b.progress.spots.start for b in batches) == view.n_spots
    for b in batches:  # replaying the events rebuilds the store's contents
        view.update(b.progress.spots, b.expression, b.variance)
    store = PredictionStore.open(store_path)
    np.testing.assert_array_equal(view.expression, store.expression())
    assert store.is_complete


def test_cancel_stops_at_a_batch_boundary_and_a_rerun_resumes(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    request = _request(cmu_small_svs, synthetic_model, tmp_path, batch_size=4)
    cancel = threading.Event()
    gen = run_prediction_outcome(request, cancel)
    batches = 0
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            outcome = stop.value
            break
        if isinstance(event, BatchEvent):
            batches += 1
            if batches == 2:
                cancel.set()
    assert outcome.cancelled and outcome.store_path is None
    assert "run again to resume" in str(outcome.error)
    store = PredictionStore.open(request.store_path)
    done = int(store.done.sum())
    assert 0 < done < store.n_spots and store.attrs["status"] == "cancelled"
    # the rerun starts from what was saved and predicts only the rest
    events, _ = _drain(run_prediction(request))
    ready = next(e for e in events if isinstance(e, StoreReadyEvent))
    assert ready.progress.spots_done == done == ready.view.spots_done
    assert PredictionStore.open(request.store_path).is_complete


def test_closing_the_generator_stops_the_run(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    request = _request(cmu_small_svs, synthetic_model, tmp_path, batch_size=2)
    gen = run_prediction(request)
    while not isinstance(next(gen), BatchEvent):
        pass
    gen.close()  # as when the viewer closes mid-run: the helper thread ends too
    assert not [t for t in threading.enumerate() if t.name == "vst-predict"]
    assert not PredictionStore.open(request.store_path).is_complete


def test_engine_errors_become_an_outcome_with_their_message(
    synthetic_model: Path, tmp_path: Path
) -> None:
    png = tmp_path / "no_resolution.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(png)
    outcome = _drain(run_prediction_outcome(_request(png, synthetic_model, tmp_path)))[1]
    assert isinstance(outcome.error, MissingResolutionError)
    assert "does not record its resolution" in str(outcome.error)
    with pytest.raises(CancelledError, match="before prediction started"):
        cancel = threading.Event()
        cancel.set()
        _drain(run_prediction(_request(png, synthetic_model, tmp_path, mpp=0.5), cancel))


def test_store_view_reads_a_store(cmu_small_svs: Path, tmp_path: Path) -> None:
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "var.onnx", with_variance=True)
    request = _request(cmu_small_svs, model, tmp_path, grid_kind="st", min_tissue_fraction=0.0)
    _, path = _drain(run_prediction(request))
    view = StoreView.open(path)
    store = PredictionStore.open(path)
    assert view.kind == "st" and view.has_variance and view.n_spots == store.n_spots
    np.testing.assert_allclose(view.sd("SYNTH1") ** 2, store.variance(["SYNTH1"])[:, 0], rtol=1e-6)
    table = view.features()
    assert list(table.columns) == ["spot", *view.genes] and len(table) == view.n_spots
    assert view.spot_at(view.yx_um[3]) == 3
    assert view.most_variable_gene() in view.genes
