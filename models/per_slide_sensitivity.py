"""How much the per-slide model's values depend on the spots its slide statistics come from.

    python -m models.per_slide_sensitivity   # -> models/results/per_slide_sensitivity.json, .md

``nsl_lite0_multilayer_per_slide`` (``models/encoder_variants.py``) standardises each section's
encoder features by that section's own mean and standard deviation. Its fold runs take them
over *every* spot of the section; the engine cannot (it measures a slide's statistics on at
most 256 spots sampled from the slide's tissue lattice, :mod:`napari_virtual_st.slide_statistics`).
``nsl_lite0_multilayer_floored`` floors each feature's SD at half its SD over patient C.
This builds each file (``encoder_variants.build``, to a temporary path, ~1 min each) and
scores it per tile on each HER2ST section with its statistics taken from every spot, from an
even sample of ``k`` spots (the engine's rule, in the section's spot order) and from
:data:`SEEDS` random samples of ``k`` spots. PCC-ALL over the 250 genes, raw labels.

A1 (patient A) is held out; the file's head was fitted on C2–C6, so the C rows are in-sample
and show the spread only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("multilayer_per_slide", "multilayer_floored")
SAMPLE_SIZES = (64, 128, 256)
SEEDS = 5
SECTIONS = ("A1", "C2", "C3", "C4", "C5", "C6")


def sensitivity(path: Path) -> dict[str, Any]:
    """The scores of the file at ``path`` under each way of taking its statistics."""
    from models.evaluate import predict_onnx
    from models.workshop.data import load_her2st
    from models.workshop.metrics import pearson_per_gene
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.slide_statistics import SlideStatistics, sample_evenly

    predictor = Predictor(path, providers=["cpu"])
    genes = list(predictor.info.genes)
    sections = load_her2st(predictor.info.tile_px, predictor.info.tile_um, list(SECTIONS))
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for name in SECTIONS:
        section = sections[name]
        features = predictor.slide_features(section.tiles)
        labels = section.targets(genes)

        def score(
            spots: np.ndarray, section: Any = section, labels: Any = labels, x: Any = features
        ) -> float:
            fed = predictor.with_slide_statistics(SlideStatistics.of(x[spots]))
            pred = predict_onnx(fed, section.tiles)
            return round(float(pearson_per_gene(pred, labels).mean()), 4)

        n = len(section.tiles)
        row: dict[str, Any] = {"spots": n, "every_spot": score(np.arange(n))}
        for k in SAMPLE_SIZES:
            if k >= n:
                continue
            row[f"even_{k}"] = score(sample_evenly(n, k))
            row[f"random_{k}"] = [
                score(np.sort(rng.choice(n, k, replace=False))) for _ in range(SEEDS)
            ]
        out[name] = row
    return out


def markdown(record: dict[str, Any]) -> str:
    """The record as one table (a row per variant and section)."""
    lines = [
        "# The per-slide model's values against the spots its statistics come from",
        "",
        "Produced by `python -m models.per_slide_sensitivity` (module docstring: what and why). "
        "PCC-ALL per tile, raw labels; A1 held out, C2–C6 in-sample (the head was fitted on "
        "them). `even k`: k spots evenly spread in the section's spot order (the engine's "
        f"rule); `random k`: the lowest and highest of {SEEDS} random samples of k spots.",
        "",
        "| variant | section | spots | every spot | "
        + " | ".join(f"even {k} | random {k}" for k in SAMPLE_SIZES)
        + " |",
        "|---|---|---|---|" + "---|---|" * len(SAMPLE_SIZES),
    ]
    rows = [(v, n, r) for v, sections in record["variants"].items() for n, r in sections.items()]
    for variant, name, row in rows:
        cells = [variant, name, str(row["spots"]), f"{row['every_spot']:.4f}"]
        for k in SAMPLE_SIZES:
            if f"even_{k}" not in row:
                cells += ["(all)", "(all)"]
                continue
            low, high = min(row[f"random_{k}"]), max(row[f"random_{k}"])
            cells += [f"{row[f'even_{k}']:.4f}", f"{low:.4f}–{high:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from models import encoder_variants as ev

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    what = __doc__.split("\n\n")[2].replace("\n", " ")
    record: dict[str, Any] = {"what": what, "variants": {}}
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            path = ev.build(variant, Path(tmp) / f"{variant}.onnx")
            record["variants"][variant] = sensitivity(path)
    (RESULTS / "per_slide_sensitivity.json").write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    (RESULTS / "per_slide_sensitivity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
