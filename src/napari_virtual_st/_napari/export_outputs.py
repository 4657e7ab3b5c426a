"""The files the Export panel writes: the names it suggests (never an existing file, and
never the user's own choice overwritten), the paths read from its fields, and what it says
when an export is done.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from magicgui.widgets import FileEdit

from napari_virtual_st.export import ExportError, ExportResult


def free_path(path: Path) -> Path:
    """``path`` if no file has that name, else the first free ``<stem>-2<suffix>``,
    ``<stem>-3<suffix>``, … beside it (``<stem>`` without a ``-<n>`` it ends in)."""
    if not path.exists():
        return path
    suffix = ".vst.zarr" if path.name.endswith(".vst.zarr") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    stem = re.sub(r"-\d+$", "", stem)  # (a name this gave before: counted on from its stem)
    n = 2
    while (candidate := path.with_name(f"{stem}-{n}{suffix}")).exists():
        n += 1
    return candidate


class SuggestedPaths:
    """The output paths the panel suggested, by field label: a field the user typed a path
    of their own into is left alone."""

    def __init__(self) -> None:
        self._suggested: dict[str, str] = {}

    def suggest(self, field: FileEdit, path: Path) -> None:
        """Suggest an output path (never an existing file: the next free name), unless the
        user typed one of their own."""
        current = str(field.value)
        key = field.label
        if current in ("", ".") or current == self._suggested.get(key):
            field.value = free_path(path)
            self._suggested[key] = str(field.value)

    def advance(self, fields: Iterable[FileEdit]) -> None:
        """Suggested paths that now exist (an export wrote them) move to the next free name,
        so that a second export never replaces the first."""
        for field in fields:
            current = str(field.value)
            if current == self._suggested.get(field.label) and Path(current).exists():
                self.suggest(field, Path(current))


def output_path(
    field: FileEdit, wanted: bool, suffix: str, suffixes: Sequence[str]
) -> Path | None:
    """The path in ``field`` (``suffix`` added unless it ends in one of ``suffixes``);
    ``None`` when not ``wanted``.

    Raises
    ------
    ExportError
        If it is wanted and the field has no file name.
    """
    if not wanted:
        return None
    value = str(field.value)
    if value in ("", "."):
        raise ExportError(f"give a file name for the {field.label}")
    path = Path(value).expanduser()
    if path.suffix.lower() not in suffixes and not path.is_dir():
        path = path.with_name(path.name + suffix)
    return path


def done_texts(result: ExportResult, replaced: Sequence[Path]) -> tuple[str, str]:
    """What the panel says when an export is done: its summary (spots, per region, the
    files, the files replaced) and its notification (a first line that fits the toast,
    the files after it)."""
    written = [str(p) for p in (result.h5ad, result.geojson) if p is not None]
    per_region = "; ".join(f"{label}: {n:,}" for label, n in result.region_counts.items())
    names = [p.name for p in replaced]
    note = f"Replaced the earlier {' and '.join(names)}." if names else ""
    summary = (
        f"{result.n_spots:,} spots" + (f" — {per_region}" if per_region else "") + "\n"
    ) + "\n".join(written + ([note] if note else []))
    toast = (
        f"Exported {result.n_spots:,} spots.\n"
        + " and ".join(written)
        + (f". {note}" if note else "")
    )
    return summary, toast
