"""Build the shipped NSL model: train on patient C, score on patient A, export to the contract.

    python -m models.nsl.build [--out src/napari_virtual_st/bundled_models/nsl_her2st.onnx]

The shipped weights are the cross-patient fold's: trained on C2–C6 only, so the metrics stored
in the model (``vst.metrics``) are held-out numbers on A1, and ``models/evaluate.py --onnx``
reproduces them from the file.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from models.evaluate import (
    C_SECTIONS,
    N_GENES,
    TEST_SECTION,
    TILE_PX,
    TILE_UM,
    evaluate_onnx,
    make_method,
    predict_onnx,
    run_protocol,
)
from models.nsl.train import NSLSettings, fit_nsl
from models.workshop.baselines import RidgeColour
from models.workshop.data import gene_panel, load_her2st
from models.workshop.metrics import bootstrap_pcc_difference, neighbourhood_mean
from models.workshop.provenance import (
    HER2ST_LICENCE_NOTE,
    git_revision,
    held_out_record,
    write_metrics_json,
)
from napari_virtual_st.contract import ModelMetadata
from napari_virtual_st.onnx_export import export_torch_model
from napari_virtual_st.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]

DEFAULT_OUT = REPO / "src" / "napari_virtual_st" / "bundled_models" / "nsl_her2st.onnx"


#: The harness method whose settings are shipped: the NSL variant with the best
#: leave-one-section-out PCC-ALL within patient C (models/results/nsl_open_choices.md), chosen
#: there, not on the cross-patient test section.
SHIPPED_METHOD = "nsl_light_ridgehead"


def build(out: Path, settings: NSLSettings | None = None) -> dict:
    settings = settings or make_method(SHIPPED_METHOD).settings
    torch.set_num_threads(2)
    sections = load_her2st(TILE_PX, TILE_UM)
    train = [sections[n] for n in C_SECTIONS]
    genes = gene_panel(train, N_GENES, sections[TEST_SECTION].measured.genes)
    start = time.perf_counter()
    model = fit_nsl(train, genes, settings, log=True)
    seconds = time.perf_counter() - start
    training = {
        "data": "HER2ST legacy ST, patient C sections C2-C6 (910 spots)",
        "split": "cross-patient: train C2-C6, test A1 (patient A)",
        "targets": "log1p counts per 10k (library size over all genes)",
        "genes": f"top {N_GENES} by mean over training spots, measured in all sections",
        "settings": settings.__dict__,
        "train_seconds_2_cpu": round(seconds, 1),
        "code_revision": git_revision(),
        "built": time.strftime("%Y-%m-%d"),
    }
    metadata = ModelMetadata(
        genes=genes,
        tile_px=TILE_PX,
        tile_um=TILE_UM,
        family="nsl",
        target="log1p_cp10k",
        name="NSL (HER2ST, cross-patient fold)",
        training=training,
        license="Code BSD-3-Clause; " + HER2ST_LICENCE_NOTE,
        description=(
            "Neural stain learning: learned per-gene stain deconvolution, "
            f"{model.n_trainable_per_gene()} weights per gene."
        ),
    )
    # torch and ONNX Runtime must agree on real tissue (the test patient's tiles), not only
    # on random noise tiles, whose extreme colours no slide has
    check_tiles = sections[TEST_SECTION].tiles[:64]
    export_torch_model(model, out, metadata, check_tiles=check_tiles)
    held_out = evaluate_onnx(out, sections)
    baselines = run_protocol(
        ["mean", "ridge_colour"], "cross_patient", sections, log=lambda _: None
    )
    # how sure is the margin over the ridge baseline? (same spots, raw and smoothed labels)
    test = sections[TEST_SECTION]
    ours = predict_onnx(Predictor(out, providers=["cpu"]), test.tiles)
    ridge = RidgeColour().fit(train, genes).predict(test.tiles)
    true = test.targets(genes)
    versus_ridge = {
        "raw": bootstrap_pcc_difference(ours, ridge, true),
        "smoothed_3x3": bootstrap_pcc_difference(
            ours, ridge, neighbourhood_mean(true, test.array_rc)
        ),
    }
    metrics = held_out_record(
        held_out,
        TEST_SECTION,
        len(test.tiles),
        baselines,
        versus_ridge_colour=versus_ridge,
    )
    report = export_torch_model(
        model, out, replace(metadata, metrics=metrics), check_tiles=check_tiles
    )
    print(f"wrote {report.path} (torch vs ONNX Runtime max |diff| {report.max_abs_diff:.2e})")
    print(json.dumps(metrics, indent=2))
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    metrics = build(args.out)
    write_metrics_json(metrics, "nsl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
