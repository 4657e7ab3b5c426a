"""Throughput, latency and memory of ``predict_slide`` against its parts.

For each slide (a generated large SYNTHETIC JPEG-tiled pyramidal TIFF and the real
CMU-1-Small-Region.svs) and each model — the random-weight ResNet-18 BENCHMARK network as a
torch export (``resnet18_torch.py``: an ``onnx.helper`` build of it was 8 % slower in ONNX
Runtime, which flattered the efficiency, and is gone) and, with ``--bundled``, the shipped
models — it measures tiles/s of:

- ``read_tps``: the tile reads the pipeline does (same tiles, same chunks, same thread pool
  size), no model;
- ``model_tps``: ``Predictor.predict`` alone on pre-read tiles, batches of the pipeline's size;
- ``pipeline_tps``: ``predict_slide`` into a fresh store (call to return);
- ``naive_tps``: one ``Slide.read_tile`` then one ``session.run`` per tile (batch 1);

and derives ``efficiency = pipeline / shared_limit``, where ``shared_limit`` is the rate
reading and the model allow *when they share the cores*: ``min(read, model, cores × 1000 /
(read CPU-ms per tile + model CPU-ms per tile))`` (``efficiency_vs_min`` keeps the older
``pipeline / min(read, model)``), ``speedup_vs_naive = pipeline / naive`` and
``visium_minutes``: the minutes a Visium capture area's 4,992 spots take at the pipeline's
rate. Threads: the engine's own sizing (:func:`napari_virtual_st.pipeline.plan_threads`)
unless ``--read-threads`` / ``--intra-op-threads`` say otherwise. ``--precision int8`` runs
each model's int8 variant (:mod:`napari_virtual_st.precision`). ``first_result_s`` is the time from calling ``predict_slide`` to the
first batch in the store (for a model that takes slide statistics, from measuring them as a
run does, ``slide_statistics_s`` of it); ``peak_rss_mb`` is the peak RSS of the process running the
pipeline. Every measurement runs in its own fresh subprocess (cold model, own RSS peak).

Usage::

    python benchmarks/bench_pipeline.py --json benchmarks/results/OUT.json
    python benchmarks/bench_pipeline.py --full --slides large     # every tissue spot
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from revisions import (  # noqa: E402
    base_worktree,
    checkout_revision,
    child_result,
    source_label,
    write_results,
)

CACHE = HERE / ".cache"
CMU_SLIDE = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
BAND_ROWS = 6  # lattice rows per band for --sample bands (≈ 2 JPEG tile rows at 0.5 µm/px)
MEASURES = ("read", "model", "pipeline", "naive")
VISIUM_SPOTS = 4992  # spots of one 6.5 mm Visium capture area
TARGETS = {"efficiency_min": 0.95, "peak_rss_mb_max_large": 1024.0, "first_result_s_max": 2.0}
_MARK = "@@RESULT@@ "
#: Ways the model's threads wait and the readers run (``--variants``).
VARIANTS = {
    "spin": {"spin": True, "read_nice": False},
    "nospin": {"spin": False, "read_nice": False},
    "nospin-nice": {"spin": False, "read_nice": True},
}


# --------------------------------------------------------------------------------------------
# child side: one measurement in a fresh process
# --------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    t = os.times()
    return t.user + t.system


def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class _Meter:
    """Accumulates wall time, this process's CPU time and other processes' CPU time."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.busy = 0.0
        self.laps: list[float] = []

    def __enter__(self) -> _Meter:
        self._start = (time.perf_counter(), _cpu_s(), _busy_s())
        return self

    def __exit__(self, *exc: object) -> None:
        t, c, b = self._start
        lap = time.perf_counter() - t
        self.laps.append(lap)
        self.wall += lap
        self.cpu += _cpu_s() - c
        self.busy += _busy_s() - b


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _RssSampler:
    """Peak RSS over a stretch of code, sampled every 20 ms (ru_maxrss covers the whole life)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._stop.wait(0.02)

    def __enter__(self) -> _RssSampler:
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _subsample(lattice_rc: np.ndarray, max_spots: int, how: str) -> np.ndarray:
    """Indices of about ``max_spots`` spots spread evenly over the grid.

    ``spots``: every k-th spot (neighbouring tiles of a batch are far apart, so decoded
    slide tiles are never shared: the worst case for the reader). ``bands``: evenly spaced
    bands of whole consecutive lattice rows, so a batch reads neighbouring tiles as in a
    full run (decoded slide tiles are shared along and across rows).
    """
    n = len(lattice_rc)
    rows = lattice_rc[:, 0]
    if how == "spots" or (rows < 0).any():
        return np.unique(np.linspace(0, n - 1, max_spots).round().astype(np.int64))
    unique_rows = np.unique(rows)
    band = min(BAND_ROWS, len(unique_rows))
    per_band = n / len(unique_rows) * band
    n_bands = max(1, min(len(unique_rows) // band, round(max_spots / per_band)))
    starts = np.linspace(0, len(unique_rows) - band, n_bands).round().astype(np.int64)
    chosen = np.concatenate([unique_rows[s : s + band] for s in starts])
    keep = np.flatnonzero(np.isin(rows, chosen))
    return keep[:max_spots]


def _nice_reader() -> None:
    """Lower the calling tile-reading thread's priority (the engine's own helper)."""
    from napari_virtual_st.run.priority import lower_thread_priority

    lower_thread_priority()


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("cpus"):  # pinned like ``taskset -c``, before any thread starts
        os.sched_setaffinity(0, spec["cpus"])
    if spec.get("patch"):  # try a change to src/ by monkeypatching, before anything runs
        code = Path(spec["patch"]).read_text()
        exec(compile(code, spec["patch"], "exec"), {"__name__": "bench_patch"})
    from napari_virtual_st import Slide
    from napari_virtual_st.pipeline import build_grid

    measure = spec["measure"]
    out: dict[str, Any] = {"measure": measure, "rss_start_mb": round(_rss_mb(), 1)}
    slide = Slide(spec["slide"])
    tile_px, tile_um = int(spec["tile_px"]), float(spec["tile_um"])
    t0 = time.perf_counter()
    grid = build_grid(slide, spec["grid"], tile_um=tile_um)
    out["grid_s"] = round(time.perf_counter() - t0, 3)
    out["grid_spots_total"] = len(grid)
    if spec["max_spots"] and len(grid) > spec["max_spots"]:
        grid = grid.subset(_subsample(grid.lattice_rc, spec["max_spots"], spec["sample"]))
    if measure == "naive" and spec["naive_max_spots"] and len(grid) > spec["naive_max_spots"]:
        keep = np.linspace(0, len(grid) - 1, spec["naive_max_spots"]).round().astype(np.int64)
        grid = grid.subset(np.unique(keep))
    n = len(grid)
    xy = grid.xy_level0_px
    out["spots"] = n
    out["slide"] = {k: v for k, v in slide.describe().items() if k not in ("path", "fingerprint")}
    meter = _Meter()
    bs, threads, prefetch = spec["batch_size"], spec["read_threads"], spec["prefetch"]

    into = "out" in inspect.signature(slide.read_tile).parameters  # (older trees: a copy)

    def read_chunk(sl: slice) -> np.ndarray:  # the pipeline's own read loop
        tiles = np.empty((sl.stop - sl.start, tile_px, tile_px, 3), np.uint8)
        for i, (x, y) in enumerate(xy[sl]):
            if into:
                slide.read_tile((x, y), tile_px, tile_um, out=tiles[i])
            else:
                tiles[i] = slide.read_tile((x, y), tile_px, tile_um)
        return tiles

    def predictor() -> Any:
        from napari_virtual_st.predictor import Predictor

        return Predictor(
            spec["model"], intra_op_threads=spec["intra_op_threads"], spin=spec.get("spin", True)
        )

    def feeds(tile: np.ndarray, spot: int) -> dict[str, np.ndarray]:  # the naive loop's inputs
        from napari_virtual_st.predictor import extra_input_values

        extra = spec.get("extra_inputs") or {}
        return {
            "image": tile[None],
            **{k: extra_input_values(v, [spot]) for k, v in extra.items()},
        }

    if measure == "read":
        queue: deque[Future[np.ndarray]] = deque()
        todo = iter(_chunks(n, bs))
        init = _nice_reader if spec.get("read_nice") else None
        with (
            meter,
            ThreadPoolExecutor(threads, thread_name_prefix="vst-read", initializer=init) as pool,
        ):
            for sl in todo:
                queue.append(pool.submit(read_chunk, sl))
                if len(queue) >= prefetch:
                    break
            while queue:
                queue.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    queue.append(pool.submit(read_chunk, nxt))
    elif measure == "model":
        pred = predictor()
        out["providers"] = pred.providers
        pool_tiles = read_chunk(slice(0, min(n, 8 * bs)))
        if pred.info.slide_statistics is not None:  # (not timed: the model alone is)
            pred = pred.standardised_on(pool_tiles)
        for sl in _chunks(n, bs):
            batch = pool_tiles[np.arange(sl.start, sl.stop) % len(pool_tiles)]
            with meter:
                pred.predict(batch, spot_index=np.arange(sl.start, sl.stop))
        out["first_result_s"] = round(meter.laps[0], 3)
        if len(meter.laps) > 1:
            out["steady_tps"] = round((n - min(n, bs)) / sum(meter.laps[1:]), 2)
    elif measure == "pipeline":
        from napari_virtual_st.pipeline import predict_slide

        pred = predictor()
        out["providers"] = pred.providers
        reports: list[tuple[float, int]] = []

        def on_progress(p: Any) -> None:
            if p.chunk is not None:  # a batch is in the store
                reports.append((time.perf_counter(), p.spots_done))

        with tempfile.TemporaryDirectory(prefix="vst-bench-") as tmp:
            store_path = Path(tmp) / "bench.vst.zarr"
            out["rss_before_run_mb"] = round(_rss_mb(), 1)
            with _RssSampler() as sampler, meter:
                t0 = time.perf_counter()
                if pred.info.slide_statistics is not None:  # before the first tile, as run()
                    pred = _with_slide_statistics(spec, slide, pred, store_path, bs)
                    out["slide_statistics_s"] = round(time.perf_counter() - t0, 3)
                predict_slide(
                    slide,
                    pred,
                    grid,
                    store_path,
                    batch_size=bs,
                    read_threads=threads,
                    prefetch=prefetch,
                    progress=on_progress,
                    read_thread_init=_nice_reader if spec.get("read_nice") else None,
                )
        out["peak_rss_run_mb"] = round(sampler.peak, 1)
        out["first_result_s"] = round(reports[0][0] - t0, 3)
        if len(reports) > 1:
            out["steady_tps"] = round(
                (reports[-1][1] - reports[0][1]) / (reports[-1][0] - reports[0][0]), 2
            )
    elif measure == "naive":
        import onnxruntime as ort

        session = ort.InferenceSession(spec["model"], providers=["CPUExecutionProvider"])
        with meter:
            for spot, (x, y) in enumerate(xy):
                tile = slide.read_tile((x, y), tile_px, tile_um)
                session.run(["expression"], feeds(tile, spot))
    else:
        raise ValueError(measure)
    out["tps"] = round(n / meter.wall, 2)
    out["seconds"] = round(meter.wall, 3)
    out["cpu_ms_per_tile"] = round(1000 * meter.cpu / n, 2)
    # CPU cores used by other processes meanwhile (> ~0.1: the measurement is disturbed)
    out["other_load_cores"] = round(max(0.0, meter.busy - meter.cpu) / meter.wall, 2)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out["cpus"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out["src"] = source_label(Path(sys.modules["napari_virtual_st"].__file__).parent.parent)
    slide.close()
    return out


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------
def _with_slide_statistics(
    spec: dict[str, Any], slide: Any, pred: Any, store_path: Path, batch_size: int
) -> Any:
    """``pred`` fed the slide's statistics as a run measures them (its tissue lattice)."""
    import inspect

    from napari_virtual_st.run import RunSpec
    from napari_virtual_st.run.engine import with_slide_statistics

    run = RunSpec(Path(spec["slide"]), Path(spec["model"]), store_path, batch_size=batch_size)
    quiet = lambda message: None  # noqa: E731
    # (a --base from before the statistics moved ahead of the grid took the tissue mask)
    if "tissue" in inspect.signature(with_slide_statistics).parameters:
        return with_slide_statistics(run, slide, pred, None, quiet)
    return with_slide_statistics(run, slide, pred, quiet)[0]


def _wait_idle(max_s: float, threshold_cores: float = 0.2) -> float:
    """Wait until other processes use less than ``threshold_cores`` (at most ``max_s`` s)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_s:
        b0 = _busy_s()
        time.sleep(1.0)
        if _busy_s() - b0 < threshold_cores:
            break
    return time.perf_counter() - start


def _run_child(spec: dict[str, Any], src: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:  # that tree's package first (an earlier commit, for an A/B)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    return child_result(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        _MARK,
        f"{spec['measure']} measurement",
        env=env,
    )


def _model_meta(path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    meta = (
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    return {
        "file": path.name,
        "extra_inputs": json.loads(meta.get("vst.extra_inputs", "{}")),
        "name": meta.get("vst.name"),
        "family": meta.get("vst.family"),
        "tile_px": int(meta["vst.tile_px"]),
        "tile_um": float(meta["vst.tile_um"]),
        "genes": len(json.loads(meta["vst.genes"])),
        "size_mb": round(path.stat().st_size / 2**20, 1),
        "precision": meta.get("vst.precision", "fp32"),
    }


def _machine() -> dict[str, Any]:
    import onnxruntime as ort
    import tifffile
    import zarr

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model or platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "numpy": np.__version__,
        "tifffile": tifffile.__version__,
        "zarr": zarr.__version__,
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _table(entries: list[dict[str, Any]]) -> str:
    cols = [
        ("model", 22, "s"),
        ("slide", 28, "s"),
        ("side", 16, "s"),
        ("cores", 5, "d"),
        ("spots", 6, "d"),
        ("read_tps", 9, ".1f"),
        ("model_tps", 9, ".1f"),
        ("pipeline_tps", 12, ".1f"),
        ("naive_tps", 9, ".1f"),
        ("shared_limit_tps", 16, ".1f"),
        ("efficiency", 10, ".3f"),
        ("cpu_efficiency", 14, ".3f"),
        ("pipeline_tps_vs_base", 20, ".3f"),
        ("speedup_vs_naive", 16, ".2f"),
        ("first_result_s", 14, ".2f"),
        ("peak_rss_mb", 11, ".0f"),
        ("visium_minutes", 14, ".1f"),
    ]
    lines = [" ".join(f"{name:>{w}}" for name, w, _ in cols)]
    for e in entries:
        cells = []
        for name, w, f in cols:
            v = e.get(name)
            text = f"{v[-w:]:>{w}}" if name in ("slide", "model", "side") else f"{_fmt(v, f):>{w}}"
            cells.append(text)
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _parse_cpus(text: str) -> list[int]:
    """``"0,2-3"`` → ``[0, 2, 3]`` (as ``taskset -c`` reads a CPU list)."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise SystemExit(f"--cpus {text}: this process may only use CPUs {sorted(allowed)}")
    return sorted(cpus)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tiles/s (the lower one of an even count), with the medians
    of tiles/s and CPU-ms per tile over all runs and every run's figures."""
    ordered = sorted(runs, key=lambda r: r["tps"])
    res = dict(ordered[(len(ordered) - 1) // 2])
    res["tps"] = round(median(r["tps"] for r in runs), 2)
    res["cpu_ms_per_tile"] = round(median(r["cpu_ms_per_tile"] for r in runs), 2)
    res["runs_tps"] = [r["tps"] for r in runs]
    res["runs_cpu_ms_per_tile"] = [r["cpu_ms_per_tile"] for r in runs]
    res["runs_other_load_cores"] = [r["other_load_cores"] for r in runs]
    res["runs_loadavg_1min"] = [r.get("loadavg_1min") for r in runs]
    return res


def _derive(details: dict[str, dict[str, Any]], cores: int) -> dict[str, Any]:
    """The table's figures from the measurements' medians.

    ``shared_limit_tps``: what reading and the model allow when they share ``cores`` cores,
    ``min(read, model, cores × 1000 / (read CPU-ms + model CPU-ms per tile))``;
    ``efficiency`` = pipeline / that; ``cpu_efficiency`` = (read + model CPU-ms per tile) /
    the pipeline's CPU-ms per tile (what overlapping them costs in CPU, which other
    processes on the machine disturb less than the rates).
    """
    first = next(iter(details.values()))
    out: dict[str, Any] = {
        "format": first["slide"]["format"],
        "dimensions": first["slide"]["dimensions"],
        "levels": first["slide"]["level_count"],
        "mpp": first["slide"]["mpp"],
        "grid_spots_total": first["grid_spots_total"],
        "spots": details.get("pipeline", first)["spots"],
        "grid_s": first["grid_s"],
        "other_load_cores_max": max(d["other_load_cores"] for d in details.values()),
    }
    for measure, res in details.items():
        out[f"{measure}_tps"] = res["tps"]
        out[f"{measure}_cpu_ms"] = res["cpu_ms_per_tile"]
    pipe = details.get("pipeline")
    if pipe is None:
        return out
    out["first_result_s"] = pipe["first_result_s"]
    out["peak_rss_mb"] = pipe["peak_rss_mb"]
    out["providers"] = pipe["providers"]
    if "read" in details and "model" in details:
        read, mod = details["read"], details["model"]
        both_ms = read["cpu_ms_per_tile"] + mod["cpu_ms_per_tile"]
        shared = min(read["tps"], mod["tps"], cores * 1000.0 / max(both_ms, 1e-9))
        out["shared_limit_tps"] = round(shared, 2)
        out["efficiency"] = round(pipe["tps"] / shared, 3)
        out["efficiency_vs_min"] = round(pipe["tps"] / min(read["tps"], mod["tps"]), 3)
        out["cpu_efficiency"] = round(both_ms / pipe["cpu_ms_per_tile"], 3)
    out["visium_minutes"] = round(VISIUM_SPOTS / pipe["tps"] / 60, 2)
    if "naive" in details:
        out["speedup_vs_naive"] = round(pipe["tps"] / details["naive"]["tps"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--slides",
        default="large,cmu",
        help="comma-separated: large (synthetic TIFF), cmu (CMU-1-Small-Region.svs), or paths",
    )
    parser.add_argument("--grid", choices=("visium", "dense"), default="visium")
    parser.add_argument(
        "--max-spots",
        type=int,
        default=2000,
        help="tiles per slide, evenly subsampled over the tissue grid (default 2000)",
    )
    parser.add_argument(
        "--sample",
        choices=("bands", "spots"),
        default="bands",
        help="bands: evenly spaced bands of consecutive grid rows (full-run locality); "
        "spots: every k-th spot (worst-case locality)",
    )
    parser.add_argument("--full", action="store_true", help="every tissue spot of each slide")
    parser.add_argument(
        "--naive-max-spots",
        type=int,
        default=300,
        help="tiles for the (slow) naive loop, evenly subsampled from the same tiles",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--bundled", action="store_true", help="also measure every bundled (shipped) model"
    )
    parser.add_argument("--precision", choices=("fp32", "int8", "auto"), default="fp32")
    parser.add_argument(
        "--read-threads", type=int, default=None, help="default: the engine's thread plan"
    )
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--intra-op-threads", type=int, default=None)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: each round runs every measurement of every --cpus set and side once "
        "(alternating their order); each figure is the median of the rounds",
    )
    parser.add_argument(
        "--cpus",
        nargs="+",
        metavar="LIST",
        help="CPU sets to pin the measurements to, as taskset -c takes them (e.g. 0 0,1); "
        "each gets its own thread plan. Default: this process's affinity",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=["spin"],
        help="how the model's threads wait and the readers run (this checkout only): spin "
        "(ONNX Runtime busy-waits between operators, the CLI's setting), nospin (its "
        "threads sleep), nospin-nice (and the tile readers run at niceness 10)",
    )
    parser.add_argument(
        "--base",
        metavar="REV",
        help="also measure the package at commit REV (a temporary git worktree, its src "
        "first on PYTHONPATH; this checkout's bench), interleaved with this checkout",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        metavar="S",
        help="before each measurement wait up to S s for other processes to leave the CPUs",
    )
    parser.add_argument(
        "--patch",
        type=Path,
        help="Python file run in every measurement process first (to try a src/ change "
        "by monkeypatching)",
    )
    parser.add_argument("--measures", default=",".join(MEASURES))
    parser.add_argument("--size", type=int, default=40960, help="side of the synthetic slide")
    parser.add_argument("--mpp", type=float, default=0.5, help="µm/px of the synthetic slide")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = _child(json.loads(args.child))
        print(_MARK + json.dumps(result), flush=True)
        return 0

    from make_large_tiff import cached_large_tiff
    from napari_virtual_st.pipeline import plan_threads, read_share_for, usable_cores
    from napari_virtual_st.precision import choose_model
    from resnet18_torch import cached_benchmark_model

    model_paths = [cached_benchmark_model(CACHE)]
    if args.bundled:
        from napari_virtual_st.registry import bundled_models_dir

        model_paths += sorted(bundled_models_dir().glob("*.onnx"))
    cores = usable_cores()
    slides: list[tuple[Path, bool]] = []
    for name in args.slides.split(","):
        if name == "large":
            slides.append((cached_large_tiff(CACHE, args.size, args.mpp), True))
        elif name == "cmu":
            if CMU_SLIDE.exists():
                slides.append((CMU_SLIDE, False))
            else:
                print(f"skipping {CMU_SLIDE}: not found", file=sys.stderr)
        else:
            slides.append((Path(name).resolve(), False))
    measures = [m for m in args.measures.split(",") if m]
    settings = {
        "network": "resnet18 torch export (resnet18_torch.py)",
        "precision": args.precision,
        "cores": cores,
        "grid": args.grid,
        "max_spots": None if args.full else args.max_spots,
        "sample": args.sample,
        "naive_max_spots": args.naive_max_spots,
        "batch_size": args.batch_size,
        "read_threads": args.read_threads,
        "prefetch": args.prefetch,
        "intra_op_threads": args.intra_op_threads,
        "repeat": args.repeat,
        "patch": None if args.patch is None else source_label(args.patch),
    }
    cpu_sets = [_parse_cpus(c) for c in args.cpus] if args.cpus else [None]
    worktrees = contextlib.ExitStack()  # (the base revision's, removed at the end)
    base_tree = worktrees.enter_context(base_worktree(args.base)) if args.base else None
    sides: list[tuple[str, Path | None]] = [
        ("this" if v == "spin" else f"this/{v}", None) for v in args.variants
    ]
    if base_tree is not None:
        sides = [("base", base_tree / "src"), *sides]
    configs = [(cpus, side) for cpus in cpu_sets for side in sides]
    entries = []
    models = []
    try:
        for fp32_path, (path, synthetic) in ((m, s) for m in model_paths for s in slides):
            choice = choose_model(fp32_path, args.precision)
            model = _model_meta(choice.path)
            if model not in models:
                models.append(model)
            label = ("resnet18-torch" if fp32_path.parent == CACHE else fp32_path.stem) + (
                "" if choice.precision == "fp32" else f" ({choice.precision})"
            )
            runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            threads_of: dict[int, dict[str, int]] = {}
            for round_ in range(max(1, args.repeat)):
                # alternate the order so warm-up and drifting load favour no configuration
                for cpus, (side, src) in configs if round_ % 2 == 0 else configs[::-1]:
                    n_cores = len(cpus) if cpus else cores
                    plan = plan_threads(n_cores, read_share=read_share_for(model["tile_px"]))
                    threads = threads_of.setdefault(
                        n_cores,
                        {
                            "read_threads": args.read_threads or plan.read_threads,
                            "intra_op_threads": args.intra_op_threads or plan.model_threads,
                        },
                    )
                    for measure in measures:
                        spec = {
                            **settings,
                            **threads,
                            **VARIANTS[side.partition("/")[2] or "spin"],
                            "cpus": cpus,
                            "extra_inputs": model["extra_inputs"],
                            "measure": measure,
                            "slide": str(path),
                            "model": str(choice.path),
                            "tile_px": model["tile_px"],
                            "tile_um": model["tile_um"],
                        }
                        waited = _wait_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
                        res = {**_run_child(spec, src), "waited_for_idle_s": round(waited, 1)}
                        res["loadavg_1min"] = round(os.getloadavg()[0], 2)
                        runs.setdefault((str(cpus), side, measure), []).append(res)
                        print(
                            f"round {round_ + 1} {path.name} {label} {n_cores} core(s) {side}: "
                            f"{measure} {res['tps']:.1f} tiles/s, {res['cpu_ms_per_tile']:.1f} "
                            f"CPU-ms/tile (others used {res['other_load_cores']:.2f} cores)",
                            flush=True,
                        )
            for cpus, (side, _src) in configs:
                n_cores = len(cpus) if cpus else cores
                details = {m: _median_run(runs[(str(cpus), side, m)]) for m in measures}
                entry = {
                    "model": label,
                    "slide": path.name,
                    "path": source_label(path),
                    "synthetic": synthetic,
                    "cores": n_cores,
                    "cpus": cpus,
                    "side": side,
                    "commit": args.base if side == "base" else checkout_revision(),
                    **threads_of[n_cores],
                    **_derive(details, n_cores),
                    "details": details,
                }
                entries.append(entry)
        if base_tree is not None:
            for entry in entries:
                if entry["side"] == "base":
                    continue
                base = next(
                    e
                    for e in entries
                    if e["side"] == "base"
                    and (e["model"], e["slide"], e["cores"])
                    == (entry["model"], entry["slide"], entry["cores"])
                )
                for key in ("pipeline_tps", "read_tps", "model_tps"):
                    if entry.get(key) and base.get(key):
                        entry[f"{key}_vs_base"] = round(entry[key] / base[key], 3)
                if entry.get("pipeline_cpu_ms") and base.get("pipeline_cpu_ms"):
                    entry["pipeline_cpu_ms_vs_base"] = round(
                        entry["pipeline_cpu_ms"] / base["pipeline_cpu_ms"], 3
                    )
    finally:
        worktrees.close()

    print()
    print(_table(entries))
    result = {
        "benchmark": "napari-virtual-st predict_slide pipeline (benchmarks/bench_pipeline.py)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "models": models,
        "settings": {**settings, "base": args.base, "cpus": args.cpus},
        "targets": TARGETS,
        "slides": entries,
    }
    if args.json is not None:
        write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
