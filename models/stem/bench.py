"""DDIM steps × samples per spot against accuracy, calibration and speed; prints JSON.

    python -m models.stem.bench [--steps 1 2 5 10 20] [--samples 1 2 4 8 16] [--json OUT]

Uses the weights ``models/stem/build.py`` saved (``models/.cache/stem_her2st.pt``; the
cross-patient fold's, trained on C2–C6). For each (steps, samples) the sampler is exported to a
temporary ONNX file and run through the engine's Predictor on A1: PCC-ALL (raw labels) of the
samples' mean (exported as ``expression`` here, so the table measures what the samples give;
the shipped file's ``expression`` is the mean head, which steps and samples do not change),
the calibration of the variance (per-spot and per-gene Spearman, ``calibration.py``) and
tiles/s (batches of 64 tiles, CPU, the threads ONNX Runtime picks). Every pair of the two
lists is measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluate import C_SECTIONS, TEST_SECTION, TILE_PX, TILE_UM
from models.stem.build import WEIGHTS, predict_with_variance
from models.stem.calibration import calibration
from models.stem.export import export_stem
from models.stem.model import StemModel
from models.workshop.data import load_her2st
from models.workshop.metrics import evaluate_predictions, gene_sets
from napari_virtual_st.contract import ModelMetadata
from napari_virtual_st.predictor import Predictor


def load_model(path: Path = WEIGHTS) -> tuple[StemModel, list[str]]:
    """The torch model saved by ``models/stem/build.py`` and its gene panel."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python -m models.stem.build first")
    saved = torch.load(path, weights_only=True)
    s = saved["settings"]
    model = StemModel(
        len(saved["genes"]),
        s["n_train_steps"],
        s["embed_dim"],
        s["channels"],
        s["hidden"],
        s["n_blocks"],
        s["dropout"],
        s["residual"],
        s["schedule"],
    )
    model.load_state_dict(saved["state_dict"])
    return model.eval(), list(saved["genes"])


def tiles_per_second(model_path: Path, tiles: np.ndarray, min_seconds: float = 1.0) -> float:
    """Throughput of the Predictor on batches of 64 tiles (after one warm-up batch)."""
    predictor = Predictor(model_path, providers=["cpu"])
    batch = np.concatenate([tiles] * (-(-64 // len(tiles))))[:64]
    predictor.predict(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        predictor.predict(batch, spot_index=np.arange(n, n + len(batch)))
        n += len(batch)
    return n / (time.perf_counter() - start)


def bench(steps: list[int], samples: list[int]) -> list[dict[str, Any]]:
    """One row per (steps, samples)."""
    torch.set_num_threads(1)  # see build.py: faster than 2 threads on a shared machine
    model, genes = load_model()
    sections = load_her2st(TILE_PX, TILE_UM, [*C_SECTIONS, TEST_SECTION])
    test = sections[TEST_SECTION]
    truth = test.targets(genes)
    sets = gene_sets(np.concatenate([sections[n].targets(genes) for n in C_SECTIONS]), genes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_steps in steps:
            for k in samples:
                path = Path(tmp) / f"stem_{n_steps}x{k}.onnx"
                metadata = ModelMetadata(
                    genes=genes,
                    tile_px=TILE_PX,
                    tile_um=TILE_UM,
                    family="stem",
                    target="log1p_cp10k",
                )
                export_stem(
                    model, path, metadata, n_steps=n_steps, n_samples=k, point="sampled_mean"
                )
                mean, var = predict_with_variance(path, test)
                scores = evaluate_predictions(mean, truth, test.array_rc, sets)
                calib = calibration(mean, var, truth) if k > 1 else None
                row = {
                    "steps": n_steps,
                    "samples": k,
                    "PCC-ALL_raw": round(scores["raw"]["PCC-ALL"], 4),
                    "PCC-ALL_smoothed": round(scores["smoothed_3x3"]["PCC-ALL"], 4),
                    "MSE_raw": round(scores["raw"]["MSE"], 4),
                    "calib_per_spot": None if calib is None else round(calib["per_spot"], 4),
                    "calib_per_gene_median": None
                    if calib is None
                    else round(calib["per_gene_median"], 4),
                    "tiles_per_s": round(tiles_per_second(path, test.tiles[:64]), 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 5, 10, 20])
    parser.add_argument("--samples", nargs="+", type=int, default=[8])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = bench(args.steps, args.samples)
    text = json.dumps(
        {
            "model": str(WEIGHTS.name),
            "test_section": TEST_SECTION,
            "machine": "2 shared CPU cores",
            "rows": rows,
        },
        indent=2,
    )
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
