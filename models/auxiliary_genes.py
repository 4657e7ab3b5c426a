"""Auxiliary Gene Learning measured on/off (issue 19 item 4), under the protocol.

    python -m models.folds --methods stem stem_aux250     # fold runs (LOSO-C and C2–C6 → A1)
    python -m models.auxiliary_genes                      # → results/auxiliary_genes.json, .md

For a family ``F`` with fold runs of ``F`` and ``F_aux250`` (the same settings trained on the
250-gene panel plus the next 250 genes by mean expression, :mod:`models.workshop.auxiliary`),
the paired difference ``F_aux250 − F`` in PCC-ALL over the panel: LOSO-C (five C sections held
out in turn) and C2–C6 → A1 (both fold models trained on C2–C6; not the shipped file), raw and
3×3-smoothed labels, with the protocol's spot-bootstrap intervals and ties called ties
(:mod:`models.protocol`). Nothing here chooses a setting: ``n_aux`` = 250 was fixed before.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.evaluate import C_SECTIONS, TEST_SECTION, TILE_PX, TILE_UM
from models.folds import fold_path
from models.protocol import (
    LABEL_KINDS,
    N_BOOT,
    Fold,
    Method,
    cell_text,
    difference,
    load_fold_prediction,
    make_fold,
    section_scores,
    summarise,
    test_sets_text,
)
from models.workshop.data import load_her2st

RESULTS = Path(__file__).resolve().parent / "results"
#: Families with a shared trunk, where auxiliary targets can matter (NSL and the colour ridge
#: have no parameter shared between genes: unchanged by construction).
FAMILIES = ("stem", "dkan")


def measure(family: str, n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """``family_aux250 − family`` on the sections both have fold runs for, or ``None``."""
    base, aux = Method(family, family, family), Method(f"{family}_aux", "", f"{family}_aux250")
    sections = [
        k
        for k in (*C_SECTIONS, TEST_SECTION)
        if fold_path(base.fold_method, k).is_file() and fold_path(aux.fold_method, k).is_file()
    ]
    if not sections:
        return None
    data = load_her2st(TILE_PX, TILE_UM, names=sections)
    folds: dict[str, Fold] = {}
    preds: dict[str, dict[str, Any]] = {"base": {}, "aux": {}}
    for k in sections:
        genes, p_base = load_fold_prediction(base, k)
        genes_aux, p_aux = load_fold_prediction(aux, k)
        if genes != genes_aux:
            raise ValueError(f"{family} {k}: the two runs' gene panels differ")
        index = (*C_SECTIONS, TEST_SECTION).index(k)
        folds[k] = make_fold(data[k], genes, index, n_boot)
        preds["base"][k], preds["aux"][k] = p_base, p_aux
    record: dict[str, Any] = {
        "family": family,
        "n_aux": 250,
        "sections": sections,
        "n_boot": n_boot,
        "resolution_um_per_px": {k: round(data[k].mpp, 3) for k in sections},
    }
    for setting, wanted in (("loso_C", C_SECTIONS), ("A1", (TEST_SECTION,))):
        keys = [k for k in sections if k in wanted]
        if not keys:
            continue
        for kind in LABEL_KINDS:
            b = section_scores({k: preds["base"][k] for k in keys}, folds, kind)
            a = section_scores({k: preds["aux"][k] for k in keys}, folds, kind)
            record[f"{setting}_{kind}"] = {
                "without": summarise(*b),
                "with_aux": summarise(*a),
                "aux_minus_without": difference(a[0], boots=a[1], other=b),
                "sections": keys,
            }
    return record


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
        for setting in ("loso_C", "A1"):
            for kind in LABEL_KINDS:
                r = rec.get(f"{setting}_{kind}")
                if r is None:
                    continue
                d = r["aux_minus_without"]
                verdict = {"a": "helps", "b": "hurts", "tie": "tie"}[d["verdict"]]
                lines.append(
                    f"| {rec['family']} | {setting} ({', '.join(r['sections'])}) | {kind} | "
                    f"{cell_text(r['without'])} | {cell_text(r['with_aux'])} | "
                    f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                    f"{verdict} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--n-boot", type=int, default=N_BOOT)
    args = parser.parse_args(argv)
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
