"""Interleaved A/B of whole-slide runs: the old thread sizing vs the engine's plan, fp32 vs int8.

    python benchmarks/compare_threads_precision.py FP32.onnx INT8.onnx [--rounds 3] [--slide S]

Each configuration runs ``predict_slide`` on every dense tile of the slide (default: the
CMU-1-Small-Region.svs beside the checkout) in a fresh process, the configurations taking
turns each round; prints each run, then medians and ranges of tiles/s and CPU-ms per tile.
The int8 file is e.g. ``napari_virtual_st.precision.choose_model(FP32, "int8").path``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
from napari_virtual_st.pipeline import build_grid, predict_slide
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.slide import Slide
cfg = json.loads(sys.argv[1])
slide = Slide(cfg["slide"])
pred = Predictor(cfg["model"], providers=["cpu"], intra_op_threads=cfg["intra"])
grid = build_grid(slide, "dense", tile_um=pred.info.tile_um, min_tissue_fraction=0.0)
with tempfile.TemporaryDirectory() as tmp:
    c0, t0 = time.process_time(), time.perf_counter()
    predict_slide(slide, pred, grid, Path(tmp) / "s.vst.zarr", batch_size=32,
                  read_threads=cfg["read"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print("@@", json.dumps({"tps": len(grid) / wall, "cpu_ms": 1000 * cpu / len(grid), "n": len(grid)}))
"""


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("@@")]
    if not lines:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(lines[0][2:])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slide", type=Path, default=SLIDE)
    args = parser.parse_args()
    base = {"slide": str(args.slide)}
    configs = {
        "fp32, 2 readers + ORT default threads (before)": {
            **base,
            "model": str(args.fp32),
            "read": 2,
            "intra": None,
        },
        "fp32, plan: 1 reader + 2 model threads": {
            **base,
            "model": str(args.fp32),
            "read": 1,
            "intra": 2,
        },
        "int8, plan: 1 reader + 2 model threads": {
            **base,
            "model": str(args.int8),
            "read": 1,
            "intra": 2,
        },
    }
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, cfg in configs.items():
            results[name].append(run(cfg))
            print(r, name, results[name][-1], flush=True)
    for name, runs in results.items():
        tps = [x["tps"] for x in runs]
        cpu = [x["cpu_ms"] for x in runs]
        print(
            f"{name}: tiles/s median {statistics.median(tps):.1f} "
            f"(range {min(tps):.1f}-{max(tps):.1f}); CPU-ms/tile median "
            f"{statistics.median(cpu):.1f}; {runs[0]['n']} tiles"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
