"""fp16 on the CPU: is there a half-precision path worth offering beside fp32 and int8?

    python benchmarks/bench_fp16_cpu.py [--rounds 5] [--json results/fp16_cpu.json]

Issue 20 asks for bf16/fp16 "where the hardware has it". The benchmark ResNet-18 (its torch
export, ``resnet18_torch.py``) is converted to fp16 with ONNX Runtime's own converter
(``onnxruntime.transformers.float16``, inputs and outputs kept as they are), and both files
run on ONNX Runtime's CPU execution provider with one intra-op thread, taking turns
(``--rounds`` rounds, batch 32 of random uint8 tiles: speed does not depend on the pixels).
Printed: tiles/s of each (median and range), the ratio fp16 / fp32, the CPU's flags that
would matter (``avx512_fp16``, ``avx512_bf16``, ``amx_bf16``) and the per-output agreement.
bf16 is not measured: ONNX Runtime's CPU provider has no bf16 kernels for these operators.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_pipeline import CACHE, _machine  # noqa: E402
from resnet18_torch import TILE_PX, cached_benchmark_model  # noqa: E402
from revisions import checkout_revision, write_results  # noqa: E402


def cpu_flags() -> list[str]:
    """The CPU flags that a half-precision path would use, as ``/proc/cpuinfo`` lists them."""
    wanted = ("avx512_fp16", "avx512_bf16", "amx_bf16", "amx_fp16", "f16c")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return [f for f in wanted if f in flags]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32 = cached_benchmark_model(CACHE)
    tiles = np.random.default_rng(0).integers(0, 256, (32, TILE_PX, TILE_PX, 3), dtype=np.uint8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        fp16 = Path(tmp) / "fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(fp16))
        sessions = {
            name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in (("fp32", fp32), ("fp16", fp16))
        }
    feeds = {name: {s.get_inputs()[0].name: tiles} for name, s in sessions.items()}
    outputs = {name: s.run(None, feeds[name])[0] for name, s in sessions.items()}  # (warm-up)
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(args.rounds):
        for name in list(sessions)[:: 1 if round_ % 2 == 0 else -1]:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            rates[name].append(round(len(tiles) / (time.perf_counter() - start), 2))
    a = outputs["fp32"] - outputs["fp32"].mean(axis=0)
    b = outputs["fp16"] - outputs["fp16"].mean(axis=0)
    r = (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    result = {
        "benchmark": "fp16 vs fp32 on ONNX Runtime's CPU provider (benchmarks/bench_fp16_cpu.py)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": checkout_revision(),
        "machine": _machine(),
        "cpu_half_precision_flags": cpu_flags(),
        "tiles_per_s": {
            k: {"median": median(v), "range": [min(v), max(v)]} for k, v in rates.items()
        },
        "fp16_vs_fp32": round(median(rates["fp16"]) / median(rates["fp32"]), 3),
        "fp16_agreement": {
            "median_r": round(float(np.median(r)), 5),
            "min_r": round(float(r.min()), 5),
        },
    }
    for name, v in result["tiles_per_s"].items():
        print(
            f"{name}: {v['median']:.1f} tiles/s ({v['range'][0]:.1f}–{v['range'][1]:.1f}), 1 thread"
        )
    print(
        f"fp16 / fp32 = {result['fp16_vs_fp32']:.2f}; CPU flags: "
        f"{', '.join(result['cpu_half_precision_flags']) or 'none'}; per-output r "
        f"median {result['fp16_agreement']['median_r']}, least {result['fp16_agreement']['min_r']}"
    )
    if args.json is not None:
        write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
