"""Stem-style's mean head as its point estimate, measured on/off under the protocol (issue 19).

    OMP_NUM_THREADS=1 python -m models.folds --methods stem stem_mean_head   # fold runs
    python -m models.stem.mean_head    # -> models/results/stem_mean_head.json, .md

Stem-style's ``expression`` was the mean of K sampled expression vectors (residuals sampled by
DDIM around its mean head). The target-width diagnostic (``python -m models.auxiliary_genes
--stem-width``) and the card's A1 diagnostic found the mean head alone better than that sampled
mean. ``stem_mean_head`` is the same training (same settings and seed; with one torch thread the
very same model) returning the mean head (:func:`models.stem.train.mean_head_expression`), so
the paired difference here isolates the choice of point estimate. It won everywhere, and
``stem_her2st.onnx`` now returns its mean head (``stem`` keeps the sampled mean's fold runs).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
BASE = "stem"
METHOD = "stem_mean_head"


def main(argv: Sequence[str] | None = None) -> int:
    from models.protocol import Method, on_off, on_off_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    record = on_off(Method(BASE, BASE, BASE), Method(METHOD, METHOD, METHOD), context=True)
    if record is None:
        print(f"no fold runs of both {BASE} and {METHOD}: run python -m models.folds first")
        return 1
    (RESULTS / "stem_mean_head.json").write_text(json.dumps(record, indent=1) + "\n")
    text = on_off_table(
        "Stem-style: its mean head against its sampled mean, on/off (issue 19)",
        "Produced by `python -m models.stem.mean_head` from the fold runs of `python -m "
        "models.folds --methods stem stem_mean_head` (one torch thread: the same trained "
        "model per fold, two point estimates).",
        record,
        "sampled mean (shipped before)",
        "mean head (shipped)",
    )
    (RESULTS / "stem_mean_head.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
