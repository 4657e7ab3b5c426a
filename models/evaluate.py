"""The evaluation harness: every method on the same real data, splits and metrics.

Protocol (HER2ST, legacy ST, 100 µm spots):

- **cross_patient** (headline): train on patient C (sections C2–C6), test on patient A (A1).
- **loso_C** (optimistic, reported separately): leave one C section out, train on the other
  four. The C sections are serial cuts of one patient, so this overstates generalisation.

Gene panel: the top-250 genes by mean log1p CP10k over the training spots, among genes
measured in every training section and in the test section. Metrics (see
``workshop/metrics.py``): PCC-ALL, PCC-HEG50, PCC-HVG50, MSE, MAE and the share of genes with
PCC > 0, each against raw labels and against 3×3-neighbourhood-smoothed labels.

The protocol that tells the models apart (issue 19) builds on this harness: per-spot
predictions of every fold (``models/folds.py``), then spot-bootstrap intervals, paired
differences, the resolution check, the pathologist-label AUC and the spot-context kernel chosen
on inner folds of C (``models/protocol.py``; results in ``models/results/protocol.json``).

Usage::

    python -m models.evaluate --methods mean ridge_colour nsl --json OUT.json --markdown OUT.md
    python -m models.evaluate --onnx src/napari_virtual_st/bundled_models/nsl_her2st.onnx
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.workshop.data import (
    SectionData,
    gene_panel,
    her2st_sections,
    load_her2st,
    load_section,
)
from models.workshop.metrics import evaluate_predictions, gene_sets

REPO = Path(__file__).resolve().parents[1]

C_SECTIONS = ("C2", "C3", "C4", "C5", "C6")
TEST_SECTION = "A1"
N_GENES = 250
#: Tile geometry of the protocol: 110 µm (the 100 µm spot plus a margin) at 16 px.
TILE_PX = 16
TILE_UM = 110.0


def splits(
    sections: dict[str, SectionData], protocol: str
) -> list[tuple[str, list[SectionData], SectionData]]:
    """(fold name, training sections, test section) of a protocol."""
    if protocol == "cross_patient":
        return [("C→A1", [sections[n] for n in C_SECTIONS], sections[TEST_SECTION])]
    if protocol == "loso_C":
        return [
            (f"C−{k}→{k}", [sections[n] for n in C_SECTIONS if n != k], sections[k])
            for k in C_SECTIONS
        ]
    raise ValueError(f"unknown protocol {protocol!r}")


def make_method(name: str) -> Any:
    """A fresh method object with ``fit(train, genes)`` and ``predict(tiles)``."""
    from models.workshop.baselines import MeanPredictor, RidgeColour, colour_statistics, per_slide

    if name == "mean":
        return MeanPredictor()
    if name == "ridge_colour":
        return RidgeColour()
    if name == "ridge_colour_per_slide":  # issue 19 item 4: per-slide feature standardisation
        return RidgeColour(per_slide(colour_statistics))
    if name.startswith("nsl"):
        from models.nsl.train import NSLMethod, NSLSettings

        variants = {
            "nsl": NSLSettings(),
            "nsl_allpix": NSLSettings(pool_tissue_only=False),
            "nsl_nojitter": NSLSettings(hed_scale=0.0, hed_shift=0.0),
            # the open choices measured in models/nsl/README.md ("Open choices, measured")
            "nsl_frozen": NSLSettings(learn_deconvolution=False),
            "nsl_prior": NSLSettings(prior_weight=1.0),
            "nsl_10epochs": NSLSettings(epochs=10),
            "nsl_jitter_x2": NSLSettings(hed_scale=0.4, hed_shift=0.1),
            "nsl_ridgehead": NSLSettings(head="ridge"),
            "nsl_3stain": NSLSettings(n_stains=3),
            "nsl_3stain_prior": NSLSettings(n_stains=3, prior_weight=1.0),
            "nsl_3stain_ridgehead": NSLSettings(n_stains=3, head="ridge"),
            # signed concentrations pooled in optical density and transmitted light
            "nsl_light": NSLSettings(nonnegative=False, pool_light=True, pool_tissue_only=False),
            "nsl_light_ridgehead": NSLSettings(
                nonnegative=False, pool_light=True, pool_tissue_only=False, head="ridge"
            ),
            "nsl_3stain_light_ridgehead": NSLSettings(
                n_stains=3,
                nonnegative=False,
                pool_light=True,
                pool_tissue_only=False,
                head="ridge",
            ),
            "nsl_light_relu_ridgehead": NSLSettings(pool_light=True, head="ridge"),
        }
        return NSLMethod(variants[name])
    if name.endswith("_aux250"):  # issue 19 item 4: Auxiliary Gene Learning, 250 extra genes
        from models.workshop.auxiliary import AuxiliaryGenes

        return AuxiliaryGenes(make_method(name.removesuffix("_aux250")), 250)
    if name.startswith("stem"):
        from models.stem.train import StemMethod, StemSettings

        stem_variants = {
            # the sampled mean, the point estimate shipped before the mean head (its fold
            # runs are the baseline of stem_mean_head.md and the auxiliary genes' on/off)
            "stem": StemSettings(point="sampled_mean"),
            "stem_plain": StemSettings(residual=False, point="sampled_mean"),  # diffuse expression
            # the same training; the mean head as the point estimate (what stem_her2st ships)
            "stem_mean_head": StemSettings(point="mean_head"),
        }
        return StemMethod(stem_variants[name])
    if name.startswith("dkan"):
        from models.dkan.train import DKANMethod, DKANSettings

        dkan_variants = {
            "dkan": DKANSettings(),
            "dkan_nogenetext": DKANSettings(gene_semantic=False),
            "dkan_scratch": DKANSettings(pretrained=False),
            "dkan_nocolour": DKANSettings(hed_scale=0.0, hed_shift=0.0),
            "dkan_noalign": DKANSettings(align=False),
        }
        return DKANMethod(dkan_variants[name])
    raise ValueError(f"unknown method {name!r}")


def run_protocol(
    method_names: Sequence[str],
    protocol: str,
    sections: dict[str, SectionData],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit and score every method on every fold of ``protocol``; folds are averaged."""
    results: dict[str, Any] = {}
    for name in method_names:
        folds = []
        for fold, train, test in splits(sections, protocol):
            genes = gene_panel(train, N_GENES, test.measured.genes)
            start = time.perf_counter()
            method = make_method(name).fit(train, genes)
            seconds = time.perf_counter() - start
            pred = method.predict(test.tiles)
            sets = gene_sets(np.concatenate([s.targets(genes) for s in train]), genes)
            scores = evaluate_predictions(pred, test.targets(genes), test.array_rc, sets)
            folds.append(
                {
                    "fold": fold,
                    "train_seconds": round(seconds, 2),
                    "n_test_spots": len(test.tiles),
                    **scores,
                }
            )
            log(
                f"{protocol} {name} {fold}: PCC-ALL raw {scores['raw']['PCC-ALL']:.4f}, smoothed {scores['smoothed_3x3']['PCC-ALL']:.4f} ({seconds:.0f} s)"
            )
        results[name] = {
            "folds": folds,
            "mean": _average([{k: f[k] for k in ("raw", "smoothed_3x3")} for f in folds]),
        }
    return results


def evaluate_onnx(
    model_path: Path, sections: dict[str, SectionData] | None = None
) -> dict[str, Any]:
    """Score a contract ONNX model on the cross-patient test section (A1), through the engine's
    own Predictor, with the gene sets chosen on the C sections.

    A model that declares spot context (``vst.context``) is scored on its contextual values,
    computed as the engine computes them (:mod:`napari_virtual_st.context`, spot centres in µm
    from the section's µm/px); its per-tile scores are returned under ``per_tile`` too."""
    from napari_virtual_st.context import SpotContext, apply_context, context_weights
    from napari_virtual_st.predictor import Predictor

    predictor = Predictor(model_path, providers=["cpu"])
    info = predictor.info
    if sections is None:
        sections = load_her2st(info.tile_px, info.tile_um)
    train = [sections[n] for n in C_SECTIONS]
    test = sections[TEST_SECTION]
    genes = list(info.genes)
    if predictor.info.tile_px != test.tile_px or predictor.info.tile_um != test.tile_um:
        test = load_section(
            next(s for s in her2st_sections() if s.name == TEST_SECTION),
            predictor.info.tile_px,
            predictor.info.tile_um,
        )
    pred = predict_onnx(predictor, test.tiles)
    sets = gene_sets(np.concatenate([s.targets(genes) for s in train]), genes)
    scores = evaluate_predictions(pred, test.targets(genes), test.array_rc, sets)
    declared = predictor.info.metadata.get("context")
    if declared is None:
        return scores
    context = SpotContext.from_json(declared)
    weights = context_weights(test.measured.xy_fullres_px * test.mpp, context)
    contextual = apply_context(pred, weights)
    return {
        **evaluate_predictions(contextual, test.targets(genes), test.array_rc, sets),
        "context": context.to_json(),
        "per_tile": scores,
    }


def predict_onnx(predictor: Any, tiles: np.ndarray, batch: int = 64) -> np.ndarray:
    """``(n, G)`` expression of a contract model (a ``Predictor``) for uint8 tiles. A model
    that standardises its features per slide (``vst.slide_statistics``) is fed the statistics
    of at most its declared number of these tiles, evenly spread, as a run samples a slide
    (``slide_statistics.sample_evenly``; a run samples the slide's tissue lattice)."""
    spec = predictor.info.slide_statistics
    if spec is not None and predictor.slide_statistics is None:
        from napari_virtual_st.slide_statistics import sample_evenly

        predictor = predictor.standardised_on(tiles[sample_evenly(len(tiles), spec.spots)])
    return np.concatenate(
        [predictor.predict(tiles[i : i + batch]).expression for i in range(0, len(tiles), batch)]
    )


def _average(folds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        label: {k: float(np.mean([f[label][k] for f in folds])) for k in folds[0][label]}
        for label in folds[0]
    }


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per (protocol, method, labels)."""
    keys = ["PCC-ALL", "PCC-HEG50", "PCC-HVG50", "MSE", "MAE", "frac_PCC_gt_0"]
    lines = [
        "| protocol | method | labels | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for protocol, methods in results.items():
        for method, res in methods.items():
            for labels, scores in res["mean"].items():
                cells = " | ".join(f"{scores[k]:.4f}" for k in keys)
                lines.append(f"| {protocol} | {method} | {labels} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["mean", "ridge_colour", "nsl"])
    parser.add_argument("--protocols", nargs="+", default=["cross_patient", "loso_C"])
    parser.add_argument(
        "--onnx",
        type=Path,
        help="score a contract model on the cross-patient test section instead",
    )
    parser.add_argument("--json", type=Path, help="write results as JSON")
    parser.add_argument("--markdown", type=Path, help="write a markdown table")
    args = parser.parse_args(argv)
    if args.onnx is not None:
        scores = evaluate_onnx(args.onnx)
        print(json.dumps(scores, indent=2))
        if args.json:
            args.json.write_text(json.dumps(scores, indent=2))
        return 0
    sections = load_her2st(TILE_PX, TILE_UM)
    results = {p: run_protocol(args.methods, p, sections) for p in args.protocols}
    table = markdown_table(results)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
