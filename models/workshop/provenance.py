"""What every shipped model records about where it came from: code revision and data licence."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
