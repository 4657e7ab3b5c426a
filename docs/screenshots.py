"""What the docs' screenshot scripts share: letting Qt settle, saving the window as a PNG.

Screenshots are saved with 256 colours (napari's dark theme, the slide and the colour maps
survive that with no visible change), a third of the size of a full-colour PNG.
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
from PIL import Image
from qtpy.QtWidgets import QApplication


def settle(seconds: float = 0.5) -> None:
    """Let Qt process events (layout, slicing, drawing, worker signals) for a moment."""
    app = QApplication.instance()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def save_window(viewer: napari.Viewer, out: Path, name: str, settle_s: float = 0.8) -> Path:
    """Save the whole napari window to ``out/name`` (a 256-colour PNG), after settling."""
    settle(settle_s)
    path = out / name
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(rgba[..., :3]).quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    print(f"wrote {path}")
    return path
