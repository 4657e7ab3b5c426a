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


def finished_store(
    slide: Path, folder: Path, name: str, n_genes: int = 12, **model_options: Any
) -> Path:
    """A finished prediction store ``<folder>/<name>.vst.zarr`` of ``slide`` by a synthetic
    mean-colour model of ``n_genes`` genes (``model_options``: e.g. ``with_variance``)."""
    from napari_virtual_st.run import run_events
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(folder / f"{name}.onnx", n_genes=n_genes, **model_options)
    spec = RunSpec(slide, model, folder / f"{name}.vst.zarr", batch_size=64)
    drain(run_events(spec))
    return spec.store_path
