"""int8 vs fp32: agreement and speed of a ResNet-18-sized contract model on real tissue tiles.

    python benchmarks/bench_quantization.py --json benchmarks/results/quantization.json

Uses ``napari_virtual_st.onnx_export.quantize_int8`` (ONNX Runtime static quantisation, QDQ,
per-channel) calibrated on tiles of the real CMU-1-Small-Region.svs, on the random-weight
ResNet-18 benchmark model (``resnet18_torch.py``, a torch export). Random weights make the agreement figure a
test of the quantiser, not of a trained model's accuracy; the speed ratio is what the issue asks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from napari_virtual_st.onnx_export import quantize_int8  # noqa: E402
from napari_virtual_st.slide import Slide  # noqa: E402
from resnet18_torch import cached_benchmark_model  # noqa: E402

SLIDE = HERE.parent.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = cached_benchmark_model(HERE / ".cache")
    with Slide(SLIDE) as slide:
        centres = [(x, y) for x in range(250, 2000, 160) for y in range(250, 2750, 160)]
        tiles = np.stack([slide.read_tile(c, 224, 112.0) for c in centres])
    tissue = tiles[tiles.reshape(len(tiles), -1).mean(axis=1) < 215]
    calibration, check = tissue[::2][:64], tissue[1::2][:64]
    start = time.perf_counter()
    report = quantize_int8(
        model,
        HERE / ".cache" / "resnet18_int8.onnx",
        calibration,
        check_tiles=check,
        batch_size=args.batch_size,
    )
    result = {
        "model": model.name,
        "calibration_tiles": len(calibration),
        "check_tiles": len(check),
        "quantise_seconds": round(time.perf_counter() - start, 1),
        "median_gene_pcc_int8_vs_fp32": round(report.median_gene_pcc, 4),
        "min_gene_pcc_int8_vs_fp32": round(report.min_gene_pcc, 4),
        "max_abs_diff": round(report.max_abs_diff, 4),
        "fp32_tiles_per_s": round(report.fp32_tiles_per_s, 1),
        "int8_tiles_per_s": round(report.int8_tiles_per_s, 1),
        "speedup": round(report.speedup, 2),
        "cpu_count": os.cpu_count(),
    }
    for key, value in result.items():
        print(f"{key:30s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
