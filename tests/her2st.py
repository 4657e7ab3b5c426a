"""The real HER2ST data for tests that train or score models (skipped where it is absent)."""

from __future__ import annotations

from types import ModuleType

import pytest


def workshop_data() -> ModuleType:
    """``models.workshop.data``, or skip the test when ../shared/data/her2st_subset is absent."""
    from models.workshop.data import data_available

    if not data_available():
        pytest.skip(
            "HER2ST data not available: ../shared/data/her2st_subset is absent beside the checkout"
        )
    from models.workshop import data

    return data
