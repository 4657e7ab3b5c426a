"""Helpers for tests that drive a prediction run's event generator (no Qt)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from napari_virtual_st._napari.runner import RunRequest


def drain(gen: Generator[Any, None, Any]) -> tuple[list[Any], Any]:
    """All events of a run and its return value."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def run_request(slide: Path, model: Path, store: Path, **kwargs: Any) -> RunRequest:
    """A request for ``slide`` with ``model`` into ``store``, in batches of 8 by default."""
    return RunRequest(
        slide_path=slide,
        model_path=model,
        store_path=store,
        batch_size=kwargs.pop("batch_size", 8),
        **kwargs,
    )
