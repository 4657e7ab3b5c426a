"""Cohorts: many slides on a dask.distributed cluster, one store per slide, one summary.

Each slide is one task. The task receives *paths*, not objects: it opens the slide and the
model on the worker, lays the grid there and runs :func:`~napari_virtual_st.run.run`
into ``OUT/<slide stem>.vst.zarr``, so the stores live wherever the workers write (a shared
file system on a real cluster). The client only submits tasks, collects small
:class:`SlideResult` records, shows progress and writes ``OUT/cohort_summary.csv``.

Failures stay with their slide. A :class:`~napari_virtual_st.errors.VirtualSTError` (a
corrupt file, an unknown resolution, no tissue) is the slide's answer and is not retried;
anything unexpected (a bug, a worker killed for memory, a lost node) is retried up to
``retries`` times on whichever worker is free, resuming the store where it stopped.

Reruns are cheap: a finished store is checked against its slide, model and grid and skipped;
a partial one is resumed (the run computes only its missing chunks).

The cluster is a :class:`distributed.LocalCluster` by default (one process per worker, one
slide per worker at a time) or any running scheduler given by address.

``run_cohort(slides, CohortSpec(model, out_dir, ...))``: the :class:`CohortSpec` holds the
model, the output folder, each slide's run options and the cluster's, as ``virtual-st
cohort``'s options do; every slide's :class:`~napari_virtual_st.run.RunSpec` is made from it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from napari_virtual_st.errors import (
    CancelledError,
    ParameterError,
    StoreError,
    VirtualSTError,
)
from napari_virtual_st.pipeline import GridChoice, Progress
from napari_virtual_st.precision import choose_model
from napari_virtual_st.predictor import GPU_PROVIDERS, Predictor, resolve_providers
from napari_virtual_st.registry import resolve_model
from napari_virtual_st.run import BatchEvent, RunEvent, RunSpec, StoreReadyEvent, run
from napari_virtual_st.slide import SLIDE_SUFFIXES
from napari_virtual_st.store import PredictionStore

#: File name of the per-slide summary written into the output folder.
SUMMARY_NAME = "cohort_summary.csv"
#: Columns of the summary CSV, in order.
SUMMARY_COLUMNS = (
    "slide",
    "spots",
    "seconds",
    "tiles_per_s",
    "status",
    "error",
    "store",
    "spots_new",
    "attempts",
    "provider",
    "worker",
)
#: Statuses of a slide that needs nothing more: computed now, finished a partial store,
#: or found finished already.
SUCCESS_STATUSES = frozenset({"done", "resumed", "skipped"})

#: How often a worker may ask the scheduler whether the run was cancelled, and send progress.
_CANCEL_POLL_S = 1.0
_PROGRESS_EVERY_S = 0.5
#: How often the client looks at its futures.
_CLIENT_POLL_S = 0.1
#: How long to try reaching a scheduler given by address.
_CONNECT_TIMEOUT_S = 20.0
#: Preload script (source text) of local worker processes.
_IGNORE_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"


class ClusterError(VirtualSTError):
    """The Dask cluster cannot be started or its scheduler cannot be reached."""


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort.

    Attributes
    ----------
    path
        The slide file (or folder, for formats stored as one).
    mpp
        µm per level-0 pixel for this slide, overriding the file's own value; ``None`` uses
        the file's value (or the cohort's fallback when the file has none).
    """

    path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class SlideResult:
    """What happened to one slide (a row of the summary CSV).

    Attributes
    ----------
    slide
        The slide's absolute path.
    store
        The prediction store written (or resumed, or found finished).
    status
        ``done`` (computed now), ``resumed`` (a partial store finished now), ``skipped``
        (finished already), ``failed``, ``cancelled``, or ``pending`` (never finished, e.g.
        the run was interrupted).
    spots
        Spots of the slide's grid (0 when it could not be laid).
    spots_new
        Spots predicted in this run.
    seconds
        Wall time of the slide's last attempt on its worker (opening, tissue detection,
        prediction).
    tiles_per_s
        ``spots_new / seconds``: end-to-end throughput of the slide (0 when nothing ran).
    error
        Why it failed or stopped (one line), else empty.
    attempts
        Tries the slide took (1 unless an unexpected failure was retried).
    provider
        Execution provider the model ran on (e.g. ``CUDAExecutionProvider``).
    worker
        Address of the Dask worker of the last attempt.
    """

    slide: str
    store: str
    status: str
    spots: int = 0
    spots_new: int = 0
    seconds: float = 0.0
    tiles_per_s: float = 0.0
    error: str = ""
    attempts: int = 1
    provider: str = ""
    worker: str = ""

    @property
    def ok(self) -> bool:
        """Whether the slide's store is complete."""
        return self.status in SUCCESS_STATUSES


@dataclass(frozen=True)
class CohortProgress:
    """Where a cohort stands; reported whenever a slide finishes or spots progress.

    Attributes
    ----------
    slides_done, slides_total
        Slides finished (whatever their status) and in all.
    failed
        Slides failed so far.
    spots_done, spots_total
        Spots predicted (or found predicted) and in all, over the slides that have
        started; ``spots_total`` grows as slides start.
    result
        The slide that just finished, if this report is about one.
    """

    slides_done: int
    slides_total: int
    failed: int
    spots_done: int
    spots_total: int
    result: SlideResult | None = None


CohortProgressCallback = Callable[[CohortProgress], None]


@dataclass(frozen=True)
class _Job:
    """One slide's run, as the worker gets it (pickled): the run itself is ``spec``."""

    index: int
    run_id: str
    spec: RunSpec

    @property
    def slide(self) -> str:
        """The slide's path."""
        return str(self.spec.slide_path)

    @property
    def store(self) -> str:
        """The store's path."""
        return str(self.spec.store_path)

    @property
    def topic(self) -> str:
        """Event topic of the run's progress messages."""
        return f"vst-cohort-{self.run_id}"

    @property
    def cancel_event(self) -> str:
        """Name of the run's cancel :class:`distributed.Event`."""
        return f"vst-cohort-{self.run_id}-cancel"


# -- the cohort: slides in ---------------------------------------------------------------------
def find_slides(paths: Iterable[str | Path]) -> list[CohortSlide]:
    """Slides named directly, plus the slide files directly inside named folders.

    A folder contributes its files whose names end in :data:`SLIDE_SUFFIXES`, sorted by name
    (not recursively; a folder that is itself a slide, e.g. DICOM, must be named in a list).
    A path that does not exist is kept: its task reports it as a failed slide.

    Raises
    ------
    ParameterError
        If a named folder holds no slide files.
    """
    slides: list[CohortSlide] = []
    for item in paths:
        path = Path(item)
        if path.is_dir() and not path.name.endswith(".vst.zarr"):
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.name.lower().endswith(SLIDE_SUFFIXES)
            )
            if not found:
                raise ParameterError(
                    f"the folder {path} holds no slide files "
                    f"({', '.join(s.lstrip('.') for s in SLIDE_SUFFIXES[:8])}, ...)"
                )
            slides.extend(CohortSlide(p) for p in found)
        else:
            slides.append(CohortSlide(path))
    return slides


def read_slide_list(csv_path: str | Path) -> list[CohortSlide]:
    """Slides listed in a CSV file with a ``slide`` column and an optional ``mpp`` column.

    Relative slide paths are taken relative to the CSV file's folder. An empty ``mpp`` cell
    means "the file's own value".

    Raises
    ------
    ParameterError
        If the file cannot be read, has no ``slide`` column, lists no slides, or an ``mpp``
        cell is not a positive number (naming the line).
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ParameterError(f"cannot read the slide list {csv_path}: {exc.strerror}") from exc
    rows = csv.DictReader(text.splitlines())
    columns = {(name or "").strip().lower(): name for name in rows.fieldnames or ()}
    if "slide" not in columns:
        raise ParameterError(
            f"the slide list {csv_path.name} needs a header line with a 'slide' column "
            "(and optionally 'mpp'); found " + (", ".join(repr(c) for c in columns) or "no header")
        )
    slides = []
    for line, row in enumerate(rows, start=2):
        name = (row.get(columns["slide"]) or "").strip()
        if not name:
            continue
        mpp_text = (row.get(columns["mpp"]) or "").strip() if "mpp" in columns else ""
        mpp = None
        if mpp_text:
            try:
                mpp = float(mpp_text)
            except ValueError:
                mpp = -1.0
            if not mpp > 0:
                raise ParameterError(
                    f"{csv_path.name} line {line}: mpp must be a positive number; got {mpp_text!r}"
                )
        path = Path(name).expanduser()
        slides.append(CohortSlide(path if path.is_absolute() else csv_path.parent / path, mpp))
    if not slides:
        raise ParameterError(f"the slide list {csv_path.name} lists no slides")
    return slides


def store_names(slides: Sequence[CohortSlide]) -> list[str]:
    """One store name per slide: ``<stem>.vst.zarr``, unique within the cohort.

    The first slide with a given stem keeps the plain name; later ones with the same stem
    (same file name in different folders) get ``<stem>-<8 hex digits of their absolute
    path>``, which stays the same from one run to the next.
    """
    names: list[str] = []
    taken: set[str] = set()
    for slide in slides:
        stem = _stem(slide.path)
        name = f"{stem}.vst.zarr"
        if name.lower() in taken:
            digest = hashlib.sha1(str(slide.path.absolute()).encode()).hexdigest()[:8]
            name = f"{stem}-{digest}.vst.zarr"
        taken.add(name.lower())
        names.append(name)
    return names


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SLIDE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem or name


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_workers(n_slides: int, providers: Sequence[str] | None = None) -> int:
    """Workers of a local cluster when none are asked for.

    With a GPU execution provider: 2 (they share the GPU; one reads tiles and lays its grid
    while the other computes). On CPU: one per 2 cores (each worker's model gets 2 threads;
    several small sessions use cores better than one big one, and fill each other's serial
    steps). Never more than the slides.
    """
    try:
        on_gpu = resolve_providers(providers)[0] in GPU_PROVIDERS
    except VirtualSTError:
        on_gpu = False
    wanted = 2 if on_gpu else max(1, _available_cores() // 2)
    return max(1, min(wanted, n_slides))


# -- running ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortSpec:
    """A cohort's run: the model, the output folder, how each slide runs and on what cluster.

    Attributes
    ----------
    model
        ONNX model file or a bundled model's name; every worker must be able to read the
        path.
    out_dir
        Folder for the stores (``<slide stem>.vst.zarr``) and ``cohort_summary.csv``; on a
        real cluster, a folder the workers share.
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``); ``None`` starts a
        :class:`~distributed.LocalCluster` for the duration of the run.
    workers
        Workers of the local cluster (``None``: :func:`default_workers`). Ignored with
        ``scheduler``: the cluster has the workers it has.
    threads_per_worker
        CPU threads each worker's model may use (ONNX Runtime intra-op threads). ``None``:
        the cores divided among the local workers, or ONNX Runtime's default (all cores of
        the worker's machine) on a remote cluster.
    processes
        Local cluster only: workers in separate processes (isolates crashes and the GIL);
        ``False`` runs them as threads of this process (quick to start; for tests).
    grid, min_tissue
        Spot layout and the tissue fraction a spot needs (see
        :func:`~napari_virtual_st.pipeline.build_grid`).
    batch_size, read_threads
        Passed to :func:`~napari_virtual_st.pipeline.predict_slide` for each slide
        (``read_threads`` ``None``: sized with the model's threads).
    precision
        ``"fp32"``, ``"int8"`` or ``"auto"`` (see :mod:`napari_virtual_st.precision`); an
        int8 model is found or made once, before any slide, and every worker runs that file.
    providers
        Execution providers (``None``: each worker uses its GPU when it has one, else CPU).
    retries
        Extra attempts for a slide that failed unexpectedly (an exception that is not a
        ``VirtualSTError``, or a worker that died). User errors are never retried.
    mpp
        µm/px for slides whose files record none (a per-slide ``mpp`` takes precedence).
    overwrite
        Replace existing stores instead of skipping or resuming them.
    allow_non_brightfield
        Predict slides that do not look like bright-field H&E too (refused otherwise).
    """

    model: str | Path
    out_dir: str | Path
    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    processes: bool = True
    grid: GridChoice = "visium"
    min_tissue: float = 0.5
    batch_size: int = 32
    read_threads: int | None = None
    precision: str = "fp32"
    providers: Sequence[str] | None = None
    retries: int = 2
    mpp: float | None = None
    overwrite: bool = False
    allow_non_brightfield: bool = False


def run_cohort(
    slides: Iterable[CohortSlide | str | Path],
    spec: CohortSpec,
    *,
    progress: CohortProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[SlideResult]:
    """Predict every slide of a cohort on a Dask cluster, one store per slide.

    Parameters
    ----------
    slides
        Slide paths or :class:`CohortSlide` entries (a per-slide ``mpp``). The same file
        listed twice runs once.
    spec
        The model, the output folder, each slide's run and the cluster.
    progress
        Called with a :class:`CohortProgress` when a slide finishes and as spots progress.
    should_cancel
        Polled by the client; once it returns ``True`` every worker stops after its current
        batch (finished batches stay in the stores) and slides not started are cancelled.

    Returns
    -------
    list of SlideResult
        One per distinct slide, in input order; also written to ``out_dir/cohort_summary.csv``.

    Raises
    ------
    ParameterError
        If no slides are given or a parameter is out of range.
    ModelError
        If the model cannot be found or breaks the model contract, or (local cluster) a
        requested provider is not available; checked before any slide.
    ClusterError
        If the local cluster cannot start or the scheduler cannot be reached.
    """
    cohort = _distinct(_as_cohort_slide(s) for s in slides)
    if not cohort:
        raise ParameterError("no slides to run")
    template = _checked_run(spec, cohort[0].path)
    out = _output_folder(spec.out_dir)
    threads: int | None
    if spec.scheduler is None:
        n_workers = spec.workers or default_workers(len(cohort), spec.providers)
        threads = spec.threads_per_worker or max(1, _available_cores() // n_workers)
    else:
        n_workers, threads = 0, spec.threads_per_worker
    jobs = _jobs(cohort, replace(template, intra_op_threads=threads), out)
    results = [
        SlideResult(slide=job.slide, store=job.store, status="pending", attempts=0) for job in jobs
    ]
    summary = out / SUMMARY_NAME
    try:
        with _client(spec.scheduler, n_workers, spec.processes) as client:
            _drive(client, jobs, results, spec.retries, summary, progress, should_cancel)
    finally:
        write_summary(results, summary)
    return results


def _checked_run(spec: CohortSpec, first_slide: Path) -> RunSpec:
    """Every slide's run (a template :class:`RunSpec`), checked once before any slide: its
    options, the model (an int8 variant found or made here, not per worker) and, on a local
    cluster, the providers asked for."""
    _check_cluster_options(spec.retries, spec.workers, spec.threads_per_worker)
    if spec.grid not in ("visium", "st", "dense"):
        raise ParameterError(f"grid must be visium, st or dense; got {spec.grid!r}")
    template = RunSpec(  # (its constructor refuses what is out of range)
        slide_path=first_slide,
        model_path=Path(spec.model),
        store_path=Path(spec.out_dir),
        grid_kind=spec.grid,
        fallback_mpp=spec.mpp,
        min_tissue_fraction=spec.min_tissue,
        batch_size=spec.batch_size,
        read_threads=spec.read_threads,
        precision=spec.precision,
        providers=tuple(spec.providers) if spec.providers else None,
        overwrite=spec.overwrite,
        allow_non_brightfield=spec.allow_non_brightfield,
    )
    model_path = resolve_model(spec.model).absolute()
    Predictor(model_path, providers=["cpu"])  # refuse a broken model before any slide
    model_path = choose_model(model_path, spec.precision).path.absolute()
    if spec.scheduler is None and spec.providers:
        resolve_providers(spec.providers)  # local workers have this machine's providers
    return replace(template, model_path=model_path)


def _output_folder(out_dir: str | Path) -> Path:
    """The output folder, made if missing (absolute: the workers write there)."""
    out = Path(out_dir).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the output folder {out}: {exc.strerror}") from exc
    return out


def _jobs(cohort: list[CohortSlide], template: RunSpec, out: Path) -> list[_Job]:
    """One job per slide: the template run on that slide, into its store under ``out``."""
    run_id = uuid.uuid4().hex[:12]
    return [
        _Job(
            index=i,
            run_id=run_id,
            spec=replace(template, slide_path=s.path.absolute(), store_path=out / name, mpp=s.mpp),
        )
        for i, (s, name) in enumerate(zip(cohort, store_names(cohort), strict=True))
    ]


def _check_cluster_options(
    retries: int, workers: int | None, threads_per_worker: int | None
) -> None:
    """Refuse retry and cluster-size options out of range, naming them."""
    if retries < 0:
        raise ParameterError(f"retries must be 0 or more; got {retries}")
    if workers is not None and workers < 1:
        raise ParameterError(f"workers must be at least 1; got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ParameterError(f"threads per worker must be at least 1; got {threads_per_worker}")


def _as_cohort_slide(item: CohortSlide | str | Path) -> CohortSlide:
    return item if isinstance(item, CohortSlide) else CohortSlide(Path(item))


def _distinct(slides: Iterable[CohortSlide]) -> list[CohortSlide]:
    seen: set[Path] = set()
    kept = []
    for slide in slides:
        key = Path(os.path.abspath(slide.path))
        if key not in seen:
            seen.add(key)
            kept.append(slide)
    return kept


@contextlib.contextmanager
def _client(scheduler: str | None, n_workers: int, processes: bool) -> Iterator[Any]:
    """A connected :class:`distributed.Client` (and its local cluster), closed afterwards."""
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=":0",  # any free port: never clash with a running cluster
                # Ctrl-C reaches the whole process group: the workers leave it to the client,
                # which stops them after their current batch
                preload=[_IGNORE_SIGINT] if processes else [],
            )
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        where = f"the Dask scheduler at {scheduler}" if scheduler else "a local Dask cluster"
        raise ClusterError(f"cannot reach {where}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _drive(
    client: Any,
    jobs: list[_Job],
    results: list[SlideResult],
    retries: int,
    summary: Path,
    progress: CohortProgressCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> None:
    """Submit the jobs, retry unexpected failures, fill ``results`` as slides finish."""
    _CohortDriver(client, jobs, results, retries, summary, progress).run(should_cancel)


class _CohortDriver:
    """The client's side of one cohort run: submits, retries, collects and reports."""

    def __init__(
        self,
        client: Any,
        jobs: list[_Job],
        results: list[SlideResult],
        retries: int,
        summary: Path,
        progress: CohortProgressCallback | None,
    ) -> None:
        from distributed import Event

        self.client, self.jobs, self.results = client, jobs, results
        self.retries, self.summary, self.progress = retries, summary, progress
        self.lock = threading.Lock()
        self.live: dict[int, tuple[int, int]] = {}  # job index -> (spots done, spots total)
        self.pending: dict[Any, tuple[_Job, int]] = {}
        self.cancel = Event(jobs[0].cancel_event, client=client)
        self.cancelled = False
        self.last_report: tuple[int, int] | None = None
        self.n_done = self.n_failed = 0

    def run(self, should_cancel: Callable[[], bool] | None) -> None:
        topic = self.jobs[0].topic
        self.client.subscribe_topic(topic, self._on_event)
        try:
            for job in self.jobs:
                self._submit(job, 1)
            self._report()
            while self.pending:
                if not self.cancelled and should_cancel is not None and should_cancel():
                    self.cancelled = True
                    self.cancel.set()
                finished = [f for f in self.pending if f.done()]
                if not finished:
                    time.sleep(_CLIENT_POLL_S)
                    self._report()
                for future in finished:
                    self._settle(future)
        finally:
            self.client.unsubscribe_topic(topic)
            with contextlib.suppress(Exception):
                if self.pending:  # aborted (a second Ctrl-C, an error): stop running slides
                    self.cancel.set()  # on a remote cluster (left set: the workers poll it)
                else:
                    self.cancel.clear()  # nothing left on the scheduler
            for future in self.pending:
                future.release()

    def _on_event(self, event: tuple[float, dict[str, int]]) -> None:
        msg = event[1]
        with self.lock:
            if self.results[msg["index"]].status == "pending":
                self.live[msg["index"]] = (int(msg["done"]), int(msg["total"]))

    def _submit(self, job: _Job, attempt: int) -> None:
        future = self.client.submit(
            _run_slide,
            job,
            attempt,
            key=f"vst-slide-{job.run_id}-{job.index}-{attempt}",
            pure=False,
        )
        self.pending[future] = (job, attempt)

    def _settle(self, future: Any) -> None:
        """Take one finished task: its result, or a retry, or a failure."""
        from distributed import KilledWorker

        job, attempt = self.pending.pop(future)
        if future.status == "finished":
            result = future.result()
        else:
            exc = future.exception() if future.status == "error" else None
            if attempt <= self.retries and not self.cancelled:
                self._submit(job, attempt + 1)
                future.release()
                return
            result = replace(
                self.results[job.index],
                status="cancelled" if self.cancelled else "failed",
                error=_describe_failure(exc, KilledWorker),
                attempts=attempt,
            )
        future.release()
        with self.lock:
            self.results[job.index] = result
            if result.ok:
                self.live[job.index] = (result.spots, result.spots)
            elif result.status == "failed":  # out of the spot count
                self.live.pop(job.index, None)
        self.n_done += 1
        self.n_failed += result.status == "failed"
        write_summary(self.results, self.summary)
        self._report(result)

    def _report(self, result: SlideResult | None = None) -> None:
        if self.progress is None:
            return
        with self.lock:
            spots_done = sum(d for d, _ in self.live.values())
            spots_total = sum(t for _, t in self.live.values())
        if result is None and (spots_done, spots_total) == self.last_report:
            return
        self.last_report = (spots_done, spots_total)
        self.progress(
            CohortProgress(
                self.n_done, len(self.jobs), self.n_failed, spots_done, spots_total, result
            )
        )


def _describe_failure(exc: BaseException | None, killed_worker: type[BaseException]) -> str:
    if exc is None:
        return "the cluster dropped the task (was the scheduler restarted?)"
    if isinstance(exc, killed_worker):
        return (
            f"the worker running this slide died (out of memory, or its machine was lost); {exc}"
        )
    return f"unexpected {type(exc).__name__}: {exc}".replace("\n", " ")


def write_summary(results: Sequence[SlideResult], path: str | Path) -> Path:
    """Write the per-slide results as CSV (:data:`SUMMARY_COLUMNS`), atomically.

    The file is written beside its destination and renamed over it, so a reader (or a run
    killed half-way) never sees half a table.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            for result in results:
                row = asdict(result)
                row["seconds"] = f"{result.seconds:.2f}"
                row["tiles_per_s"] = f"{result.tiles_per_s:.1f}"
                writer.writerow({k: row[k] for k in SUMMARY_COLUMNS})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_summary(path: str | Path) -> list[SlideResult]:
    """Read a summary CSV written by :func:`write_summary`."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [
            SlideResult(
                slide=row["slide"],
                store=row["store"],
                status=row["status"],
                spots=int(row["spots"]),
                spots_new=int(row["spots_new"]),
                seconds=float(row["seconds"]),
                tiles_per_s=float(row["tiles_per_s"]),
                error=row["error"],
                attempts=int(row["attempts"]),
                provider=row["provider"],
                worker=row["worker"],
            )
            for row in csv.DictReader(fh)
        ]


# -- on the worker ------------------------------------------------------------------------------
class _WorkerLink:
    """The task's line to the client: throttled progress events and the cancel flag."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.first: Progress | None = None
        self._cancelled = False
        self._last_poll = -float("inf")
        self._last_sent = -float("inf")
        try:
            from distributed import get_worker

            self.worker: Any = get_worker()
        except ValueError:  # not inside a Dask worker (called directly)
            self.worker = None

    @property
    def address(self) -> str:
        if self.worker is None:
            return socket.gethostname()
        return str(self.worker.address)

    def cancelled(self) -> bool:
        if self._cancelled or self.worker is None:
            return self._cancelled
        now = time.monotonic()
        if now - self._last_poll >= _CANCEL_POLL_S:
            self._last_poll = now
            with contextlib.suppress(Exception):  # a slow scheduler must not fail the slide
                from distributed import Event

                self._cancelled = bool(Event(self.job.cancel_event).is_set())
        return self._cancelled

    def progress(self, p: Progress) -> None:
        if self.first is None:
            self.first = p
        now = time.monotonic()
        final = p.spots_done >= p.spots_total
        if self.worker is None or not (final or now - self._last_sent >= _PROGRESS_EVERY_S):
            return
        self._last_sent = now
        with contextlib.suppress(Exception):
            self.worker.log_event(
                self.job.topic,
                {"index": self.job.index, "done": p.spots_done, "total": p.spots_total},
            )


def _run_slide(job: _Job, attempt: int) -> SlideResult:
    """The task: predict one slide into its store; user errors become a ``failed`` result.

    Unexpected exceptions propagate, so the client can retry the slide. The model's session
    is kept by the worker process for its later slides (:func:`~.run.engine.load_predictor`).
    """
    start = time.perf_counter()
    link = _WorkerLink(job)
    base = SlideResult(
        slide=job.slide, store=job.store, status="failed", attempts=attempt, worker=link.address
    )
    ready: list[StoreReadyEvent] = []

    def report(event: RunEvent) -> None:
        if isinstance(event, StoreReadyEvent):
            ready.append(event)
        if isinstance(event, StoreReadyEvent | BatchEvent):
            link.progress(event.progress)

    try:
        if link.cancelled():
            raise CancelledError("cancelled before it started")
        run(job.spec, report, link.cancelled)
    except CancelledError as exc:
        return _finish(base, start, "cancelled", ready, link, error=str(exc))
    except VirtualSTError as exc:
        return _finish(base, start, "failed", ready, link, error=str(exc))
    first = ready[0].progress if ready else None
    if first is not None and first.spots_done == first.spots_total and not job.spec.overwrite:
        status = "skipped"
    elif first is not None and first.spots_done > 0:
        status = "resumed"
    else:
        status = "done"
    return _finish(base, start, status, ready, link)


def _finish(
    base: SlideResult,
    start: float,
    status: str,
    ready: list[StoreReadyEvent],
    link: _WorkerLink,
    error: str = "",
) -> SlideResult:
    seconds = time.perf_counter() - start
    spots = ready[0].progress.spots_total if ready else 0
    provider = ready[0].providers[0] if ready else ""
    before = link.first.spots_done if link.first is not None else 0
    new = 0 if status == "skipped" else max(0, _spots_now(base.store, spots) - before)
    return replace(
        base,
        status=status,
        spots=spots,
        spots_new=new,
        seconds=seconds,
        tiles_per_s=new / seconds if seconds > 0 else 0.0,
        error=error.replace("\n", " "),
        provider=provider,
    )


def _spots_now(store: str, spots: int) -> int:
    """Spots done in the store now (0 if there is no readable store)."""
    if spots == 0:
        return 0
    try:
        return int(PredictionStore.open(store).done.sum())
    except VirtualSTError:
        return 0
