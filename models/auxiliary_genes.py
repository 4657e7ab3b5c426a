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
