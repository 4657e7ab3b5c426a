"""Build the shipped DKAN model: train on patient C, export the image path, score it on patient A.

    python -m models.dkan.build [--out src/napari_virtual_st/bundled_models/dkan_her2st.onnx]

The shipped weights are the cross-patient fold's: trained on C2–C6 only, so the metrics stored
in the model (``vst.metrics``) are held-out numbers on A1, measured on the exported file by
``models/evaluate.py``'s ``evaluate_onnx`` (which reproduces them from the file). The gene
text embeddings are a buffer of the model and so a constant of the ONNX graph.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.dkan.train import TILE_PX, TILE_UM, DKANSettings, fit_dkan
from models.evaluate import C_SECTIONS, N_GENES, TEST_SECTION, evaluate_onnx
from models.workshop.data import gene_panel, load_her2st
from models.workshop.provenance import (
    HER2ST_LICENCE_NOTE,
    git_revision,
    held_out_record,
    write_metrics_json,
)
from napari_virtual_st.contract import ModelMetadata
from napari_virtual_st.onnx_export import export_torch_model, record_metrics, store_weights_fp16

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "src" / "napari_virtual_st" / "bundled_models" / "dkan_her2st.onnx"


def build(out: Path, settings: DKANSettings | None = None) -> dict:
    """Train, export, score the exported file on A1 and store the scores in it."""
    settings = settings or DKANSettings()
    torch.set_num_threads(2)
    sections = load_her2st(TILE_PX, TILE_UM)
    train = [sections[n] for n in C_SECTIONS]
    genes = gene_panel(train, N_GENES, sections[TEST_SECTION].measured.genes)
    start = time.perf_counter()
    model = fit_dkan(train, genes, settings, log=True)
    seconds = time.perf_counter() - start
    training = {
        "data": "HER2ST legacy ST, patient C sections C2-C6 (910 spots)",
        "split": "cross-patient: train C2-C6, test A1 (patient A)",
        "targets": "log1p counts per 10k (library size over all genes)",
        "genes": f"top {N_GENES} by mean over training spots, measured in all sections",
        "gene_text": "symbol, full name, GO terms (gene_annotation_human) embedded by all-MiniLM-L6-v2",
        "encoder": "EfficientNet-Lite0, ImageNet weights" if settings.pretrained else "scratch",
        "settings": settings.__dict__,
        "train_seconds_2_cpu": round(seconds, 1),
        "code_revision": git_revision(),
        "built": time.strftime("%Y-%m-%d"),
    }
    metadata = ModelMetadata(
        genes=genes,
        tile_px=TILE_PX,
        tile_um=TILE_UM,
        family="dkan",
        target="log1p_cp10k",
        name="DKAN (HER2ST, cross-patient fold)",
        training=training,
        license="Code BSD-3-Clause; EfficientNet-Lite0 ImageNet weights Apache-2.0; "
        "all-MiniLM-L6-v2 Apache-2.0; " + HER2ST_LICENCE_NOTE,
        description="Gene-text queries (MiniLM embeddings of gene annotations) attending to "
        "EfficientNet-Lite0 image tokens; trained with regression + InfoNCE path alignment.",
    )
    report = export_torch_model(
        model, out, metadata, check_tiles=sections[TEST_SECTION].tiles[:16]
    )
    print(f"wrote {report.path} (torch vs ONNX Runtime max |diff| {report.max_abs_diff:.2e})")
    # float16 storage of the weights halves the wheel's share (computation stays float32)
    half = store_weights_fp16(out, out, check_tiles=train[0].tiles)
    print(
        f"weights stored as float16: {half.bytes_before / 2**20:.1f} → "
        f"{half.bytes_after / 2**20:.1f} MiB, max |diff| {half.max_abs_diff:.2e}, "
        f"min per-gene PCC vs float32 {half.min_gene_pcc:.5f}"
    )
    held_out = evaluate_onnx(out, sections)
    metrics = held_out_record(held_out, TEST_SECTION, len(sections[TEST_SECTION].tiles))
    record_metrics(out, metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    metrics = build(args.out)
    write_metrics_json(metrics, "dkan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
