"""Build the shipped Stem model: train on patient C, export the sampler, score on patient A.

    python -m models.stem.build [--out src/napari_virtual_st/bundled_models/stem_her2st.onnx]

The shipped weights are the cross-patient fold's (trained on C2–C6 only), so the metrics in the
model (``vst.metrics``) are held-out numbers on A1, measured on the exported file through the
engine's Predictor (``models/evaluate.py --onnx`` reproduces them), with the calibration of
its variance. The torch weights are kept in ``models/.cache/stem_her2st.pt`` for
``models/stem/bench.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluate import (
    C_SECTIONS,
    N_GENES,
    TEST_SECTION,
    TILE_PX,
    TILE_UM,
    evaluate_onnx,
    run_protocol,
)
from models.stem.calibration import calibration
from models.stem.export import export_stem
from models.stem.train import StemSettings, fit_stem
from models.workshop.data import CACHE, SectionData, gene_panel, load_her2st
from models.workshop.provenance import (
    HER2ST_LICENCE_NOTE,
    git_revision,
    held_out_record,
    write_metrics_json,
)
from napari_virtual_st.contract import ModelMetadata
from napari_virtual_st.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "src" / "napari_virtual_st" / "bundled_models" / "stem_her2st.onnx"
WEIGHTS = CACHE / "stem_her2st.pt"


def predict_with_variance(
    model_path: Path, test: SectionData, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of an exported sampler on a section's tiles, through the Predictor
    with spot ids ``0..n-1`` (so the noise does not depend on the batching)."""
    predictor = Predictor(model_path, providers=["cpu"])
    means, variances = [], []
    for i in range(0, len(test.tiles), batch_size):
        out = predictor.predict(
            test.tiles[i : i + batch_size],
            spot_index=np.arange(i, min(i + batch_size, len(test.tiles))),
        )
        if out.variance is None:
            raise ValueError(f"{model_path.name} has no variance output")
        means.append(out.expression)
        variances.append(out.variance)
    return np.concatenate(means), np.concatenate(variances)


def build(out: Path, settings: StemSettings | None = None) -> dict[str, Any]:
    """Train, export, score; returns the metrics stored in the model."""
    settings = settings or StemSettings()
    # one thread: on a shared 2-core machine two spinning threads slow training several-fold
    torch.set_num_threads(1)
    sections = load_her2st(TILE_PX, TILE_UM)
    train = [sections[n] for n in C_SECTIONS]
    test = sections[TEST_SECTION]
    genes = gene_panel(train, N_GENES, test.measured.genes)
    start = time.perf_counter()
    model = fit_stem(train, genes, settings, log=True)
    seconds = time.perf_counter() - start
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": model.state_dict(), "settings": asdict(settings), "genes": genes}, WEIGHTS
    )
    training = {
        "data": "HER2ST legacy ST, patient C sections C2-C6 (910 spots)",
        "split": "cross-patient: train C2-C6, test A1 (patient A)",
        "targets": "log1p counts per 10k (library size over all genes)",
        "genes": f"top {N_GENES} by mean over training spots, measured in all sections",
        "settings": asdict(settings),
        "sampler": f"DDIM eta=0, {settings.n_steps} steps unrolled, {settings.n_samples} samples per spot",
        "expression": {
            "mean_head": "the mean head (the samples' centre), chosen under the protocol "
            "(models/results/stem_mean_head.md)",
            "sampled_mean": "the mean of the samples",
        }[settings.point]
        + "; variance: the samples' variance",
        "train_seconds_2_shared_cpu": round(seconds, 1),
        "code_revision": git_revision(),
        "built": time.strftime("%Y-%m-%d"),
    }
    metadata = ModelMetadata(
        genes=genes,
        tile_px=TILE_PX,
        tile_um=TILE_UM,
        family="stem",
        target="log1p_cp10k",
        name="Stem-style diffusion (HER2ST, cross-patient fold)",
        training=training,
        license="Code BSD-3-Clause; " + HER2ST_LICENCE_NOTE,
        description=(
            "Conditional diffusion over the 250-gene vector given a colour+CNN image embedding; "
            f"expression = the conditional-mean head the {settings.n_samples} DDIM samples "
            "spread around, variance = the samples' variance."
            if settings.point == "mean_head"
            else f"expression = mean and variance = variance of {settings.n_samples} DDIM samples."
        ),
    )
    sampler: dict[str, Any] = {
        "n_steps": settings.n_steps,
        "n_samples": settings.n_samples,
        "point": settings.point,
        "check_tiles": test.tiles[:16],
    }
    export_stem(model, out, metadata, **sampler)
    held_out = evaluate_onnx(out, sections)
    mean, variance = predict_with_variance(out, test)
    calib = calibration(mean, variance, test.targets(genes))
    baselines = run_protocol(
        ["mean", "ridge_colour"], "cross_patient", sections, log=lambda _: None
    )
    metrics = held_out_record(
        held_out,
        TEST_SECTION,
        len(test.tiles),
        baselines,
        calibration={**calib, "labels": "raw", "spot_ids": "0..n-1 (A1 order)"},
    )
    report = export_stem(model, out, replace(metadata, metrics=metrics), **sampler)
    print(f"wrote {report.path} (torch vs ONNX Runtime max |diff| {report.max_abs_diff:.2e})")
    print(json.dumps(metrics, indent=2))
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=StemSettings.epochs, help="training epochs")
    args = parser.parse_args()
    metrics = build(args.out, StemSettings(epochs=args.epochs))
    write_metrics_json(metrics, "stem")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
