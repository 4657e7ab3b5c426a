"""``run``: the one place a prediction run is assembled.

open the slide → load the model → measure the slide's statistics, for a model that
standardises its features per slide (or reuse the store's) → find tissue (a quick preview
first on large slides) → lay out the spots (or take the given ones) → refuse an empty grid →
predict into the store (resuming it; one writer at a time) → save the alignment with it.

The CLI, the cohort task, the Predict widget (through its prediction process) and the
Measured ST widget all call :func:`run` with a :class:`~.spec.RunSpec`; what happens
meanwhile is reported as :mod:`~.events` to the ``progress`` callback.
"""

from __future__ import annotations

import atexit
import collections
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st.errors import CancelledError, ParameterError, StoreError
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.pipeline import (
    Progress,
    ThreadPlan,
    build_grid,
    plan_threads,
    predict_slide,
    read_share_for,
    usable_cores,
)
from napari_virtual_st.precision import ModelChoice, choose_model
from napari_virtual_st.predictor import GPU_PROVIDERS, Predictor, resolve_providers
from napari_virtual_st.registry import resolve_model
from napari_virtual_st.run import priority
from napari_virtual_st.run.events import (
    BatchEvent,
    PreviewEvent,
    RunEvent,
    StageEvent,
    StoreReadyEvent,
)
from napari_virtual_st.run.spec import Region, RunSpec
from napari_virtual_st.slide import Slide
from napari_virtual_st.slide_statistics import SlideStatistics, sample_evenly
from napari_virtual_st.store import PredictionStore, is_prediction_store, store_location
from napari_virtual_st.store_view import StoreView
from napari_virtual_st.tissue import TissueMask, check_brightfield, detect_tissue

#: Full-resolution tissue masks (8 µm/px) with a longer side than this are slow enough
#: (seconds) to be preceded by a preview on a mask of at most this side.
PREVIEW_MASK_PX = 640
#: Spots in the preview (at most one batch): few, so that a slow model's first values come
#: soon (ResNet-18 on 2 CPU cores: 8 tiles 0.12 s, 32 tiles 0.6 s).
PREVIEW_SPOTS = 8
#: Resolution of the run's tissue mask (µm per mask pixel), as the engine's default.
FULL_MASK_UM_PER_PX = 8.0
#: A slide coarser than this many times the model's µm per pixel is refused.
MAX_UPSAMPLING = 8.0
#: Model sessions kept for later runs in this process (a cohort worker's slides, the
#: plugin's prediction process): loading one costs seconds.
KEPT_MODELS = 2

ProgressCallback = Callable[[RunEvent], None]


def run(
    spec: RunSpec,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PredictionStore:
    """Predict the spots of one slide into a store, as ``spec`` says.

    Parameters
    ----------
    spec
        What to predict, with what, where.
    progress
        Called with a :class:`~.events.StageEvent` at each slow step, a
        :class:`~.events.PreviewEvent` (when asked for), one
        :class:`~.events.StoreReadyEvent` and a :class:`~.events.BatchEvent` per batch.
    should_cancel
        Polled between steps and before every batch; ``True`` stops the run
        (:class:`~napari_virtual_st.errors.CancelledError`; finished batches are kept).

    Returns
    -------
    PredictionStore
        The finished store (opened for reading).

    Raises
    ------
    VirtualSTError
        With a message for the user: a slide, model, parameter or store problem, an empty
        grid, another writer, or cancelling.
    """
    cancelled = should_cancel or (lambda: False)
    model_threads: set[int] = set()
    emit: ProgressCallback = progress or (lambda event: None)
    if spec.yield_cpu:
        emit = priority.lowering_after_first_values(emit, model_threads)

    def stage(message: str) -> None:
        if cancelled():
            raise CancelledError("cancelled before prediction started; nothing was saved")
        emit(StageEvent(message))

    stage("opening the slide")
    with open_slide(spec) as slide:
        mpp = slide.mpp  # raises the clear message when the resolution is unknown
        if not spec.allow_non_brightfield:  # (on the thumbnail the first mask reads)
            check_brightfield(slide, _first_mask_um_per_px(spec, slide))
        stage("loading the model")
        predictor, started, _, plan = prepare_model(spec, stage)
        model_threads.update(started if spec.yield_cpu else ())
        check_resolution(mpp, predictor)
        # the slide's statistics where the model needs them, first: a preview needs them too
        predictor, measured = with_slide_statistics(spec, slide, predictor, stage, cancelled)
        grid = _spots(spec, slide, predictor, stage, emit, cancelled, measured)
        stage(f"predicting {len(grid):,} spots")

        def report(p: Progress) -> None:
            if p.chunk is None:  # the store exists now: its starting state
                view = None
                if spec.report_values:
                    view = StoreView.from_store(PredictionStore.open(spec.store_path))
                emit(StoreReadyEvent(p, tuple(predictor.providers), mpp, view))
            elif p.expression is not None:
                emit(BatchEvent(p, p.expression, p.variance))

        store = predict_slide(
            slide,
            predictor,
            grid,
            spec.store_path,
            batch_size=spec.batch_size,
            read_threads=plan.read_threads,
            progress=report,
            should_cancel=cancelled,
            overwrite=spec.overwrite,
            first_spots=visible_first(grid.xy_level0_px, spec.visible_xy_level0_px),
            read_thread_init=priority.lower_thread_priority if spec.yield_cpu else None,
        )
    if spec.transform is not None:  # `evaluate` and the Measured ST widget find it there
        store.save_transform(spec.transform)
    return PredictionStore.open(store.path)


def prepare_model(
    spec: RunSpec, stage: Callable[[str], None] | None = None
) -> tuple[Predictor, frozenset[int], ModelChoice, ThreadPlan]:
    """The run's model session at the asked precision, with its threads sized together
    with the tile readers (:func:`~napari_virtual_st.pipeline.plan_threads`; explicit
    ``spec.read_threads`` / ``spec.intra_op_threads`` win).

    Returns the predictor, the native ids of the threads its session started (see
    :func:`load_predictor`), the precision choice (file, precision, reason) and the plan.
    """
    path = resolve_model(spec.model_path)
    if spec.precision != "fp32" and stage is not None:
        stage(f"finding the {spec.precision} model")
    choice = choose_model(path, spec.precision)
    if spec.precision != "fp32" and stage is not None:
        stage(choice.reason)
    providers = resolve_providers(spec.providers)
    on_gpu = providers[0] in GPU_PROVIDERS
    tile_px = _tile_px(choice.path)
    plan = plan_threads(
        usable_cores(),
        on_gpu=on_gpu,
        read_share=read_share_for(tile_px),
    )
    plan = ThreadPlan(
        spec.read_threads or plan.read_threads, spec.intra_op_threads or plan.model_threads
    )
    predictor, started = load_predictor(
        choice.path, spec.providers, plan.model_threads, spin=not spec.yield_cpu
    )
    return predictor, started, choice, plan


def _tile_px(path: Path) -> int | None:
    """The model's tile side from its metadata, without a session (``None`` for a file
    that is not a contract model: the Predictor then refuses it with the reason)."""
    import onnx

    from napari_virtual_st.contract import read_metadata

    try:
        return int(read_metadata(onnx.load(str(path), load_external_data=False)).tile_px)
    except Exception:  # onnx raises protobuf's and its own errors for a broken file
        return None


def check_resolution(slide_mpp: float, predictor: Predictor) -> None:
    """Refuse a slide far coarser than the model reads: its tiles would be blown up
    ``MAX_UPSAMPLING``-fold or more, and the model would see detail the slide never had.

    Raises
    ------
    ParameterError
        Naming both resolutions.
    """
    info = predictor.info
    model_mpp = info.tile_um / info.tile_px
    if slide_mpp > MAX_UPSAMPLING * model_mpp:
        raise ParameterError(
            f"the slide has {slide_mpp:.3g} µm per pixel but the model {predictor.path.name} "
            f"reads {model_mpp:.3g} µm per pixel: each tile would be enlarged "
            f"{slide_mpp / model_mpp:.0f}×, inventing detail the slide does not have. Use a "
            "scan at a higher magnification, or a model made for coarser tiles (or check "
            "the slide's µm/px)"
        )


def open_slide(spec: RunSpec) -> Slide:
    """The run's slide, with ``spec.mpp``, else its own µm/px, else ``spec.fallback_mpp``."""
    slide = Slide(spec.slide_path, mpp=spec.mpp)
    if spec.mpp is None and spec.fallback_mpp is not None and slide.mpp_or_none is None:
        slide.close()
        slide = Slide(spec.slide_path, mpp=spec.fallback_mpp)
    return slide


_MODELS: collections.OrderedDict[tuple[object, ...], tuple[Predictor, frozenset[int]]] = (
    collections.OrderedDict()
)
_MODELS_LOCK = threading.Lock()


def release_kept_models() -> None:
    """Free the model sessions kept for later runs (each frees its ONNX Runtime threads).

    Called at interpreter exit (registered below), so that the sessions go while the
    interpreter is whole rather than in its module teardown, where ONNX Runtime's native
    thread pools and the objects they call back into are freed in no set order. A session a
    run is still using is freed when that run lets go of it.
    """
    with _MODELS_LOCK:
        _MODELS.clear()


atexit.register(release_kept_models)


def load_predictor(
    path: Path,
    providers: tuple[str, ...] | None = None,
    intra_op_threads: int | None = None,
    *,
    spin: bool = True,
) -> tuple[Predictor, frozenset[int]]:
    """The model's session, made once per process and kept for later runs.

    A changed file (modification time or size) is loaded again. Also returns the native ids
    of the threads ONNX Runtime started with the session (its CPU pool, for
    :func:`~.priority.lower_thread_priority`; found as the threads of this thread's OS name
    that appeared while it was made).
    """
    path = Path(path).resolve()
    stat = path.stat() if path.is_file() else None
    key = (
        str(path),
        None if stat is None else (stat.st_mtime_ns, stat.st_size),
        providers,
        intra_op_threads,
        spin,
    )
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        before = priority.python_thread_ids()
        predictor = Predictor(
            path,
            providers=None if providers is None else list(providers),
            intra_op_threads=intra_op_threads,
            spin=spin,
        )
        entry = (predictor, frozenset(priority.python_thread_ids() - before))
        _MODELS[key] = entry
        while len(_MODELS) > KEPT_MODELS:
            _MODELS.popitem(last=False)
        return entry


def _spots(
    spec: RunSpec,
    slide: Slide,
    predictor: Predictor,
    stage: Callable[[str], None],
    emit: ProgressCallback,
    cancelled: Callable[[], bool],
    known: TissueMask | None = None,
) -> SpotGrid:
    """The run's spots: the given ones, or the lattice on tissue; never none. ``known``: a
    tissue mask already made at the full mask's resolution (the slide statistics'), reused."""
    if spec.spots is not None:
        grid = spec.spots
        if len(grid) == 0:
            raise ParameterError("there are no spots to predict")
        return grid
    stage("finding tissue")
    tissue = None
    if spec.min_tissue_fraction > 0:
        if _previews(spec, slide):
            view = _preview(slide, predictor, spec, cancelled)
            if view is not None:
                emit(PreviewEvent(view))
            stage("finding tissue at full resolution")
        tissue = known or detect_tissue(slide, mask_um_per_px=FULL_MASK_UM_PER_PX)
    stage("laying out spots")
    grid = build_grid(
        slide,
        spec.grid_kind,
        tile_um=predictor.info.tile_um,
        min_tissue_fraction=spec.min_tissue_fraction,
        overlap_um=spec.overlap_um,
        tissue=tissue,
    )
    if len(grid) == 0:
        raise ParameterError(
            f"no {spec.grid_kind} spots have at least {spec.min_tissue_fraction:.0%} tissue "
            "under them; lower the minimum tissue fraction (--min-tissue; 0 keeps every spot)"
        )
    return grid


#: Tissue a spot of the statistics' lattice needs under it (the engine's default).
STATISTICS_MIN_TISSUE = 0.5


def with_slide_statistics(
    spec: RunSpec,
    slide: Slide,
    predictor: Predictor,
    stage: Callable[[str], None],
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[Predictor, TissueMask | None]:
    """The predictor fed the slide's statistics: those of the run's store when it resumes
    one, else measured on an even sample of the slide's own tissue lattice (the dense
    lattice of the model's tile over the tissue mask at :func:`statistics_mask_um_per_px`),
    whatever spots the run predicts (:mod:`napari_virtual_st.slide_statistics`). Also the
    mask, where it is the run's full one (to reuse), else ``None``. A model that takes no
    slide statistics is returned as it is.

    They come before the spots are laid out, on the coarse mask of a large slide, so that
    its preview can show values before the full mask is made.

    Raises
    ------
    ParameterError
        When the slide has no tissue to measure them on.
    CancelledError
        When ``cancelled()`` turns true between batches (nothing has been written yet).
    """
    declared = predictor.info.slide_statistics
    if declared is None:
        return predictor, None
    stored = _stored_statistics(spec, predictor)
    if stored is not None:
        return predictor.with_slide_statistics(stored), None
    stage(f"measuring the slide's statistics (up to {declared.spots} spots)")
    um_per_px = statistics_mask_um_per_px(slide)
    tissue = detect_tissue(slide, mask_um_per_px=um_per_px)
    info = predictor.info
    lattice = build_grid(
        slide,
        "dense",
        tile_um=info.tile_um,
        min_tissue_fraction=STATISTICS_MIN_TISSUE,
        tissue=tissue,
    )
    if len(lattice) < 2:
        raise ParameterError(
            f"{predictor.path.name} standardises its features over the slide's tissue, but "
            f"fewer than 2 tiles of {info.tile_um:g} µm have {STATISTICS_MIN_TISSUE:.0%} "
            "tissue under them on this slide; a model that does not standardise per slide "
            "can still predict it (virtual-st models says which do)"
        )
    chosen = lattice.subset(sample_evenly(len(lattice), declared.spots))
    parts = []
    for start in range(0, len(chosen), spec.batch_size):  # (a batch in memory at a time)
        if cancelled():
            raise CancelledError("cancelled before prediction started; nothing was saved")
        xy = chosen.xy_level0_px[start : start + spec.batch_size]
        tiles = np.stack([slide.read_tile((x, y), info.tile_px, info.tile_um) for x, y in xy])
        parts.append(predictor.slide_features(tiles))
    features = np.concatenate(parts)
    where = (
        f"{len(chosen)} of the {len(lattice)} tiles of {info.tile_um:g} µm on the slide's "
        f"tissue (≥ {STATISTICS_MIN_TISSUE:.0%}), evenly spread"
    )
    full = tissue if um_per_px == FULL_MASK_UM_PER_PX else None
    return predictor.with_slide_statistics(SlideStatistics.of(features, where)), full


def statistics_mask_um_per_px(slide: Slide) -> float:
    """The resolution of the tissue mask the slide statistics sample: the run's full mask
    on a small slide, the preview's coarse one (at most :data:`PREVIEW_MASK_PX` on its
    longer side) on a large one. One rule per slide, whatever the run predicts."""
    return _preview_mask_um_per_px(slide)


def _stored_statistics(spec: RunSpec, predictor: Predictor) -> SlideStatistics | None:
    """The statistics of the store the run resumes (same model), if it has any."""
    path = store_location(spec.store_path)
    if spec.overwrite or not is_prediction_store(path):
        return None
    try:
        store = PredictionStore.open(path)
    except Exception:  # unreadable: predict_slide says why, with the store's own message
        return None
    if store.model.sha256 != predictor.info.sha256:
        return None  # another model's store: predict_slide refuses it, naming both
    try:
        return store.slide_statistics
    except StoreError as exc:  # nothing is touched: the user chooses to start again
        raise StoreError(
            f"{path.name} cannot be resumed: {exc}; start it again (--overwrite, or "
            "'Replace earlier results' in the Predict panel) or choose another file"
        ) from None


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


def _previews(spec: RunSpec, slide: Slide) -> bool:
    """Whether the run predicts a preview before its full tissue mask."""
    return (
        spec.spots is None
        and spec.min_tissue_fraction > 0
        and spec.preview
        and _preview_pays(slide)
    )


def _preview_mask_um_per_px(slide: Slide) -> float:
    """The preview's coarse tissue mask resolution (µm per mask pixel)."""
    return max(FULL_MASK_UM_PER_PX, max(slide.dimensions) * slide.mpp / PREVIEW_MASK_PX)


def _first_mask_um_per_px(spec: RunSpec, slide: Slide) -> float:
    """The resolution of the first tissue mask a run makes: the preview's when there is
    one, so that the bright-field check reads the thumbnail the preview uses (on the large
    synthetic slide the full mask's 2560 px thumbnail took 1-2 s before the preview)."""
    return _preview_mask_um_per_px(slide) if _previews(spec, slide) else FULL_MASK_UM_PER_PX


def _preview_pays(slide: Slide) -> bool:
    """Whether the slide's full tissue mask is large (slow) enough to preview first."""
    mpp = slide.mpp_or_none
    longest = max(slide.dimensions)
    side = longest if mpp is None else longest * mpp / FULL_MASK_UM_PER_PX
    return side > PREVIEW_MASK_PX


def _preview(
    slide: Slide, predictor: Predictor, spec: RunSpec, cancelled: Callable[[], bool]
) -> StoreView | None:
    """A few spots predicted on a coarse tissue mask, nearest the visible middle.

    The spots lie on the run's own lattice and are predicted again by the run; nothing is
    written. The view is shaped like the run's store (same path, genes, model record).
    """
    coarse = detect_tissue(slide, mask_um_per_px=_preview_mask_um_per_px(slide))
    lattice = build_grid(
        slide, spec.grid_kind, tile_um=predictor.info.tile_um, min_tissue_fraction=0.0
    )
    chosen = _preview_spots(lattice, coarse, spec)
    if len(chosen) == 0 or cancelled():
        return None
    grid = lattice.subset(chosen)
    info = predictor.info
    tiles = np.stack(
        [slide.read_tile((x, y), info.tile_px, info.tile_um) for x, y in grid.xy_level0_px]
    )
    result = predictor.predict(tiles)
    return StoreView.of_grid(
        spec.store_path,
        grid,
        genes=info.genes,
        model={"file": predictor.path.name, "metadata": dict(info.metadata)},
        slide={"path": str(slide.path)},
        expression=np.asarray(result.expression, np.float32),
        variance=None if result.variance is None else np.asarray(result.variance, np.float32),
        preview=True,
    )


def _preview_spots(lattice: SpotGrid, coarse: TissueMask, spec: RunSpec) -> NDArray[np.intp]:
    """Up to ``PREVIEW_SPOTS`` (at most one batch of) lattice spots wholly on coarse
    tissue, nearest the middle of the view (those on screen when there are any)."""
    on_tissue = np.flatnonzero(lattice.tissue_fractions(coarse) >= 1.0)
    if len(on_tissue) == 0:
        return on_tissue
    xy = lattice.xy_level0_px[on_tissue]
    region = spec.visible_xy_level0_px
    order = visible_first(xy, region)
    if len(order) == 0 and region is not None:  # no tissue on screen: the nearest to it
        middle = np.array([(region[0] + region[2]) / 2, (region[1] + region[3]) / 2])
        order = np.argsort(np.hypot(*(xy - middle).T), kind="stable")
    return on_tissue[order[: min(spec.batch_size, PREVIEW_SPOTS)]]
