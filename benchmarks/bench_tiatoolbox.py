"""Side by side with TIAToolbox: the same slide, weights, patches, batch size and threads.

Issue 20 asks for whole-slide ≥ 3× TIAToolbox's default torch path and ahead of TIAToolbox
with ONNX Runtime, at equal accuracy. Three paths run the same work, taking turns in fresh
processes (``--repeat`` rounds, the order alternating):

- ``ours``: ``run(RunSpec)`` (what the CLI calls: slide open, bright-field check, model
  load, ``predict_slide`` into a fresh store) with the ONNX export of the BENCHMARK
  ResNet-18 (``resnet18_torch.py``: random weights, 250 outputs), in this environment;
- ``ours-int8``: the same with ``precision="int8"`` (``virtual-st predict --precision
  int8``): the int8 variant ``napari_virtual_st.precision.choose_model`` makes of that file
  (calibrated on the sample slide's tiles, made once before the rounds and cached under
  ``VST_CACHE_DIR``, by default ``benchmarks/.cache/vst``); its accuracy is judged by the
  product's own int8 gate against ``ours`` on every patch of the benchmark (per-output r,
  median ≥ 0.99, every output ≥ 0.95);
- ``tia-torch``: TIAToolbox's ``PatchPredictor`` in whole-slide mode with the same network
  in torch (its default path), loaded from the saved ``state_dict`` of the same weights;
- ``tia-ort``: TIAToolbox's engine with the model call replaced by ONNX Runtime on the same
  ONNX file (TIAToolbox has no ONNX path of its own; skipped when the other environment
  lacks onnxruntime).

The TIAToolbox paths run ``tiatoolbox_child.py`` with ``--tia-python`` (a separate
environment: TIAToolbox pulls a CUDA torch of several GB, kept out of this project's
environment and CI); that script never imports this package. Patches: TIAToolbox's regular
grid of 224 px patches (stride = patch), read at the slide's own resolution where that is
the model's 0.5 µm/px to within a pixel over the tile (both test slides: then both tools
read the very same pixels), else at 0.5 µm/px; the cells with tissue (this package's
detection, ≥ 50 %), wholly on the slide, subsampled to ``--max-patches`` in bands of whole
rows, are given to both: to ours as spot centres, to TIAToolbox as a mask covering exactly
those cells (:func:`choose_cells`). Outputs are compared per output (Pearson r over the
shared patches, every output ≥ ``--min-r``) so the rates compare equal accuracy.

Per path: patches/s (patches / the run's wall time, model load included), median and range
over the rounds; CPU-ms per patch (the process's CPU over the run); peak RSS of the process;
time from process start (spawn) to the first batch out of the model (ours: in the store);
and the ratios of ours to each TIAToolbox path.

Usage::

    python benchmarks/bench_tiatoolbox.py --tia-python VENV/bin/python --repeat 3 \\
        --json benchmarks/results/tiatoolbox.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_pipeline import (  # noqa: E402
    CACHE,
    CMU_SLIDE,
    _busy_s,
    _fmt,
    _machine,
    _subsample,
    _wait_idle,
)
from resnet18_torch import TILE_PX  # noqa: E402
from revisions import (  # noqa: E402
    checkout_revision,
    child_result,
    source_label,
    write_results,
)

PATHS = ("ours", "ours-int8", "tia-torch", "tia-ort")
OURS = ("ours", "ours-int8")
TILE_UM = 112.0  # 224 px at 0.5 µm/px
TARGETS = {"speed_vs_tia_torch_min": 3.0, "speed_vs_tia_ort_min": 1.0, "min_r": 0.99}
_MARK = "@@RESULT@@ "
_TIA_MARK = "@@TIA_RESULT@@ "
_CHILD = HERE / "tiatoolbox_child.py"
#: Run by ``--tia-python`` to see what that environment has (versions, or None).
_PROBE = """
import importlib, json
out = {}
for name in ("tiatoolbox", "torch", "onnxruntime", "zarr"):
    try:
        out[name] = importlib.import_module(name).__version__
    except Exception as exc:
        out[name] = None
        out[name + "_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if name == "tiatoolbox":
            break
print(json.dumps(out))
"""


# --------------------------------------------------------------------------------------------
# the other environment
# --------------------------------------------------------------------------------------------
def _tia_env() -> dict[str, str]:
    """The environment for the other Python: without this checkout on its path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def probe_tia(tia_python: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """What ``tia_python`` has: ``(versions, None)``, or ``(None, why this benchmark is
    skipped)`` when no Python is given, it does not run, or it cannot import TIAToolbox."""
    if not tia_python:
        return None, (
            "skipped: no --tia-python given. TIAToolbox is compared from a separate "
            "environment (its install pulls a CUDA torch of several GB), e.g. python3 -m venv "
            "VENV && VENV/bin/pip install tiatoolbox onnxruntime, then --tia-python "
            "VENV/bin/python"
        )
    try:
        proc = subprocess.run(
            [tia_python, "-c", _PROBE],
            capture_output=True,
            text=True,
            check=False,
            env=_tia_env(),
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"skipped: --tia-python {tia_python} does not run ({exc})"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"skipped: --tia-python {tia_python} failed ({tail})"
    info: dict[str, Any] = json.loads(lines[-1])
    if info.get("tiatoolbox") is None:
        return None, (
            f"skipped: TIAToolbox is not installed for --tia-python {tia_python} "
            f"({info.get('tiatoolbox_error')})"
        )
    return info, None


# --------------------------------------------------------------------------------------------
# the shared work and the agreement check
# --------------------------------------------------------------------------------------------
def choose_cells(slide_path: Path, max_patches: int | None) -> dict[str, Any]:
    """The patch-grid cells both sides run on ``slide_path``, and how TIAToolbox reads them.

    Where level 0 holds a 112 µm tile as 224 px to within one pixel (0.5 µm/px, or 0.499 as
    CMU-1's scanner), this package's reader takes the level's own pixels, so TIAToolbox reads
    at ``baseline`` and the grid's pitch is 224 level-0 px: both read the very same pixels.
    Elsewhere TIAToolbox reads at 0.5 µm/px and the pitch is 112 µm (both resample, each its
    own way). Cells: tissue ≥ 50 % (this package's detection), wholly on the slide, in evenly
    spaced bands of whole rows.
    """
    from napari_virtual_st import Slide
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.tissue import detect_tissue

    with Slide(slide_path) as slide:
        native = abs(TILE_UM / slide.mpp - TILE_PX) < 1.0
        cell_um = TILE_PX * slide.mpp if native else TILE_UM
        grid = SpotGrid.square(
            slide.dimensions, slide.mpp, cell_um, cell_um, first_um=cell_um / 2, kind="dense"
        ).filter_tissue(detect_tissue(slide), 0.5)
        total = len(grid)
        if max_patches and total > max_patches:
            grid = grid.subset(_subsample(grid.lattice_rc, max_patches, "bands"))
        return {
            "cells_rc": grid.lattice_rc.astype(np.int64).tolist(),
            "xy_level0_px": grid.xy_level0_px.tolist(),
            "mpp": slide.mpp,
            "tissue_cells": total,
            "tia_read": (
                {"units": "baseline", "resolution": 1.0}
                if native
                else {"units": "mpp", "resolution": TILE_UM / TILE_PX}
            ),
        }


def agreement(
    cells_a: np.ndarray,
    values_a: np.ndarray,
    cells_b: np.ndarray,
    values_b: np.ndarray,
    min_r: float = TARGETS["min_r"],
    min_median_r: float | None = None,
) -> dict[str, Any]:
    """Per-output Pearson r between two runs' values on the patches both ran.

    ``cells_*`` are ``(n, 2)`` (row, col) grid cells in any order, ``values_*`` ``(n, G)``.
    ``passed``: at least 2 shared patches, every output's r ≥ ``min_r`` (an output
    constant on one side has no r and fails) and, when given, the median r ≥
    ``min_median_r`` (the int8 gate's two thresholds).
    """
    cells_a, cells_b = np.asarray(cells_a).reshape(-1, 2), np.asarray(cells_b).reshape(-1, 2)
    index_b = {(int(r), int(c)): i for i, (r, c) in enumerate(cells_b)}
    pairs = [
        (i, index_b[(int(r), int(c))]) for i, (r, c) in enumerate(cells_a) if (r, c) in index_b
    ]
    out: dict[str, Any] = {"n_a": len(cells_a), "n_b": len(cells_b), "n_shared": len(pairs)}
    if len(pairs) < 2:
        return {**out, "min_r": None, "median_r": None, "passed": False}
    ia, ib = (np.array(p) for p in zip(*pairs, strict=True))
    a = np.asarray(values_a, np.float64)[ia]
    b = np.asarray(values_b, np.float64)[ib]
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (a * b).sum(axis=0) / denom, np.nan)
    worst = float(np.nanmin(r)) if np.isfinite(r).any() else None
    return {
        **out,
        "min_r": None if worst is None else round(worst, 6),
        "median_r": None if worst is None else round(float(np.nanmedian(r)), 6),
        "outputs_without_r": int(np.isnan(r).sum()),
        "max_abs_diff": round(float(np.abs(a - b).max()), 6),
        "min_r_required": min_r,
        "min_median_r_required": min_median_r,
        "passed": bool(
            np.isfinite(r).all()
            and r.min() >= min_r
            and (min_median_r is None or np.median(r) >= min_median_r)
        ),
    }


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and ranges per path over the rounds, and ours against each other path.

    ``speed_vs_<path>``: ours' patches/s / that path's (medians); ``cpu_vs_<path>``: that
    path's CPU-ms per patch / ours' (how many times the CPU it spends); ``rss_vs_<path>`` and
    ``first_result_vs_<path>``: that path's / ours'. The same for ``ours-int8`` against
    every other path, ``ours`` included, prefixed ``ours_int8_``.
    """
    keys = ("tps", "cpu_ms_per_tile", "peak_rss_mb", "first_result_s", "other_load_cores")
    paths: dict[str, Any] = {}
    for path, rounds in runs.items():
        entry: dict[str, Any] = {"rounds": len(rounds), "spots": rounds[0]["spots"]}
        for key in keys:
            vals = [r[key] for r in rounds if r.get(key) is not None]
            if vals:
                entry[key] = round(float(median(vals)), 3)
                entry[f"{key}_range"] = [min(vals), max(vals)]
        paths[path] = entry
    ratios: dict[str, float] = {}
    for mine, prefix in (("ours", ""), ("ours-int8", "ours_int8_")):
        ours = paths.get(mine)
        for path, entry in paths.items():
            if ours is None or path == mine or (mine == "ours" and path == "ours-int8"):
                continue
            name = path.replace("-", "_")
            ratios[f"{prefix}speed_vs_{name}"] = round(ours["tps"] / entry["tps"], 3)
            ratios[f"{prefix}cpu_vs_{name}"] = round(
                entry["cpu_ms_per_tile"] / ours["cpu_ms_per_tile"], 3
            )
            ratios[f"{prefix}rss_vs_{name}"] = round(entry["peak_rss_mb"] / ours["peak_rss_mb"], 3)
            ratios[f"{prefix}first_result_vs_{name}"] = round(
                entry["first_result_s"] / ours["first_result_s"], 3
            )
    return {"paths": paths, "ratios": ratios}


# --------------------------------------------------------------------------------------------
# ours: one run in a fresh process of this environment
# --------------------------------------------------------------------------------------------
def _ours_child(spec: dict[str, Any]) -> dict[str, Any]:
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.run import BatchEvent, RunSpec, run

    first: dict[str, float] = {}

    def on_event(event: Any) -> None:
        if isinstance(event, BatchEvent):
            first.setdefault("epoch", time.time())

    grid = SpotGrid.from_coordinates(
        spec["xy_level0_px"], spec["mpp"], TILE_UM, lattice_rc=spec["cells_rc"]
    )
    with tempfile.TemporaryDirectory(prefix="vst-bench-ours-") as tmp:
        run_spec = RunSpec(
            slide_path=Path(spec["slide"]),
            model_path=Path(spec["onnx"]),
            store_path=Path(tmp) / "bench.vst.zarr",
            spots=grid,
            batch_size=spec["batch_size"],
            intra_op_threads=spec["threads"],
            precision=spec.get("precision", "fp32"),
        )
        t0, c0 = time.perf_counter(), _cpu_s()
        store = run(run_spec, progress=on_event)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        values = store.expression(per_tile=True)
        cells = store.lattice_rc
    np.savez(spec["out_npz"], cells_rc=cells, values=values)
    n = len(values)
    from napari_virtual_st.pipeline import plan_threads, read_share_for, usable_cores

    plan = plan_threads(usable_cores(), read_share=read_share_for(TILE_PX))
    return {
        "path": spec["path"],
        "precision": (store.attrs.get("model") or {}).get("precision", "fp32"),
        "spots": n,
        "seconds": round(wall, 3),
        "tps": round(n / wall, 2),
        "cpu_ms_per_tile": round(1000 * cpu / n, 2),
        "first_result_s": round(first["epoch"] - spec["spawn_epoch"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "read_threads": plan.read_threads,
        "model_threads": spec["threads"] or plan.model_threads,
        "src": source_label(Path(sys.modules["napari_virtual_st"].__file__).parent.parent),
    }


def prepare_int8(onnx_path: Path) -> dict[str, Any]:
    """Make (or find) the int8 variant ``ours-int8`` runs, before any timed run, exactly as
    ``--precision int8`` would on first use; the cache is ``VST_CACHE_DIR`` (by default
    ``benchmarks/.cache/vst``, so the user's cache is left alone).

    Quantising runs in a child process: calibration holds up to the precision module's
    budget of activations (512 MiB; the process peaked at 0.84 GB for this ResNet-18, 5.3 GB
    before the budget), and Linux carries a process's peak RSS into the children it starts,
    so made here it would be every later run's "peak RSS"; the child's own peak is recorded.
    """
    os.environ.setdefault("VST_CACHE_DIR", str(CACHE / "vst"))
    return child_result(
        [sys.executable, str(Path(__file__).resolve()), "--prepare-int8", str(onnx_path)],
        _MARK,
        "making the int8 variant",
        cwd=REPO,
    )


def _prepare_int8_child(onnx_path: Path) -> dict[str, Any]:
    from napari_virtual_st.precision import choose_model

    start = time.perf_counter()
    choice = choose_model(onnx_path, "int8")
    return {
        "file": choice.path.name,
        "reason": choice.reason,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def agreements(outputs: dict[str, Path], paths: Sequence[str], min_r: float) -> dict[str, Any]:
    """Every comparison that makes the rates ones of equal accuracy: ``ours`` against each
    TIAToolbox path (every output r ≥ ``min_r``), the two TIAToolbox paths against each other
    (the same reads: the engines alone), and ``ours-int8`` against ``ours`` by the product's
    int8 gate (median r ≥ 0.99, every output ≥ 0.95)."""
    from napari_virtual_st.precision import MIN_GENE_R, MIN_MEDIAN_GENE_R

    tia = [p for p in paths if p not in OURS]
    pairs: list[tuple[str, str, float, float | None]] = [
        ("ours", p, min_r, None) for p in tia if "ours" in paths
    ]
    if {"tia-torch", "tia-ort"} <= set(paths):
        pairs.append(("tia-torch", "tia-ort", min_r, None))
    if set(OURS) <= set(paths):
        pairs.append(("ours-int8", "ours", MIN_GENE_R, MIN_MEDIAN_GENE_R))
    out = {}
    for a, b, least, median_r in pairs:
        one, two = np.load(outputs[a]), np.load(outputs[b])
        out[f"{a} vs {b}"] = agreement(
            one["cells_rc"], one["values"], two["cells_rc"], two["values"], least, median_r
        )
    return out


def verdicts(entry: dict[str, Any]) -> list[str]:
    """Each of our paths against the issue's targets: ≥ 3× TIAToolbox's default (torch),
    ahead of TIAToolbox + ONNX Runtime, at equal accuracy (the agreement checks)."""
    ratios, agree = entry["ratios"], entry["agreement"]
    lines = []
    for mine, prefix in (("ours", ""), ("ours-int8", "ours_int8_")):
        if mine not in entry["paths"]:
            continue
        checks = [f"{mine} vs ours"] if mine == "ours-int8" else []
        checks += [f"ours vs {p}" for p in entry["paths"] if p not in OURS]
        accurate = all(agree[c]["passed"] for c in checks if c in agree)
        parts = []
        for path, key in (("tia-torch", "tia_torch_min"), ("tia-ort", "tia_ort_min")):
            ratio = ratios.get(f"{prefix}speed_vs_{path.replace('-', '_')}")
            if ratio is not None:
                met = "met" if ratio >= TARGETS[f"speed_vs_{key}"] else "NOT met"
                parts.append(
                    f"{ratio:.2f}× {path} (target ≥ {TARGETS[f'speed_vs_{key}']:g}: {met})"
                )
        accuracy = "equal accuracy" if accurate else "accuracy check FAILED"
        lines.append(f"{mine}: {', '.join(parts) or 'no TIAToolbox path'}; {accuracy}")
    return lines


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _spawn(path: str, spec: dict[str, Any], tia_python: str | None) -> dict[str, Any]:
    """One run of ``path`` in a fresh process; the parent adds the process's wall time and
    the cores other processes used meanwhile."""
    if path in OURS:
        argv, env, mark = [sys.executable, str(Path(__file__).resolve()), "--child"], None, _MARK
    else:
        argv, env, mark = [str(tia_python), str(_CHILD)], _tia_env(), _TIA_MARK
    spec_file = Path(spec["out_npz"]).with_suffix(".json")  # (argv would be too short)
    spec_file.write_text(json.dumps(spec))
    busy0, child0 = _busy_s(), _children_cpu_s()
    spawn = time.time()
    res = child_result(
        [*argv, str(spec_file), repr(spawn)], mark, f"{path} run", env=env, cwd=REPO
    )
    process_s = time.time() - spawn
    child_cpu = _children_cpu_s() - child0
    res["process_s"] = round(process_s, 3)
    res["other_load_cores"] = round(max(0.0, _busy_s() - busy0 - child_cpu) / process_s, 2)
    res["loadavg_1min"] = round(os.getloadavg()[0], 2)
    return res


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def _table(entries: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'slide':>28} {'path':>9} {'patches':>7} {'patches/s (range)':>21} "
        f"{'CPU-ms/patch':>12} {'peak RSS MB':>11} {'first s':>7} {'ours ×':>7} {'int8 ×':>7}"
    )
    lines = [head]
    for e in entries:
        for path, p in e["paths"].items():
            lo, hi = p["tps_range"]
            rng = f"{p['tps']:.1f} ({lo:.1f}–{hi:.1f})"
            name = path.replace("-", "_")
            ratio = e["ratios"].get(f"speed_vs_{name}")
            int8 = e["ratios"].get(f"ours_int8_speed_vs_{name}")
            lines.append(
                f"{e['slide'][-28:]:>28} {path:>9} {p['spots']:>7d} {rng:>21} "
                f"{p['cpu_ms_per_tile']:>12.1f} {p['peak_rss_mb']:>11.0f} "
                f"{p['first_result_s']:>7.2f} {_fmt(ratio, '.2f'):>7} {_fmt(int8, '.2f'):>7}"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tia-python",
        help="the Python of an environment with TIAToolbox (and onnxruntime for tia-ort); "
        "without it the benchmark is skipped",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--slides",
        default="her2st,large,cmu",
        help="comma-separated: large (the synthetic TIFF of bench_pipeline), her2st (a real "
        "HER2ST H&E section written as a 0.5 µm/px pyramidal TIFF, make_large_tiff.py), cmu "
        "(CMU-1-Small-Region.svs), or paths",
    )
    parser.add_argument("--size", type=int, default=40960, help="side of the synthetic slide")
    parser.add_argument(
        "--max-patches",
        type=int,
        default=1500,
        help="patches per slide (bands of whole grid rows; 0: every tissue cell)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (order alternating)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="model threads of every path (ONNX Runtime intra-op, torch.set_num_threads); "
        "default: the cores this process may use",
    )
    parser.add_argument(
        "--tia-workers",
        type=int,
        default=0,
        help="TIAToolbox DataLoader workers (0, its default: patches read in the main "
        "process between batches)",
    )
    parser.add_argument(
        "--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}"
    )
    parser.add_argument("--min-r", type=float, default=TARGETS["min_r"])
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S s for other processes to leave the CPUs",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a run's spec (a JSON file)
    parser.add_argument("--prepare-int8", type=Path, help=argparse.SUPPRESS)  # (an fp32 file)
    parser.add_argument("spawn", nargs="?", help=argparse.SUPPRESS)  # (its start, epoch s)
    return parser


def parse_paths(text: str) -> list[str]:
    """``--paths``: the known paths named, in the benchmark's order; ``ours`` required."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PATHS))
    if unknown:
        raise SystemExit(f"--paths: unknown {', '.join(unknown)} (known: {', '.join(PATHS)})")
    if "ours" not in names:
        raise SystemExit("--paths must include ours (every ratio is against it)")
    return [p for p in PATHS if p in names]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        spec = {**json.loads(Path(args.child).read_text()), "spawn_epoch": float(args.spawn)}
        print(_MARK + json.dumps(_ours_child(spec)), flush=True)
        return 0
    if args.prepare_int8:
        print(_MARK + json.dumps(_prepare_int8_child(args.prepare_int8)), flush=True)
        return 0
    paths = parse_paths(args.paths)
    info, why = probe_tia(args.tia_python)
    if info is None:
        print(f"bench_tiatoolbox: {why}", file=sys.stderr)
        return 0
    if "tia-ort" in paths and info.get("onnxruntime") is None:
        print(
            "bench_tiatoolbox: tia-ort left out: onnxruntime is not installed for "
            f"--tia-python ({info.get('onnxruntime_error')})",
            file=sys.stderr,
        )
        paths.remove("tia-ort")

    from make_large_tiff import cached_her2st_tiff, cached_large_tiff
    from napari_virtual_st.pipeline import usable_cores
    from resnet18_torch import cached_benchmark_model, cached_benchmark_weights

    onnx_path = cached_benchmark_model(CACHE)
    weights = cached_benchmark_weights(CACHE)
    threads = args.threads or usable_cores()
    int8 = prepare_int8(onnx_path) if "ours-int8" in paths else None
    slides: list[tuple[Path, bool]] = []
    for name in args.slides.split(","):
        if name == "large":
            slides.append((cached_large_tiff(CACHE, args.size, 0.5), True))
        elif name == "her2st":
            try:
                slides.append((cached_her2st_tiff(CACHE), False))
            except FileNotFoundError as exc:
                print(f"skipping the HER2ST slide: {exc}")
        elif name == "cmu":
            if CMU_SLIDE.exists():
                slides.append((CMU_SLIDE, False))
            else:
                print(f"skipping CMU-1-Small-Region.svs: not found in {CMU_SLIDE.parent}")
        else:
            slides.append((Path(name).resolve(), False))
    settings = {
        "network": "resnet18 torch (resnet18_torch.py, seed 0, 250 outputs); ours: its ONNX "
        "export, tia-torch: its state_dict, tia-ort: the same ONNX file",
        "tile_px": TILE_PX,
        "tile_um": TILE_UM,
        "batch_size": args.batch_size,
        "threads": threads,
        "tia_workers": args.tia_workers,
        "max_patches": args.max_patches or None,
        "repeat": args.repeat,
        "paths": paths,
        "int8": int8,
        "patches": "the dense 224 px / 0.5 µm grid (TIAToolbox's stride = patch grid), "
        "tissue cells wholly on the slide, bands of whole rows",
    }
    entries = []
    uptime = {"loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="vst-bench-tia-") as tmp:
        for slide_path, synthetic in slides:
            cells = choose_cells(slide_path, args.max_patches or None)
            print(
                f"{slide_path.name}: {len(cells['cells_rc'])} patches "
                f"(of {cells['tissue_cells']} tissue cells)",
                flush=True,
            )
            base = {
                "slide": str(slide_path),
                "onnx": str(onnx_path),
                "weights": str(weights),
                "genes": 250,
                "tile_px": TILE_PX,
                "batch_size": args.batch_size,
                "threads": threads,
                "num_workers": args.tia_workers,
                **cells,
            }
            runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
            outputs: dict[str, Path] = {}
            for round_ in range(max(1, args.repeat)):
                order = paths if round_ % 2 == 0 else paths[::-1]
                for path in order:
                    out_npz = Path(tmp) / f"{slide_path.stem}_{path}_{round_}.npz"
                    outputs.setdefault(path, out_npz)
                    waited = _wait_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
                    spec = {
                        **base,
                        "path": path.removeprefix("tia-"),
                        "precision": "int8" if path == "ours-int8" else "fp32",
                        "out_npz": str(out_npz),
                    }
                    res = _spawn(path, spec, args.tia_python)
                    res["waited_for_idle_s"] = round(waited, 1)
                    runs[path].append(res)
                    print(
                        f"round {round_ + 1} {slide_path.name} {path}: {res['tps']:.1f} "
                        f"patches/s, {res['cpu_ms_per_tile']:.1f} CPU-ms/patch, "
                        f"RSS {res['peak_rss_mb']:.0f} MB, first {res['first_result_s']:.2f} s "
                        f"(others used {res['other_load_cores']:.2f} cores)",
                        flush=True,
                    )
            agree = agreements(outputs, paths, args.min_r)
            entries.append(
                {
                    "slide": slide_path.name,
                    "path": source_label(slide_path),
                    "synthetic": synthetic,
                    "tissue_cells": cells["tissue_cells"],
                    **summarise(runs),
                    "tia_read": cells["tia_read"],
                    "agreement": agree,
                    "runs": runs,
                }
            )
    uptime["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]

    print()
    print(_table(entries))
    for e in entries:
        for pair, a in e["agreement"].items():
            verdict = "agree" if a["passed"] else "DO NOT AGREE"
            print(
                f"{e['slide']}: {pair}: {a['n_shared']} shared patches, per-output r "
                f"min {_fmt(a['min_r'], '.4f')}, median {_fmt(a['median_r'], '.4f')}: {verdict}"
            )
    for e in entries:
        for line in verdicts(e):
            print(f"{e['slide']}: {line}")
    print(f"load average (1, 5, 15 min): {uptime['loadavg_start']} → {uptime['loadavg_end']}")
    result = {
        "benchmark": "ours against TIAToolbox, side by side (benchmarks/bench_tiatoolbox.py)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": checkout_revision(),
        "machine": _machine(),
        "tia_environment": info,
        "settings": settings,
        "targets": TARGETS,
        "load": uptime,
        "slides": entries,
    }
    if args.json is not None:
        write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
