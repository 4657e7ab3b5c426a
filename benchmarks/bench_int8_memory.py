"""Peak memory and time of int8 quantisation on first use, and what chunked calibration costs.

    python benchmarks/bench_int8_memory.py --json benchmarks/results/int8_memory.json \
        [--src OTHER_CHECKOUT/src] [--runs one-pass chunked]

Each run is ``precision.choose_model(MODEL, "int8")`` (what ``virtual-st predict --precision
int8`` and the plugin's Precision do the first time a model without a shipped int8 variant is
run: calibration on the sample slide's 213 tissue tiles) in a fresh child process with an
empty int8 cache; its own peak RSS (``ru_maxrss``) and wall time are recorded. ``one-pass``
sets the calibration budget beyond reach (every tile's activations at once, as before the
budget); ``chunked`` keeps the shipped budget (``CALIBRATION_BUDGET_BYTES``); ``--src`` runs
one more child on another checkout's source tree (e.g. the commit before the budget) as
``before``. MODEL is the benchmark ResNet-18 (``resnet18_torch.py``, 224 px at 0.5 µm/px,
250 outputs, random weights: agreement here tests the quantiser, not a trained model).

Then every int8 model made is compared with fp32 on held-out real tiles: the same slide's
tissue tiles on a grid offset by a quarter tile from the calibration grid (never a
calibration tile, though each overlaps some by up to 3/4), per-output Pearson r
(``precision.gene_agreement``). The children run before the parent loads anything (Linux
would carry a big parent's RSS into their ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_MARK = "INT8-MEMORY "


def _child(model: str, budget: int | None, out: str) -> dict[str, Any]:
    import time

    from napari_virtual_st import precision

    if budget is not None:
        precision.CALIBRATION_BUDGET_BYTES = budget  # type: ignore[attr-defined]
    start = time.perf_counter()
    choice = precision.choose_model(model, "int8")
    seconds = time.perf_counter() - start
    shutil.copyfile(choice.path, out)
    from napari_virtual_st.predictor import Predictor

    recipe = json.loads(Predictor(out, providers=["cpu"]).info.metadata["int8_recipe"])
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "calibration_tiles": recipe.get("calibration_tiles"),
        "chunked_calibration": recipe.get("chunked_calibration"),
    }


def run_child(src: Path, model: Path, budget: int | None, out: Path) -> dict[str, Any]:
    """One quantisation in a fresh process with an empty cache; its own peak and time."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(src), "VST_CACHE_DIR": cache}
        args = [sys.executable, str(Path(__file__).resolve()), "--child", str(model), str(out)]
        if budget is not None:
            args += ["--budget", str(budget)]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            result: dict[str, Any] = json.loads(line[len(_MARK) :])
            return result
    raise RuntimeError(f"quantisation failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def held_out_tiles(tile_px: int, tile_um: float) -> Any:
    """Tissue tiles of the sample slide on the calibration grid shifted by a quarter tile."""
    import numpy as np

    from napari_virtual_st.registry import sample_slide_path
    from napari_virtual_st.slide import Slide

    with Slide(sample_slide_path()) as slide:
        width, height = slide.dimensions
        half = tile_um / slide.mpp / 2
        xs = np.arange(half * 1.5, width - half + 1, half)
        ys = np.arange(half * 1.5, height - half + 1, half)
        tiles = np.stack([slide.read_tile((x, y), tile_px, tile_um) for y in ys for x in xs])
    return tiles[tiles.reshape(len(tiles), -1).mean(axis=1) < 215]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--src", type=Path, help="another checkout's src, run as 'before'")
    parser.add_argument(
        "--runs", nargs="*", default=["one-pass", "chunked"], choices=["one-pass", "chunked"]
    )
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(_MARK + json.dumps(_child(args.child[0], args.budget, args.child[1])), flush=True)
        return 0

    sys.path.insert(0, str(HERE))
    from resnet18_torch import cached_benchmark_model

    model = cached_benchmark_model(HERE / ".cache")
    runs: dict[str, tuple[Path, int | None]] = {}
    if args.src:
        runs["before"] = (args.src.resolve(), None)
    for name in args.runs:
        runs[name] = (REPO / "src", 1 << 62 if name == "one-pass" else None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for name, (src, budget) in runs.items():
            outputs[name] = Path(tmp) / f"{name}.onnx"
            results[name] = run_child(src, model, budget, outputs[name])
            print(name, json.dumps(results[name]), flush=True)

        import numpy as np

        from napari_virtual_st.precision import gene_agreement
        from napari_virtual_st.predictor import Predictor

        fp32 = Predictor(model, providers=["cpu"])
        check = held_out_tiles(fp32.info.tile_px, fp32.info.tile_um)
        reference = fp32.predict(check).expression
        first = None
        for name, path in outputs.items():
            int8 = Predictor(path, providers=["cpu"]).predict(check).expression
            r = gene_agreement(reference, int8)
            results[name]["held_out_tiles"] = len(check)
            results[name]["median_output_r"] = round(float(np.median(r)), 4)
            results[name]["min_output_r"] = round(float(np.min(r)), 4)
            results[name]["outputs_r_below_0.95"] = int((r < 0.95).sum())
            if first is None:
                first = (name, int8)
            else:
                between = gene_agreement(first[1], int8)
                results[name][f"median_output_r_vs_{first[0]}"] = round(
                    float(np.median(between)), 4
                )
                results[name][f"min_output_r_vs_{first[0]}"] = round(float(np.min(between)), 4)
            print(name, json.dumps(results[name]), flush=True)
        if len(outputs) > 1:
            blobs = {n: p.read_bytes() for n, p in outputs.items()}
            results["identical_files"] = {
                f"{a}=={b}": blobs[a] == blobs[b] for a in blobs for b in blobs if a < b
            }
            print(json.dumps(results["identical_files"]))
    if args.json:
        payload = {
            "model": model.name,
            "note": "each run a fresh child process; a shared 2-core VM (one core used)",
            "cpu_count": os.cpu_count(),
            "runs": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
