"""The GPU path, measured: provider, tiles/s per model and batch size, and the whole-slide rate.

Run it wherever a GPU is available (issue 20 item 4: aim ≥ 2,000 tiles/s for the DKAN-style
model on one H100; reading then becomes the limit). It runs anywhere (on a machine without a
GPU it measures the CPU provider, which is how it is checked here), and prints a table and,
with ``--json``, a record:

    python benchmarks/bench_gpu.py --json benchmarks/results/gpu_<machine>.json
    python benchmarks/bench_gpu.py --providers cuda        # CUDA only (no TensorRT)
    python benchmarks/bench_gpu.py --quick                 # a smoke run: small batches, 1 s each

**Model only**: each model (the bundled ones, and the benchmark ResNet-18 when torch is
installed to export it) on random uint8 tiles of its own size, for each batch size, with
``session.run`` and with I/O binding (:class:`~napari_virtual_st.predictor.Predictor`'s
``io_binding``, the default on CUDA/TensorRT), after a warm-up (TensorRT builds its engine
there: minutes the first time, cached after). Median tiles/s over repeated timed calls.

**Whole slide**: :func:`napari_virtual_st.run.run` (the CLI's and the plugin's engine) on the
synthetic JPEG TIFF of ``make_large_tiff.py`` (0.5 µm/px), every spot of a dense grid on tissue,
batch size as given: spots/s from the first read to the last write, so reading, decoding and
storing count. Compare it with the model-only rate to see which is the limit.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_large_tiff import cached_large_tiff  # noqa: E402
from napari_virtual_st.predictor import Predictor, resolve_providers  # noqa: E402
from napari_virtual_st.registry import bundled_models  # noqa: E402
from napari_virtual_st.run import RunSpec, run  # noqa: E402

CACHE = HERE / ".cache"


def tiles_per_second(
    predictor: Predictor, batch: int, seconds: float, repeats: int = 5
) -> dict[str, float]:
    """Median (and range) of tiles/s over ``repeats`` timed windows of ~``seconds`` / repeats."""
    px = predictor.info.tile_px
    tiles = np.random.default_rng(0).integers(0, 256, (batch, px, px, 3), dtype=np.uint8)
    ids = np.arange(batch)
    predictor.predict(tiles, ids)  # warm-up (TensorRT builds or loads its engine here)
    predictor.predict(tiles, ids)
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            predictor.predict(tiles, ids)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / repeats:
                break
        rates.append(calls * batch / elapsed)
    return {
        "tiles_per_s": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
    }


def whole_slide(
    model: Path, slide: Path, providers: list[str], batch: int, max_spots: int
) -> dict[str, Any]:
    """Spots/s of one engine run on the synthetic slide (dense grid, at most ``max_spots``,
    spread over the whole slide so reads are not cache-friendly)."""
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.slide import Slide

    tile_um = Predictor(model, ["CPUExecutionProvider"]).info.tile_um
    with Slide(slide) as s:
        grid = SpotGrid.dense(s.dimensions, s.mpp, tile_um)
    step = max(1, len(grid) // max_spots)
    spots = grid.subset(np.arange(0, len(grid), step)[:max_spots])
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(
            slide_path=slide,
            model_path=model,
            store_path=Path(tmp) / "bench.vst.zarr",
            spots=spots,
            providers=tuple(providers),
            batch_size=batch,
        )
        start = time.perf_counter()
        store = run(spec)
        seconds = time.perf_counter() - start
        done = int(store.done.sum())
    return {"spots": done, "seconds": round(seconds, 2), "spots_per_s": round(done / seconds, 1)}


def models_to_measure(with_resnet: bool) -> list[tuple[str, Path]]:
    found = [(m.name, m.path) for m in bundled_models()]
    if with_resnet:
        try:
            from resnet18_torch import cached_benchmark_model

            found.append(("resnet18 (benchmark)", cached_benchmark_model(CACHE)))
        except ImportError as exc:  # torch is in the `train` extra only
            print(f"(no ResNet-18: {exc}; install the train extra to export it)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", nargs="+", default=None, help="default: best available")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed per measure")
    parser.add_argument("--slide-size", type=int, default=20480, help="synthetic slide side, px")
    parser.add_argument("--slide-batch", type=int, default=256)
    parser.add_argument("--max-spots", type=int, default=20000)
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: batches 8/32, 1 s")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.seconds = [8, 32], 1.0
        args.slide_size, args.slide_batch, args.max_spots = 8192, 32, 256
    providers = resolve_providers(args.providers)
    record: dict[str, Any] = {
        "providers": providers,
        "onnxruntime": ort.__version__,
        "machine": platform.node(),
        "python": platform.python_version(),
        "models": [],
        "whole_slide": [],
    }
    print(f"providers: {', '.join(providers)} (onnxruntime {ort.__version__})")
    print(f"{'model':<24} {'batch':>6} {'run tiles/s':>12} {'bound tiles/s':>14}")
    models = models_to_measure(not args.no_resnet)
    for name, path in models:
        entry: dict[str, Any] = {"model": name, "file": path.name, "batches": []}
        for batch in args.batch_sizes:
            row: dict[str, Any] = {"batch": batch}
            for key, binding in (("run", False), ("io_binding", True)):
                predictor = Predictor(path, providers, io_binding=binding)
                entry["runs_on"] = predictor.runs_on
                row[key] = tiles_per_second(predictor, batch, args.seconds)
            entry["batches"].append(row)
            print(
                f"{name:<24} {batch:>6} {row['run']['tiles_per_s']:>12.1f} "
                f"{row['io_binding']['tiles_per_s']:>14.1f}",
                flush=True,
            )
        record["models"].append(entry)
    slide = cached_large_tiff(CACHE, args.slide_size)
    print(
        f"\nwhole slide ({slide.name}, at most {args.max_spots} spots, batch {args.slide_batch})"
    )
    for name, path in models:
        result = whole_slide(path, slide, providers, args.slide_batch, args.max_spots)
        record["whole_slide"].append({"model": name, **result})
        print(f"{name:<24} {result['spots']:>7} spots {result['spots_per_s']:>10.1f} spots/s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
