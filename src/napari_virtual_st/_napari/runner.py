"""A prediction run as a generator of events, for the Predict widget's worker thread.

:func:`run_prediction` does everything slow — opening the slide, loading the model, finding
tissue, laying out the grid, predicting — and yields an event at each stage and after every
batch. The widget runs it in a ``napari.qt.threading`` worker, whose ``yielded`` signal brings
each event to the GUI thread; nothing here touches Qt or napari.

The engine's :func:`~napari_virtual_st.pipeline.predict_slide` reports through callbacks, so
it runs on a helper thread whose callbacks put events on a queue that the generator drains.
Cancelling (setting the ``cancel`` event, or closing the generator) stops the run at the next
batch boundary; finished batches stay in the store and a later run resumes them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st._napari.store_view import StoreView
from napari_virtual_st.errors import CancelledError, VirtualSTError
from napari_virtual_st.pipeline import GridChoice, Progress, build_grid, predict_slide
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.tissue import detect_tissue


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs.

    Attributes
    ----------
    slide_path, model_path, store_path
        The slide, the ONNX model and the ``.vst.zarr`` store to write (or resume).
    grid_kind
        ``"visium"``, ``"st"`` or ``"dense"``.
    min_tissue_fraction
        Spots with less tissue under them are skipped.
    mpp
        µm per level-0 pixel, overriding the slide's own value (required when it has none).
    providers
        Execution providers (``None``: the best available).
    batch_size, read_threads
        Tiles per model call (one store chunk), and tile-reading threads.
    overwrite
        Replace an existing store instead of resuming it.
    """

    slide_path: Path
    model_path: Path
    store_path: Path
    grid_kind: GridChoice = "visium"
    min_tissue_fraction: float = 0.5
    mpp: float | None = None
    providers: tuple[str, ...] | None = None
    batch_size: int = 32
    read_threads: int = 2
    overwrite: bool = False


@dataclass(frozen=True)
class StageEvent:
    """A slow step has started (``message`` says which)."""

    message: str


@dataclass(frozen=True)
class StoreReadyEvent:
    """The store exists and prediction is about to start (or was already complete).

    Attributes
    ----------
    view
        The store's contents at the start (values of a resumed run included).
    progress
        The engine's first report: spots already done and in all.
    providers
        Execution providers the model runs on.
    mpp
        µm per level-0 pixel the run uses.
    """

    view: StoreView
    progress: Progress
    providers: tuple[str, ...]
    mpp: float


@dataclass(frozen=True)
class BatchEvent:
    """One batch is predicted and saved; its values for every gene."""

    progress: Progress
    expression: NDArray[np.float32]
    variance: NDArray[np.float32] | None


RunEvent = StageEvent | StoreReadyEvent | BatchEvent


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: the finished store, or the engine's error (cancelling included).

    Attributes
    ----------
    store_path
        The finished store, or ``None`` when the run did not finish.
    error
        The error whose message the user should see (``None`` on success).
    """

    store_path: Path | None
    error: VirtualSTError | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the user cancelled the run."""
        return isinstance(self.error, CancelledError)


@dataclass(frozen=True)
class _Finished:
    store_path: Path


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def run_prediction(
    request: RunRequest, cancel: threading.Event | None = None
) -> Generator[RunEvent, None, Path]:
    """Run one prediction, yielding an event per stage and per batch.

    Parameters
    ----------
    request
        What to predict, with what, where.
    cancel
        Set it to stop the run at the next batch boundary (the generator then raises
        :class:`~napari_virtual_st.errors.CancelledError` with the engine's message).

    Yields
    ------
    StageEvent, StoreReadyEvent, BatchEvent

    Returns
    -------
    pathlib.Path
        The finished store (the generator's return value).

    Raises
    ------
    VirtualSTError
        Whatever the engine raised, with its message for the user.
    """
    cancel = threading.Event() if cancel is None else cancel
    events: queue.SimpleQueue[RunEvent | _Finished | _Failed] = queue.SimpleQueue()
    helper = threading.Thread(
        target=_work, args=(request, cancel, events.put), name="vst-predict", daemon=True
    )
    helper.start()
    try:
        while True:
            item = events.get()
            if isinstance(item, _Finished):
                return item.store_path
            if isinstance(item, _Failed):
                raise item.error
            yield item
    except GeneratorExit:
        cancel.set()  # closed early (worker quit, viewer closed): stop at the next batch
        raise
    finally:
        helper.join()


def run_prediction_outcome(
    request: RunRequest, cancel: threading.Event | None = None
) -> Generator[RunEvent, None, RunOutcome]:
    """:func:`run_prediction`, returning the engine's errors as a :class:`RunOutcome`.

    Errors the engine raises on purpose (missing resolution, bad model, cancelled...) carry a
    message for the user and end here; anything else is a bug and propagates.
    """
    try:
        store_path = yield from run_prediction(request, cancel)
    except VirtualSTError as exc:
        return RunOutcome(None, exc)
    return RunOutcome(store_path)


def _work(
    request: RunRequest,
    cancel: threading.Event,
    emit: Callable[[RunEvent | _Finished | _Failed], None],
) -> None:
    """The run itself, on the helper thread; every outcome ends with one final item."""
    try:
        emit(_Finished(_predict(request, cancel, emit)))
    except BaseException as exc:  # handed to the generator, which re-raises it
        emit(_Failed(exc))


def _predict(
    request: RunRequest, cancel: threading.Event, emit: Callable[[RunEvent], None]
) -> Path:
    def stage(message: str) -> None:
        if cancel.is_set():
            raise CancelledError("cancelled before prediction started; nothing was saved")
        emit(StageEvent(message))

    stage("opening the slide")
    with Slide(request.slide_path, mpp=request.mpp) as slide:
        mpp = slide.mpp  # raises the clear message when the resolution is unknown
        stage("loading the model")
        predictor = Predictor(
            request.model_path,
            providers=None if request.providers is None else list(request.providers),
        )
        stage("finding tissue")
        tissue = detect_tissue(slide) if request.min_tissue_fraction > 0 else None
        stage("laying out spots")
        grid = build_grid(
            slide,
            request.grid_kind,
            tile_um=predictor.info.tile_um,
            min_tissue_fraction=request.min_tissue_fraction,
            tissue=tissue,
        )
        stage(f"predicting {len(grid):,} spots")
        reader: list[PredictionStore] = []

        def progress(p: Progress) -> None:
            if p.chunk is None:  # the store exists now: send its starting state
                store = PredictionStore.open(request.store_path)
                reader.append(store)
                view = StoreView.from_store(store)
                emit(StoreReadyEvent(view, p, tuple(predictor.providers), mpp))
                return
            store = reader[0]
            variance = store.variance(spots=p.spots) if store.has_variance else None
            emit(BatchEvent(p, store.expression(spots=p.spots), variance))

        predict_slide(
            slide,
            predictor,
            grid,
            request.store_path,
            batch_size=request.batch_size,
            read_threads=request.read_threads,
            progress=progress,
            should_cancel=cancel.is_set,
            overwrite=request.overwrite,
        )
    return request.store_path
