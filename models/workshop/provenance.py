"""What every shipped model records about where it came from: code revision, data licence,
and its held-out metrics under the protocol."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: The HER2ST data's licence is unknown (../shared/data/SOURCES.md); every model trained on it
#: says so in its ``vst.license``.
HER2ST_LICENCE_NOTE = (
    "Weights trained on HER2ST (Andersson et al. 2021, github.com/almaan/her2st), whose data "
    "licence is unknown: research and test use only; do not use clinically."
)


def git_revision() -> str:
    """The repository's current commit, or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: How every shipped model's ``vst.metrics`` were measured (``models/evaluate.py``).
PROTOCOL = "models/evaluate.py cross_patient: train C2-C6, test A1; raw and 3x3-smoothed labels"


def held_out_record(
    held_out: dict[str, Any],
    test_section: str,
    n_test_spots: int,
    baselines: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A shipped model's ``vst.metrics``: the protocol, its held-out scores (raw and smoothed
    labels), the baselines on the same split when given, then any ``extra`` entries."""
    record: dict[str, Any] = {
        "protocol": PROTOCOL,
        "test_section": test_section,
        "n_test_spots": n_test_spots,
        "raw": held_out["raw"],
        "smoothed_3x3": held_out["smoothed_3x3"],
    }
    record.update(extra)
    if baselines is not None:
        record["baselines_same_split"] = {name: res["mean"] for name, res in baselines.items()}
    return record


def write_metrics_json(metrics: dict[str, Any], family: str) -> Path:
    """Keep a copy of a model's metrics beside its card (``models/<family>/metrics.json``)."""
    path = REPO / "models" / family / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
