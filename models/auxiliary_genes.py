"""Auxiliary Gene Learning measured on/off (issue 19 item 4), under the protocol.

    python -m models.folds --methods stem stem_aux250     # fold runs (LOSO-C and C2–C6 → A1)
    python -m models.auxiliary_genes                      # → results/auxiliary_genes.json, .md
    python -m models.auxiliary_genes --stem-width         # → results/stem_target_width.json

For a family ``F`` with fold runs of ``F`` and ``F_aux250`` (the same settings trained on the
250-gene panel plus the next 250 genes by mean expression, :mod:`models.workshop.auxiliary`),
the paired difference ``F_aux250 − F`` in PCC-ALL over the panel: LOSO-C (five C sections held
out in turn) and C2–C6 → A1 (both fold models trained on C2–C6; not the shipped file), raw and
3×3-smoothed labels, with the protocol's spot-bootstrap intervals and ties called ties
(:mod:`models.protocol`). Nothing here chooses a setting: ``n_aux`` = 250 was fixed before.

``--stem-width`` is the diagnostic of Stem-style's collapse with auxiliary genes (one fold, C2
held out; not a protocol number): Stem-style trained on wider target vectors (the panel, + 25
or + 250 auxiliary genes, or the panel's own 250 genes twice), each scored on the panel by its
sampled mean (what ships) and by its mean head alone.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.protocol import (
    N_BOOT,
    Method,
    on_off,
    on_off_cells,
    on_off_rows,
    test_sets_text,
)

RESULTS = Path(__file__).resolve().parent / "results"
#: Families with a shared trunk, where auxiliary targets can matter (NSL and the colour ridge
#: have no parameter shared between genes: unchanged by construction).
FAMILIES = ("stem", "dkan")


def measure(family: str, n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """``family_aux250 − family`` on the sections both have fold runs for, or ``None``."""
    base, aux = Method(family, family, family), Method(f"{family}_aux", "", f"{family}_aux250")
    measured = on_off(base, aux, n_boot)
    if measured is None:
        return None
    record: dict[str, Any] = {"family": family, "n_aux": 250}
    for key, value in measured.items():
        if isinstance(value, dict) and "other_minus_base" in value:
            value = {
                "without": value["base"],
                "with_aux": value["other"],
                "aux_minus_without": value["other_minus_base"],
                "sections": value["sections"],
            }
        record[key] = value
    return record


#: The held-out section of the ``--stem-width`` diagnostic.
WIDTH_FOLD = "C2"


def stem_target_width(fold: str = WIDTH_FOLD) -> dict[str, Any]:
    """Stem-style (shipped settings, seed 0, one torch thread) trained for ``fold`` on target
    vectors of growing width; PCC-ALL over the panel of its sampled mean and of its mean head
    (:func:`models.stem.train.mean_head_expression`)."""
    import numpy as np
    import torch

    from models.evaluate import N_GENES, TILE_PX, TILE_UM
    from models.folds import split
    from models.stem.train import StemMethod, StemSettings, mean_head_expression
    from models.workshop.auxiliary import auxiliary_genes
    from models.workshop.data import gene_panel, load_her2st
    from models.workshop.metrics import pearson_per_gene

    torch.set_num_threads(1)
    train, test = split(load_her2st(TILE_PX, TILE_UM), fold)
    genes = gene_panel(train, N_GENES, test.measured.genes)
    aux = auxiliary_genes(train, genes, 250)
    labels = test.targets(genes)
    widths = {
        "the panel": genes,
        "the panel + 25 auxiliary genes": [*genes, *aux[:25]],
        "the panel + 250 auxiliary genes": [*genes, *aux],
        "the panel twice (its own 250 genes duplicated)": [*genes, *genes],
    }

    def score(pred: Any) -> float:
        return round(float(pearson_per_gene(np.maximum(pred, 0.0), labels).mean()), 4)

    results = {}
    for name, targets in widths.items():
        method = StemMethod(StemSettings(point="sampled_mean")).fit(train, targets)
        sampled = np.asarray(method.predict(test.tiles))[:, : len(genes)]
        head = mean_head_expression(method.model_, test.tiles)[:, : len(genes)]
        results[name] = {
            "width": len(targets),
            "sampled_mean_pcc_all": score(sampled),
            "mean_head_pcc_all": score(head),
        }
    return {
        "what": "Stem-style trained on wider target vectors, scored on the 250-gene panel "
        "(raw labels); one fold, a diagnostic, not a protocol number",
        "held_out": fold,
        "results": results,
    }


def markdown(records: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Auxiliary Gene Learning, on/off (issue 19 item 4)",
        "",
        "Produced by `python -m models.auxiliary_genes` from the fold runs of "
        "`python -m models.folds --methods F F_aux250` (F = stem, dkan). PCC-ALL over the 250-gene panel; "
        "with = trained on the panel + the next 250 genes by mean expression (targets only); "
        "95 % paired spot-bootstrap intervals; A1 = fold models trained on C2–C6 (not the "
        "shipped files).",
        "",
        *(
            f"{rec['family']}: " + test_sets_text(rec["resolution_um_per_px"], rec["n_boot"])
            for rec in records
        ),
        "",
        "| family | setting | labels | without | with auxiliary genes | difference | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        for setting, kind, r in on_off_rows(rec, ("loso_C", "A1")):
            lines.append(
                f"| {rec['family']} | {setting} ({', '.join(r['sections'])}) | {kind} | "
                + on_off_cells(r["without"], r["with_aux"], r["aux_minus_without"])
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--n-boot", type=int, default=N_BOOT)
    parser.add_argument(
        "--stem-width", action="store_true", help="the Stem-style target-width diagnostic"
    )
    args = parser.parse_args(argv)
    if args.stem_width:
        record = stem_target_width()
        (RESULTS / "stem_target_width.json").write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record, indent=1))
        return 0
    measured = {r["family"]: r for f in args.families if (r := measure(f, args.n_boot))}
    if not measured:
        print("no family has fold runs with and without auxiliary genes yet")
        return 1
    # a family measured before whose fold runs this checkout lacks keeps its record
    path = RESULTS / "auxiliary_genes.json"
    earlier = json.loads(path.read_text()) if path.is_file() else []
    records = [measured.pop(r["family"], r) for r in earlier] + list(measured.values())
    path.write_text(json.dumps(records, indent=1) + "\n")
    (RESULTS / "auxiliary_genes.md").write_text(markdown(records))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
