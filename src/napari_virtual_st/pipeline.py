"""``predict_slide``: a slide, a grid and a model in; a finished prediction store out.

Tiles are read by a small thread pool (OpenSlide, tifffile and Pillow release the GIL)
while ONNX Runtime computes the previous batch; at most ``prefetch`` batches are read ahead
of the one the model is working on, so at most ``prefetch + 1`` batches of tiles are in
memory at once, whatever the slide size. Each batch is one store chunk: it is written,
then marked done, so a cancelled, crashed or killed run resumes where it stopped and ends
bit-identical to an uninterrupted one.

It is the engine's inner loop: :func:`napari_virtual_st.run.run` assembles a whole run (the
slide, the model, tissue, the grid from :func:`build_grid`, the empty-grid check) from a
``RunSpec`` and calls it; call it directly only with a slide, predictor and grid of your own.
:func:`plan_threads` sizes the readers and the model's threads together.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st.errors import (
    CancelledError,
    ModelError,
    ParameterError,
    StoreMismatchError,
    VirtualSTError,
)
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.predictor import Prediction, Predictor
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore, store_location
from napari_virtual_st.store_health import check_store
from napari_virtual_st.tissue import TissueMask, detect_tissue
from napari_virtual_st.writer_lock import writer_lock

GridChoice = Literal["visium", "st", "dense"]

#: Share of the CPU time per tile that reading takes beside a CPU model, for sizing the
#: reader pool: a ResNet-18-sized model costs ~50 CPU-ms per 224 px tile, reading and
#: decoding one JPEG-tiled tile ~1–3 ms (benchmarks/README.md).
READ_SHARE_CPU = 0.05
#: Readers that feed a GPU: decoding is then the limit, so most cores read.
MAX_GPU_READERS = 16


def read_share_for(tile_px: int | None) -> float:
    """The share of a tile's CPU time reading takes, guessed from the model's tile side: a
    model of tiles up to 32 px (NSL, Stem: a few CPU-ms per tile) costs about what reading
    and resizing its 110 µm tile costs; a larger one (a CNN at 224 px) is ~20× dearer."""
    return 0.5 if tile_px is not None and tile_px <= 32 else READ_SHARE_CPU


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads read tiles and how many the model's CPU pool gets."""

    read_threads: int
    model_threads: int


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. under ``taskset``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def plan_threads(
    cores: int, *, on_gpu: bool = False, read_share: float = READ_SHARE_CPU
) -> ThreadPlan:
    """Size the reader pool and the model's thread pool together, for ``cores`` cores.

    On the CPU the model needs nearly all the time: one reader per ``1 / read_share``
    cores (at least one), and the model gets the rest; but where that would leave the model
    fewer than 3 threads (1–3 cores) it gets every core, since a reader that needs a few
    percent of one core would otherwise idle a whole one (it takes its small share beside
    the model's threads). On a GPU the CPU's work is reading: every core but one reads (at
    most :data:`MAX_GPU_READERS`) and the model keeps one CPU thread for the operators the
    GPU provider leaves to the CPU.

    Parameters
    ----------
    cores
        Cores available (:func:`usable_cores`).
    on_gpu
        Whether the model runs on a GPU execution provider.
    read_share
        Share of a tile's CPU time that reading takes (0–1).
    """
    cores = max(1, int(cores))
    if on_gpu:
        return ThreadPlan(max(1, min(cores - 1, MAX_GPU_READERS)), 1)
    share = min(max(read_share, 0.0), 1.0)
    readers = max(1, math.ceil(cores * share))
    model = cores - readers
    return ThreadPlan(readers, model if model >= 3 else cores)


@dataclass(frozen=True)
class Progress:
    """Where a run stands, reported after every batch.

    Attributes
    ----------
    spots_done, spots_total
        Spots predicted so far (including those from an earlier, resumed run) and in all.
    chunk, spots
        The chunk just written and its spot range (``None`` for the initial report).
    elapsed_s
        Seconds since this run started.
    tiles_per_s
        Spots predicted per second in this run.
    expression, variance
        The values of the chunk just written, ``(spots in the chunk, G)`` (``None`` for the
        initial report; variance also when the model gives none).
    """

    spots_done: int
    spots_total: int
    chunk: int | None
    spots: slice | None
    elapsed_s: float
    tiles_per_s: float
    expression: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    variance: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)

    @property
    def fraction(self) -> float:
        """Share of spots done, 0..1."""
        return self.spots_done / self.spots_total if self.spots_total else 1.0

    @classmethod
    def of_batch(
        cls,
        spots_done: int,
        spots_total: int,
        chunk: int,
        spots: slice,
        elapsed_s: float,
        new_spots: int,
        result: Prediction,
    ) -> Progress:
        """The report after a batch: ``new_spots`` predicted in this run so far, and the
        batch's values."""
        return cls(
            spots_done,
            spots_total,
            chunk,
            spots,
            elapsed_s,
            new_spots / max(elapsed_s, 1e-9),
            np.asarray(result.expression, np.float32),
            None if result.variance is None else np.asarray(result.variance, np.float32),
        )


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


def build_grid(
    slide: Slide,
    kind: GridChoice,
    *,
    tile_um: float,
    min_tissue_fraction: float = 0.5,
    overlap_um: float = 0.0,
    tissue: TissueMask | None = None,
) -> SpotGrid:
    """Lay a grid of ``kind`` over the slide and keep the spots on tissue.

    Parameters
    ----------
    slide
        The slide (its µm/px must be known).
    kind
        ``"visium"`` (hexagonal, 55 µm spots, 100 µm pitch), ``"st"`` (square, 100 µm spots,
        200 µm pitch) or ``"dense"`` (tiles of ``tile_um`` side).
    tile_um
        Side of a dense tile (normally the model's ``tile_um``).
    min_tissue_fraction
        Spots with less tissue than this under them are dropped (0 keeps all).
    overlap_um
        Overlap between dense tiles.
    tissue
        A precomputed tissue mask; detected from the thumbnail when omitted.
    """
    mpp = slide.mpp
    if kind == "visium":
        grid = SpotGrid.visium(slide.dimensions, mpp)
    elif kind == "st":
        grid = SpotGrid.legacy_st(slide.dimensions, mpp)
    elif kind == "dense":
        grid = SpotGrid.dense(slide.dimensions, mpp, tile_um, overlap_um=overlap_um)
    else:
        raise ParameterError(f"grid must be visium, st or dense; got {kind!r}")
    if min_tissue_fraction > 0:
        grid = grid.filter_tissue(
            tissue if tissue is not None else detect_tissue(slide), min_tissue_fraction
        )
    return grid


def predict_slide(
    slide: Slide,
    predictor: Predictor,
    grid: SpotGrid,
    store_path: str | Path,
    *,
    batch_size: int = 32,
    read_threads: int = 2,
    prefetch: int = 4,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    overwrite: bool = False,
    first_spots: ArrayLike | None = None,
    read_thread_init: Callable[[], object] | None = None,
) -> PredictionStore:
    """Predict every spot of ``grid`` and write the results to a store.

    If ``store_path`` holds an unfinished run of the same slide, model and grid, only the
    missing chunks are computed (its batch size is kept). A finished store is returned
    at once.

    Parameters
    ----------
    slide, predictor, grid
        What to predict, with what, where.
    store_path
        The ``.vst.zarr`` folder to write (or resume).
    batch_size
        Tiles per model call and per store chunk (new stores only); rounded up to a multiple
        of the model's batch size when that is fixed.
    read_threads
        Threads reading tiles.
    prefetch
        Batches of tiles read ahead of the one the model is working on (bounds memory); at
        least ``read_threads``, since each reader reads a whole batch.
    progress
        Called after every batch with a :class:`Progress`.
    should_cancel
        Polled before every batch; returning ``True`` stops the run (finished batches are kept).
    overwrite
        Discard an existing store at ``store_path`` (even one from another slide or model).
    first_spots
        Indices of spots (grid order) to predict first, most urgent first (e.g. those on
        screen): their chunks go before the others. The store and its values are the same
        whatever the order.
    read_thread_init
        Called once in each tile-reading thread as it starts (e.g. to lower its priority).

    Returns
    -------
    PredictionStore

    Raises
    ------
    CancelledError
        When ``should_cancel`` asked to stop; the store keeps what was done.
    StoreMismatchError
        When ``store_path`` holds a run of a different slide, model or grid (it is left as
        it is).
    ParameterError
        When the grid is empty or a size is below 1 (nothing is written).
    MissingResolutionError
        When the slide's µm/px is unknown (nothing is written).
    StoreInUseError
        When another process (or another run of this one) is writing ``store_path``.
    StoreError
        When ``overwrite`` is asked for a path that is not a prediction store (it is left
        exactly as it is).
    """
    plan = _RunPlan.checked(
        predictor, batch_size, read_threads, prefetch, overwrite, first_spots, read_thread_init
    )
    store_path = store_location(store_path)
    _ = slide.mpp  # fail early, with the clear message, when the resolution is unknown
    with writer_lock(store_path, f"predicting {slide.path.name}"):
        return _predict_locked(slide, predictor, grid, store_path, plan, progress, should_cancel)


@dataclass(frozen=True)
class _RunPlan:
    """How :func:`predict_slide` batches, reads and orders one run (sizes checked)."""

    batch_size: int
    read_threads: int
    prefetch: int
    overwrite: bool
    first_spots: ArrayLike | None
    read_thread_init: Callable[[], object] | None

    @classmethod
    def checked(
        cls,
        predictor: Predictor,
        batch_size: int,
        read_threads: int,
        prefetch: int,
        overwrite: bool,
        first_spots: ArrayLike | None,
        read_thread_init: Callable[[], object] | None,
    ) -> _RunPlan:
        """The plan of :func:`predict_slide`'s arguments, or a :class:`ParameterError`."""
        if batch_size < 1 or read_threads < 1 or prefetch < 1:
            raise ParameterError("batch size, read threads and prefetch must each be at least 1")
        fixed = predictor.fixed_batch_size
        if fixed is not None:  # whole model calls per chunk, without one tiny chunk per call
            batch_size = -(-batch_size // fixed) * fixed
        prefetch = max(prefetch, read_threads)  # each reader reads a whole batch
        return cls(batch_size, read_threads, prefetch, overwrite, first_spots, read_thread_init)


@dataclass
class _SpotCount:
    """Spots of a run saved so far: in the store (``done``) and by this run (``new``)."""

    done: int
    new: int = 0


def _predict_locked(
    slide: Slide,
    predictor: Predictor,
    grid: SpotGrid,
    store_path: Path,
    plan: _RunPlan,
    progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
) -> PredictionStore:
    """:func:`predict_slide` once the store's writer lock is held."""
    store, repaired = _open_or_create(
        slide, predictor, grid, store_path, plan.batch_size, plan.overwrite
    )
    pending = [c for c, finished in enumerate(store.done_chunks()) if not finished]
    if plan.first_spots is not None:
        pending = _urgent_first(pending, plan.first_spots, store.chunk_spots)
    total = store.n_spots
    count = _SpotCount(
        done=total - sum(store.chunk_slice(c).stop - store.chunk_slice(c).start for c in pending)
    )
    start = time.perf_counter()
    if progress is not None:
        progress(Progress(count.done, total, None, None, 0.0, 0.0))
    if not pending:
        if store.attrs.get("repaired_spots"):  # (a report of an earlier run)
            store.set_status(str(store.attrs.get("status", "complete")), repaired_spots=0)
        return store

    def check_cancel() -> None:
        if should_cancel is not None and should_cancel():
            raise CancelledError(
                f"cancelled: {count.done} of {total} spots are saved in {store_path.name}; "
                "run again to resume"
            )

    read_chunk = _chunk_reader(slide, grid, store, predictor.info.tile_px, predictor.info.tile_um)
    store.set_status("running")
    with (
        ThreadPoolExecutor(
            max_workers=plan.read_threads,
            thread_name_prefix="vst-read",
            initializer=plan.read_thread_init,
        ) as pool,
        contextlib.closing(
            _read_ahead(pool, pending, read_chunk, plan.prefetch, check_cancel)
        ) as reads,
    ):
        try:
            _predict_chunks(reads, predictor, store, count, progress, start)
        except BaseException as exc:
            reads.close()  # (cancels the reads not started)
            _record_stop(store, exc, count.done)
            raise
    elapsed = time.perf_counter() - start
    store.set_status(
        "complete",
        spots_done=count.done,
        repaired_spots=repaired,
        last_run_seconds=round(elapsed, 3),
        last_run_tiles_per_s=round(count.new / max(elapsed, 1e-9), 2),
    )
    return store


def _chunk_reader(
    slide: Slide, grid: SpotGrid, store: PredictionStore, tile_px: int, tile_um: float
) -> Callable[[int], NDArray[np.uint8]]:
    """A function reading the tiles of one store chunk's spots into one batch."""
    xy = grid.xy_level0_px

    def read_chunk(chunk: int) -> NDArray[np.uint8]:
        sl = store.chunk_slice(chunk)
        tiles = np.empty((sl.stop - sl.start, tile_px, tile_px, 3), np.uint8)
        for i, (x, y) in enumerate(xy[sl]):
            slide.read_tile((x, y), tile_px, tile_um, out=tiles[i])  # (into the batch)
        return tiles

    return read_chunk


def _predict_chunks(
    reads: Iterable[tuple[int, NDArray[np.uint8]]],
    predictor: Predictor,
    store: PredictionStore,
    count: _SpotCount,
    progress: ProgressCallback | None,
    start: float,
) -> None:
    """Predict each chunk's tiles as they are read, write the chunk, count it and report the
    batch (``start``: when the run started, ``time.perf_counter`` seconds)."""
    total = store.n_spots
    for chunk, tiles in reads:
        sl = store.chunk_slice(chunk)
        result = predictor.predict(tiles, spot_index=np.arange(sl.start, sl.stop))
        refuse_non_finite(predictor, result.expression, result.variance, sl)
        store.write_chunk(chunk, result.expression, result.variance)
        count.done += sl.stop - sl.start
        count.new += sl.stop - sl.start
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(Progress.of_batch(count.done, total, chunk, sl, elapsed, count.new, result))


def _read_ahead(
    pool: ThreadPoolExecutor,
    chunks: Sequence[int],
    read_chunk: Callable[[int], NDArray[np.uint8]],
    prefetch: int,
    before_wait: Callable[[], None],
) -> Generator[tuple[int, NDArray[np.uint8]], None, None]:
    """The tiles of each chunk in order, read ``prefetch`` chunks ahead on ``pool``.

    ``before_wait`` is called before waiting for each chunk (a cancel check); the next read
    is submitted as soon as a chunk's tiles are in, so reading overlaps the model. Closing
    the generator cancels the reads not started.
    """
    queue: collections.deque[tuple[int, Future[NDArray[np.uint8]]]] = collections.deque()
    todo = iter(chunks)
    try:
        for chunk in itertools.islice(todo, prefetch):
            queue.append((chunk, pool.submit(read_chunk, chunk)))
        while queue:
            before_wait()
            chunk, future = queue.popleft()
            tiles = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(read_chunk, nxt)))
            yield chunk, tiles
    finally:
        for _, future in queue:
            future.cancel()


def _record_stop(store: PredictionStore, exc: BaseException, done_spots: int) -> None:
    """Mark a run that stopped early as ``cancelled`` or ``failed``, with its message."""
    status = "cancelled" if isinstance(exc, (CancelledError, KeyboardInterrupt)) else "failed"
    message = str(exc) if isinstance(exc, VirtualSTError) else f"{type(exc).__name__}: {exc}"
    store.set_status(status, error=message, spots_done=done_spots)


def _open_or_create(
    slide: Slide,
    predictor: Predictor,
    grid: SpotGrid,
    store_path: Path,
    batch_size: int,
    overwrite: bool,
) -> tuple[PredictionStore, int]:
    """The run's store: resumed (checked to be the same run; values lost since they were
    written forgotten, to be predicted again) or created. Also the spots to repair."""
    info = predictor.info
    if not store_path.exists() or overwrite:
        store = PredictionStore.create(
            store_path,
            grid=grid,
            genes=info.genes,
            with_variance="variance" in info.outputs,
            chunk_spots=batch_size,
            provenance=_provenance(slide, predictor),
            overwrite=overwrite,
        )
        return store, 0
    store = PredictionStore.open(store_path, mode="r+")
    check_precision_matches(store, predictor)
    store.check_matches(
        slide_fingerprint=slide.fingerprint,
        model_sha256=info.sha256,
        grid=grid,
        slide_name=slide.path.name,
        model_name=predictor.path.name,
    )
    check_statistics_match(store, predictor)
    health = check_store(store)
    store.forget_chunks(health.damaged_chunks)
    return store, sum(s.stop - s.start for s in health.damaged_spots)


def check_statistics_match(store: PredictionStore, predictor: Predictor) -> None:
    """Refuse to resume a store with other slide statistics than the predictor feeds: its
    saved values and the new ones would be standardised differently.

    Raises
    ------
    StoreMismatchError
        Saying what differs; the store is left as it is.
    """
    stored, bound = store.slide_statistics, predictor.slide_statistics
    if stored == bound:
        return
    if bound is None:
        raise StoreMismatchError(
            f"{store.path.name} was predicted with slide statistics, but none are given now"
        )
    raise StoreMismatchError(
        f"{store.path.name} was predicted with other slide statistics than this run's "
        f"({'none' if stored is None else f'{stored.n_spots} spots'} against "
        f"{bound.n_spots}); a run reuses a store's own, so start it again (--overwrite, or "
        "'Replace earlier results' in the Predict panel) rather than mix the two"
    )


def check_precision_matches(store: PredictionStore, predictor: Predictor) -> None:
    """Refuse to resume a store in another precision than it was started in (int8 and fp32
    values differ slightly; one store holds one model's values).

    Raises
    ------
    StoreMismatchError
        Saying which precision the store holds and how to go on.
    """
    record = store.attrs.get("model")
    recorded = record.get("precision", "fp32") if isinstance(record, Mapping) else "fp32"
    if recorded != predictor.precision:
        raise StoreMismatchError(
            f"{store.path.name} holds {recorded} predictions and this run uses "
            f"{predictor.precision}: resume it with --precision {recorded}, or choose "
            "another output or overwrite it"
        )


def refuse_non_finite(
    predictor: Predictor,
    expression: NDArray[np.float32],
    variance: NDArray[np.float32] | None,
    spots: slice,
) -> None:
    """Stop a run whose model gave NaN or ±inf: such values are never stored as results.

    Raises
    ------
    ModelError
        Naming the model, the spots and the first genes affected.
    """
    for name, values in (("expression", expression), ("variance", variance)):
        if values is None:
            continue
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        genes = [predictor.info.genes[g] for g in np.flatnonzero(bad.any(axis=0))]
        shown = ", ".join(genes[:3]) + (f" and {len(genes) - 3} more" if len(genes) > 3 else "")
        raise ModelError(
            f"the model {predictor.path.name} gave non-finite {name} (NaN or ±inf) for "
            f"{int(bad.any(axis=1).sum())} of spots {spots.start}–{spots.stop - 1} ({shown}); "
            "the run stopped and those values were not saved"
        )


def _urgent_first(pending: list[int], first_spots: ArrayLike, chunk_spots: int) -> list[int]:
    """``pending`` chunks reordered: those holding ``first_spots`` first, in their order."""
    spots = np.asarray(first_spots, dtype=np.int64).reshape(-1)
    waiting = set(pending)
    urgent = []
    for chunk in dict.fromkeys((spots // chunk_spots).tolist()):
        if chunk in waiting:
            urgent.append(chunk)
            waiting.discard(chunk)
    return urgent + [c for c in pending if c in waiting]


def _provenance(slide: Slide, predictor: Predictor) -> dict[str, Any]:
    from napari_virtual_st._version import __version__

    info = predictor.info
    return {
        "slide": slide.describe(),
        "model": {
            "file": predictor.path.name,
            "sha256": info.sha256,
            "family": info.family,
            "tile_px": info.tile_px,
            "tile_um": info.tile_um,
            "target": info.target,
            "metadata": dict(info.metadata),
            "providers": predictor.providers,
            "precision": predictor.precision,
            **(
                {"fp32_sha256": info.metadata.get("int8_of_sha256")}
                if predictor.precision == "int8"
                else {}
            ),
        },
        "software": {"napari_virtual_st": __version__, "onnxruntime": ort.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(
            {"slide_statistics": predictor.slide_statistics.to_attrs()}
            if predictor.slide_statistics is not None
            else {}
        ),
    }
