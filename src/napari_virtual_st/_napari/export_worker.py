"""The job of the Export panel's worker thread: :func:`run_export`, and how it ended.

It runs :func:`~napari_virtual_st.export.export_steps` off the GUI thread in a
``napari.qt.threading`` worker, yielding its progress; an engine error (a cancel included)
is returned as the :class:`ExportOutcome`, not raised, so the panel shows it as a message.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.export import ExportCancelled, ExportProgress, ExportResult, export_steps
from napari_virtual_st.regions import Region


@dataclass(frozen=True)
class ExportOutcome:
    """How an export ended: its result, or the engine's error (``cancelled`` when asked)."""

    result: ExportResult | None
    error: VirtualSTError | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the user cancelled it."""
        return isinstance(self.error, ExportCancelled)


def run_export(
    store: Path,
    regions: list[Region] | None,
    h5ad: Path | None,
    geojson: Path | None,
    cancel: Callable[[], bool],
) -> Generator[ExportProgress, None, ExportOutcome]:
    """The worker's job: :func:`export_steps`, with engine errors returned, not raised."""
    try:
        result = yield from export_steps(store, regions, h5ad=h5ad, geojson=geojson, cancel=cancel)
    except VirtualSTError as exc:
        return ExportOutcome(None, exc)
    return ExportOutcome(result)
