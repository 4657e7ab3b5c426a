"""Slides per hour of ``run_cohort`` on a local Dask cluster with 1 vs 2 (or more) workers.

The cohort is six real slides from ``../shared/data/wsi``: four links to the Aperio
CMU-1-Small-Region.svs (65 Visium spots on tissue each; separate stores) and the two Hamamatsu
NDPI fluorescence slides (DAPI, TRITC). For each model and worker count it runs the whole
cohort into a fresh output folder on a ``LocalCluster`` of worker *processes* (ONNX Runtime
threads per worker = cores / workers) and reports:

- ``slides_per_hour``: slides / (cluster start + the cohort): what a user waits for;
- ``slides_per_hour_warm``: slides / the cohort alone, on the started cluster: what a long
  cohort converges to (the first slide on each worker still pays its imports and model load);
- ``tiles_per_s``: spots predicted / (cluster start + the cohort);
- ``rerun_s``: a second run over the finished folder on the same cluster (every store is
  checked against its slide, model and grid, and skipped).

Each setting runs ``--repeats`` times, alternating the order of worker counts; the run with
the median wall time is reported (with every wall time, and ``slides_per_hour_best`` from
the fastest run). The CPU of the machine this was
written on is shared with other jobs: compare the ``loadavg`` fields before trusting a
difference.

Models: the bundled NSL model (tiny, 16 px tiles: tile reading dominates) and the
random-weight ResNet-18 BENCHMARK model of ``resnet18_torch.py`` (a torch export; 224 px
tiles, ≈1.8 GFLOP a tile: compute dominates).

Usage::

    python benchmarks/bench_cohort.py --json benchmarks/results/cohort.json
    python benchmarks/bench_cohort.py --workers 1 2 4 --models resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WSI = REPO.parent / "shared" / "data" / "wsi"
sys.path.insert(0, str(HERE))

from napari_virtual_st import cohort  # noqa: E402
from napari_virtual_st.registry import bundled_models_dir  # noqa: E402
from resnet18_torch import cached_benchmark_model  # noqa: E402

MODELS = ("nsl", "resnet18")


def make_cohort(folder: Path) -> list[Path]:
    """Six real slides as links in ``folder`` (four CMU-1-Small-Region copies, two NDPI)."""
    cmu = WSI / "CMU-1-Small-Region.svs"
    sources = [(cmu, f"CMU-1-Small-Region-copy{i}.svs") for i in range(1, 5)] + [
        (WSI / name, name)
        for name in ("hamamatsu_test3-DAPI-2-387.ndpi", "hamamatsu_test3-TRITC-2-560.ndpi")
    ]
    missing = [str(src) for src, _ in sources if not src.exists()]
    if missing:
        raise SystemExit(f"real slides missing (../shared/data/wsi): {', '.join(missing)}")
    links = []
    for src, name in sources:
        link = folder / name
        link.symlink_to(src)
        links.append(link)
    return links


def model_path(name: str) -> Path:
    if name == "nsl":
        return bundled_models_dir() / "nsl_her2st.onnx"
    return cached_benchmark_model(HERE / ".cache")


def measure(slides: list[Path], model: Path, workers: int, work: Path) -> dict[str, Any]:
    """One cohort run on a fresh local cluster of ``workers`` processes, then a rerun."""
    from distributed import LocalCluster

    out = work / f"out-{model.stem}-w{workers}-{time.monotonic_ns()}"
    threads = max(1, cohort._available_cores() // workers)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        started = time.perf_counter()
        spec = cohort.CohortSpec(
            model,
            out,
            scheduler=cluster.scheduler_address,
            threads_per_worker=threads,
            allow_non_brightfield=True,  # (the NDPI slides are fluorescence: load, not biology)
        )
        results = cohort.run_cohort(slides, spec)
        finished = time.perf_counter()
        rerun = cohort.run_cohort(slides, spec)
        rerun_s = time.perf_counter() - finished
    failed = [r for r in results if r.status != "done"]
    if failed or any(r.status != "skipped" for r in rerun):
        raise SystemExit(f"benchmark run failed: {failed or rerun}")
    spots = sum(r.spots for r in results)
    wall = finished - start  # cluster start + the cohort (stopping the cluster not counted)
    warm = finished - started
    return {
        "model": model.stem,
        "workers": workers,
        "threads_per_worker": threads,
        "slides": len(results),
        "spots": spots,
        "wall_s": round(wall, 2),
        "cluster_start_s": round(started - start, 2),
        "slides_per_hour": round(len(results) / wall * 3600),
        "slides_per_hour_warm": round(len(results) / warm * 3600),
        "tiles_per_s": round(spots / wall, 1),
        "per_slide_s": {Path(r.slide).name: round(r.seconds, 2) for r in results},
        "rerun_s": round(rerun_s, 2),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time, plus every run's wall time."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["wall_s_all"] = [r["wall_s"] for r in runs]
    row["slides_per_hour_best"] = round(row["slides"] / ordered[0]["wall_s"] * 3600)
    row["repeats"] = len(runs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="vst-bench-cohort-") as tmp:
        work = Path(tmp)
        (work / "slides").mkdir()
        slides = make_cohort(work / "slides")
        for name in args.models:
            model = model_path(name)
            runs: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
            for repeat in range(args.repeats):
                # alternate the order so warm-up and drifting load favour no worker count
                order = args.workers if repeat % 2 == 0 else args.workers[::-1]
                for workers in order:
                    run = measure(slides, model, workers, work)
                    runs[workers].append(run)
                    print(
                        f"{run['model']:<28} workers={workers} repeat {repeat + 1}: "
                        f"{run['slides_per_hour']:>6} slides/h ({run['wall_s']} s, "
                        f"load {run['loadavg_1min_before']})",
                        file=sys.stderr,
                    )
            rows.extend(median_row(runs[w]) for w in args.workers)

    header = (
        f"{'model':<32} {'workers':>7} {'thr/w':>5} {'slides':>6} {'spots':>5} {'wall s':>7} "
        f"{'start s':>7} {'slides/h':>8} {'best /h':>8} {'warm /h':>8} {'tiles/s':>7} "
        f"{'rerun s':>7} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<32} {r['workers']:>7} {r['threads_per_worker']:>5} {r['slides']:>6} "
            f"{r['spots']:>5} {r['wall_s']:>7.1f} {r['cluster_start_s']:>7.1f} "
            f"{r['slides_per_hour']:>8} {r['slides_per_hour_best']:>8} "
            f"{r['slides_per_hour_warm']:>8} {r['tiles_per_s']:>7.1f} "
            f"{r['rerun_s']:>7.1f} {r['loadavg_1min_before']:>5.1f}"
        )
    report = {
        "benchmark": "cohort",
        "machine": {
            "cores": cohort._available_cores(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "note": "CPU shared with other jobs during the run (see the loadavg fields)",
        },
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
