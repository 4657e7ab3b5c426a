"""A prediction run in a process of its own gives what a run in this process gives."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.errors import CancelledError, ModelError
from napari_virtual_st.run import (
    BatchEvent,
    StoreReadyEvent,
    run_events,
    run_outcome,
)
from napari_virtual_st.run import process as run_process
from napari_virtual_st.run.process import RunProcess, RunProcessError
from napari_virtual_st.store import PredictionStore
from runs import drain as _drain
from runs import run_request as _request


def test_a_run_in_its_own_process_writes_the_store_a_run_here_writes(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    here, _ = _drain(run_events(_request(cmu_small_svs, synthetic_model, tmp_path / "a")))
    request = _request(cmu_small_svs, synthetic_model, tmp_path / "b.vst.zarr")
    events, path = _drain(run_process.run_events_in_process(request))
    assert path == request.store_path
    assert [type(e) for e in events] == [type(e) for e in here]
    assert isinstance(events[[type(e) for e in events].index(StoreReadyEvent)], StoreReadyEvent)
    a, b = PredictionStore.open(tmp_path / "a"), PredictionStore.open(path)
    np.testing.assert_allclose(b.expression(), a.expression(), rtol=1e-6)
    batches = [e for e in events if isinstance(e, BatchEvent)]
    assert sum(len(e.expression) for e in batches) == b.n_spots
    assert run_process._SPARES and run_process._SPARES[-1].alive  # kept for the next run


def _on_each_batch(events: Iterator[object], action: Callable[[], object]) -> None:
    """Drain ``events``, calling ``action`` at each finished batch."""
    for event in events:
        if isinstance(event, BatchEvent):
            action()


def test_cancel_and_engine_errors_come_back_with_their_messages(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    cancel = threading.Event()
    gen = run_process.run_events_in_process(
        _request(cmu_small_svs, synthetic_model, tmp_path / "c.vst.zarr", batch_size=2), cancel
    )
    with pytest.raises(CancelledError):
        _on_each_batch(gen, cancel.set)
    assert PredictionStore.open(tmp_path / "c.vst.zarr").done.sum() > 0  # batches kept
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    _, outcome = _drain(
        run_outcome(
            _request(cmu_small_svs, broken, tmp_path / "d.vst.zarr"),
            None,
            run_process.run_events_in_process,
        )
    )
    assert isinstance(outcome.error, ModelError) and "broken.onnx" in str(outcome.error)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_process_that_dies_mid_run_ends_the_run_with_a_clear_error(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    process = RunProcess()
    gen = process.run(
        _request(cmu_small_svs, synthetic_model, tmp_path / "e.vst.zarr", batch_size=2)
    )
    with pytest.raises(RunProcessError, match=r"ended unexpectedly.*resumes"):
        _on_each_batch(gen, lambda: os.kill(process.pid, signal.SIGKILL))
    assert not process.alive


@pytest.mark.parametrize(
    "interpreter",
    ["/nonexistent/python", "false"],
    ids=["cannot-start", "ends-before-connecting"],
)
def test_where_no_prediction_process_starts_the_run_happens_here_with_a_warning(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, monkeypatch, interpreter: str
) -> None:
    import shutil
    import sys

    monkeypatch.setattr(run_process, "_SPARES", [])  # (no spare from an earlier test)
    monkeypatch.setattr(sys, "executable", shutil.which(interpreter) or interpreter)
    request = _request(cmu_small_svs, synthetic_model, tmp_path / "here.vst.zarr")
    with pytest.warns(RuntimeWarning, match="in napari's own process"):
        events, path = _drain(run_process.run_events_in_process(request))
    store = PredictionStore.open(path)
    assert store.is_complete
    assert sum(len(e.expression) for e in events if isinstance(e, BatchEvent)) == store.n_spots
