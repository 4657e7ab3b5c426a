"""Helpers for tests that drive a prediction run's event generator (no Qt)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from napari_virtual_st.run import RunSpec


def drain(gen: Generator[Any, None, Any]) -> tuple[list[Any], Any]:
    """All events of a run and its return value."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def run_request(slide: Path, model: Path, store: Path, **kwargs: Any) -> RunSpec:
    """The run the Predict widget asks for (a preview, the starting values, the CPU left to
    the GUI) of ``slide`` with ``model`` into ``store``, in batches of 8 by default."""
    options: dict[str, Any] = {
        "batch_size": 8,
        "preview": True,
        "report_values": True,
        "yield_cpu": True,
    }
    options.update(kwargs)
    return RunSpec(slide_path=slide, model_path=model, store_path=store, **options)
