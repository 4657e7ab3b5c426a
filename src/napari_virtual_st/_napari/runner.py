"""A prediction run as a generator of events, for the Predict widget's worker thread.

:func:`run_prediction` does everything slow — opening the slide, loading the model, finding
tissue, laying out the grid, predicting — and yields an event at each stage and after every
batch. The widget runs it in a ``napari.qt.threading`` worker, whose ``yielded`` signal brings
each event to the GUI thread; nothing here touches Qt or napari.

On a large slide, finding tissue at full resolution takes seconds. So that values appear at
once, the run first finds tissue on a small thumbnail and predicts a few spots there,
nearest the middle of the region on screen (a :class:`PreviewEvent`); then it finds tissue
properly, lays out the grid from that full mask (the grid is exactly the one without a
preview) and predicts it, the spots on screen first.

The engine's :func:`~napari_virtual_st.pipeline.predict_slide` reports through callbacks, so
it runs on a helper thread whose callbacks put events on a queue that the generator drains.
Cancelling (setting the ``cancel`` event, or closing the generator) stops the run at the next
batch boundary; finished batches stay in the store and a later run resumes them.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st._napari.store_view import StoreView
from napari_virtual_st.errors import CancelledError, VirtualSTError
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.pipeline import GridChoice, Progress, build_grid, predict_slide
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.tissue import TissueMask, detect_tissue

#: Full-resolution tissue masks (8 µm/px) with a longer side than this are slow enough
#: (seconds) to be preceded by a preview on a mask of at most this side.
PREVIEW_MASK_PX = 640
#: Spots in the preview (at most one batch): few, so that a slow model's first values come
#: soon (ResNet-18 on 2 CPU cores: 8 tiles 0.12 s, 32 tiles 0.6 s).
PREVIEW_SPOTS = 8
#: Resolution of the run's tissue mask (µm per mask pixel), as the engine's default.
FULL_MASK_UM_PER_PX = 8.0

#: (x0, y0, x1, y1) level-0 pixels.
Region = tuple[float, float, float, float]


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
    visible_xy_level0_px
        The region of the slide on screen, (x0, y0, x1, y1) level-0 pixels: its spots are
        predicted first, from its middle out (``None``: from the middle of the slide).
    preview
        On slides whose tissue takes long to find, predict a few spots on a quick coarse
        tissue mask first (:class:`PreviewEvent`).
    yield_cpu
        Leave the CPU to the GUI thread first: the threads that read tiles run at a lower
        scheduling priority (Linux), and so do ONNX Runtime's pool and the run's own
        thread once the first values are out (until then they race to them); ONNX
        Runtime does not busy-wait between operators. On a machine with few cores the
        viewer stays fluid while the run takes the CPU time the GUI does not need.
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
    visible_xy_level0_px: Region | None = None
    preview: bool = True
    yield_cpu: bool = True


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


@dataclass(frozen=True)
class PreviewEvent:
    """Values of a first batch of spots, predicted before the run's grid is known.

    Its spots lie on the run's lattice where a quick coarse tissue mask finds tissue, near
    the middle of the view; the run predicts them again in its own batches (on screen,
    those come first).

    Attributes
    ----------
    view
        The preview spots and their values, as a view of the run's store (same path).
    """

    view: StoreView


RunEvent = StageEvent | PreviewEvent | StoreReadyEvent | BatchEvent


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
    StageEvent, PreviewEvent, StoreReadyEvent, BatchEvent

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
    request: RunRequest,
    cancel: threading.Event | None = None,
    run: Callable[
        [RunRequest, threading.Event | None], Generator[RunEvent, None, Path]
    ] = run_prediction,
) -> Generator[RunEvent, None, RunOutcome]:
    """:func:`run_prediction` (or another ``run`` with its signature, e.g.
    :func:`.run_process.run_prediction_in_process`), returning the engine's errors as a
    :class:`RunOutcome`.

    Errors the engine raises on purpose (missing resolution, bad model, cancelled...) carry a
    message for the user and end here; anything else is a bug and propagates.
    """
    try:
        store_path = yield from run(request, cancel)
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
    model_threads: set[int] = set()
    if request.yield_cpu:
        emit = _lowering_after_first_values(emit, model_threads)

    def stage(message: str) -> None:
        if cancel.is_set():
            raise CancelledError("cancelled before prediction started; nothing was saved")
        emit(StageEvent(message))

    stage("opening the slide")
    with Slide(request.slide_path, mpp=request.mpp) as slide:
        mpp = slide.mpp  # raises the clear message when the resolution is unknown
        stage("loading the model")
        predictor, started = _load_predictor(request)
        model_threads.update(started)
        stage("finding tissue")
        tissue = None
        if request.min_tissue_fraction > 0:
            if request.preview and _preview_pays(slide):
                view = _preview(slide, predictor, request, cancel)
                if view is not None:
                    emit(PreviewEvent(view))
                stage("finding tissue at full resolution")
            tissue = detect_tissue(slide, mask_um_per_px=FULL_MASK_UM_PER_PX)
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
            first_spots=visible_first(grid.xy_level0_px, request.visible_xy_level0_px),
            read_thread_init=lower_thread_priority if request.yield_cpu else None,
        )
    return request.store_path


#: Niceness the run's threads take (0 normal, 19 lowest): they get CPU time only when the
#: GUI thread and the display (normal priority) do not need it.
RUN_NICENESS = 10


def lower_thread_priority(niceness: int = RUN_NICENESS, thread_id: int | None = None) -> bool:
    """Lower a thread's scheduling priority to ``niceness`` (threads it starts afterwards
    inherit it). Linux only, where each thread has its own niceness; elsewhere (and where
    it is not allowed) nothing changes.

    Parameters
    ----------
    niceness
        0 normal, 19 lowest; a thread already lower stays as it is.
    thread_id
        The thread's native id (``threading.get_native_id()``); the calling thread's by
        default.

    Returns
    -------
    bool
        Whether the priority is now at most that.
    """
    if not sys.platform.startswith("linux"):
        return False  # (macOS's setpriority would apply to the whole process)
    tid = threading.get_native_id() if thread_id is None else thread_id
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except OSError:
        return False
    return True


def _python_thread_ids() -> set[int]:
    """Native ids of this process's threads with the calling thread's OS name (a thread
    takes its creator's, while Qt, Mesa and other libraries name theirs); empty where /proc
    does not list them."""
    try:
        own = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
        found = set()
        for task in Path("/proc/self/task").iterdir():
            try:
                if (task / "comm").read_text() == own:
                    found.add(int(task.name))
            except OSError:  # (a thread that ended meanwhile)
                continue
        return found
    except OSError:
        return set()


def _load_predictor(request: RunRequest) -> tuple[Predictor, set[int]]:
    """The run's model, and the native ids of the threads ONNX Runtime started with it (its
    CPU pool, to be lowered with :func:`lower_thread_priority` once the first values are
    out; found as the threads of this thread's OS name that appeared while the session was
    made, so a plain Python thread another part of the program starts at that moment may
    be among them)."""
    providers = None if request.providers is None else list(request.providers)
    if not request.yield_cpu:
        return Predictor(request.model_path, providers=providers), set()
    before = _python_thread_ids()
    predictor = Predictor(request.model_path, providers=providers, spin=False)
    return predictor, _python_thread_ids() - before


def _lowering_after_first_values(
    emit: Callable[[RunEvent], None], thread_ids: set[int]
) -> Callable[[RunEvent], None]:
    """``emit``, lowering the priority of the calling thread and of the threads in
    ``thread_ids`` (as the set is then: it is filled once the model is loaded) once it has
    sent the first predicted values (a preview or a batch): the run races to its first
    values, then leaves the CPU to the GUI."""
    lowered = [False]

    def emitting(event: RunEvent) -> None:
        emit(event)
        if not lowered[0] and isinstance(event, PreviewEvent | BatchEvent):
            lowered[0] = True
            for tid in {threading.get_native_id(), *thread_ids}:
                lower_thread_priority(thread_id=tid)

    return emitting


def visible_first(xy_level0_px: NDArray[np.float64], region: Region | None) -> NDArray[np.intp]:
    """Indices of the spots inside ``region`` (x0, y0, x1, y1 level-0 px), nearest its middle
    first; with no region, every spot, nearest the middle of their extent first."""
    xy = np.asarray(xy_level0_px, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0, np.intp)
    if region is None:
        inside = np.ones(len(xy), bool)
        middle = (xy.min(axis=0) + xy.max(axis=0)) / 2
    else:
        x0, y0, x1, y1 = region
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        middle = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    index = np.flatnonzero(inside)
    distance = np.hypot(*(xy[index] - middle).T)
    return index[np.argsort(distance, kind="stable")]


def _preview_pays(slide: Slide) -> bool:
    """Whether the slide's full tissue mask is large (slow) enough to preview first."""
    mpp = slide.mpp_or_none
    longest = max(slide.dimensions)
    side = longest if mpp is None else longest * mpp / FULL_MASK_UM_PER_PX
    return side > PREVIEW_MASK_PX


def _preview(
    slide: Slide, predictor: Predictor, request: RunRequest, cancel: threading.Event
) -> StoreView | None:
    """A few spots predicted on a coarse tissue mask, nearest the visible middle."""
    longest_um = max(slide.dimensions) * slide.mpp
    coarse = detect_tissue(
        slide, mask_um_per_px=max(FULL_MASK_UM_PER_PX, longest_um / PREVIEW_MASK_PX)
    )
    lattice = build_grid(
        slide, request.grid_kind, tile_um=predictor.info.tile_um, min_tissue_fraction=0.0
    )
    chosen = _preview_spots(lattice, coarse, request)
    if len(chosen) == 0 or cancel.is_set():
        return None
    grid = lattice.subset(chosen)
    info = predictor.info
    tiles = np.stack(
        [slide.read_tile((x, y), info.tile_px, info.tile_um) for x, y in grid.xy_level0_px]
    )
    result = predictor.predict(tiles)
    attrs = {
        "genes": list(info.genes),
        "grid": grid.describe(),
        "slide": {"path": str(slide.path)},
        "model": {"file": predictor.path.name, "metadata": dict(info.metadata)},
        "preview": True,
    }
    return StoreView(
        request.store_path,
        attrs,
        grid.xy_level0_px,
        grid.lattice_rc,
        [f"{r}_{c}" for r, c in grid.lattice_rc],
        np.asarray(result.expression, np.float32),
        None if result.variance is None else np.asarray(result.variance, np.float32),
    )


def _preview_spots(lattice: SpotGrid, coarse: TissueMask, request: RunRequest) -> NDArray[np.intp]:
    """Up to ``PREVIEW_SPOTS`` (at most one batch of) lattice spots wholly on coarse
    tissue, nearest the middle of the view (those on screen when there are any)."""
    on_tissue = np.flatnonzero(lattice.tissue_fractions(coarse) >= 1.0)
    if len(on_tissue) == 0:
        return on_tissue
    xy = lattice.xy_level0_px[on_tissue]
    order = visible_first(xy, request.visible_xy_level0_px)
    region = request.visible_xy_level0_px
    if len(order) == 0 and region is not None:  # no tissue on screen: the nearest to it
        middle = np.array([(region[0] + region[2]) / 2, (region[1] + region[3]) / 2])
        order = np.argsort(np.hypot(*(xy - middle).T), kind="stable")
    return on_tissue[order[: min(request.batch_size, PREVIEW_SPOTS)]]
