"""A colour bar drawn by Qt in the Gene browser: the active heatmap's (or spots') colours
and limits.

napari's own colour bar is drawn on the canvas; its first appearance costs the canvas a font
atlas and a new visual (about half a second in software OpenGL), long enough to freeze the
viewer while a run is landing. This one is an ordinary Qt widget painted in a millisecond; it
follows whichever heatmap layer is active (colour map, contrast limits, name) and is empty
when none is. The canvas colour bars stay available from the Gene browser (for figures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QRect, Qt
from qtpy.QtGui import QColor, QImage, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

if TYPE_CHECKING:
    from napari.layers import Layer

#: Colours sampled along the bar.
N_COLOURS = 256
BAR_PX = 14
#: Layer events the bar follows (those a layer type lacks are skipped).
_EVENTS = ("colormap", "contrast_limits", "name", "face_color", "current_face_color")


def _scale_of(layer: Layer) -> tuple[Any, tuple[float, float]]:
    """A layer's colour map and its limits: an image's, or a points layer's face colours."""
    if hasattr(layer, "face_colormap"):
        return layer.face_colormap, tuple(layer.face_contrast_limits)
    return layer.colormap, tuple(layer.contrast_limits)


def _emitters(layer: Layer) -> list[Any]:
    return [e for e in (getattr(layer.events, n, None) for n in _EVENTS) if e is not None]


def limits_text(value: float) -> str:
    """A contrast limit as the bar's end labels show it (three significant digits)."""
    return f"{value:.3g}"


class ColourBar(QWidget):
    """A horizontal colour bar of one image layer: its name, its colours, its limits."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layer: Layer | None = None
        self._image: QImage | None = None
        self._rgba: np.ndarray | None = None
        self.title = ""
        self.low = ""
        self.high = ""
        #: called after each change of what the bar shows (e.g. a legend that follows it)
        self.on_update: Callable[[], None] | None = None
        self.setMinimumHeight(BAR_PX + 2 * self.fontMetrics().height() + 8)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    @property
    def layer(self) -> Layer | None:
        """The layer whose colours are shown (``None``: an empty bar)."""
        return self._layer

    def show_layer(self, layer: Layer | None) -> None:
        """Follow ``layer`` (its colour map, contrast limits and name), or nothing."""
        if layer is self._layer:
            return
        if self._layer is not None:
            for emitter in _emitters(self._layer):
                emitter.disconnect(self._update)
        self._layer = layer
        if layer is not None:
            for emitter in _emitters(layer):
                emitter.connect(self._update)
        self._update()

    def refresh(self) -> None:
        """Draw the layer's colours and limits again (e.g. after a change with no event)."""
        self._update()

    def release(self) -> None:
        """Stop following the layer (the widget is going away)."""
        if self._layer is not None:
            for emitter in _emitters(self._layer):
                emitter.disconnect(self._update)
        self._layer = None

    def colours(self) -> np.ndarray | None:
        """``(N_COLOURS, 4)`` float RGBA from the low to the high end (``None`` if empty)."""
        return None if self._rgba is None else self._rgba.copy()

    def _update(self, _event: Any = None) -> None:
        layer = self._layer
        if layer is None:
            self._rgba = self._image = None
            self.title = self.low = self.high = ""
        else:
            colormap, limits = _scale_of(layer)
            rgba = np.asarray(colormap.map(np.linspace(0.0, 1.0, N_COLOURS)), np.float32)
            self._rgba = rgba
            pixels = np.ascontiguousarray(
                (np.clip(rgba, 0.0, 1.0) * 255).round().astype(np.uint8)[None, :, :]
            )
            self._image = QImage(
                pixels.tobytes(), N_COLOURS, 1, 4 * N_COLOURS, QImage.Format.Format_RGBA8888
            ).copy()  # (the QImage must not keep pointing into the bytes buffer)
            lo, hi = (float(v) for v in limits)
            meta = layer.metadata.get("vst", {}) if isinstance(layer.metadata, dict) else {}
            gene = meta.get("gene") if isinstance(meta, dict) else None
            # (a spots layer's name does not say the gene its colours show)
            spots = hasattr(layer, "face_colormap") and gene and gene not in layer.name
            self.title = f"{gene} · {layer.name}" if spots else layer.name
            self.low, self.high = limits_text(lo), limits_text(hi)
        self.setToolTip(
            "" if layer is None else f"{self.title}: colours from {self.low} to {self.high}"
        )
        self.update()
        if self.on_update is not None:
            self.on_update()

    def paintEvent(self, _event: Any) -> None:  # (Qt names it)
        if self._image is None:
            return
        painter = QPainter(self)
        try:
            metrics = self.fontMetrics()
            line = metrics.height()
            width = self.width()
            painter.setPen(self.palette().windowText().color())
            painter.drawText(QRect(0, 0, width, line), int(Qt.AlignmentFlag.AlignLeft), self.title)
            bar = QRect(0, line + 2, width, BAR_PX)
            painter.drawImage(bar, self._image)
            painter.setPen(QColor(128, 128, 128))
            painter.drawRect(bar.adjusted(0, 0, -1, -1))
            painter.setPen(self.palette().windowText().color())
            labels = QRect(0, line + BAR_PX + 4, width, line)
            painter.drawText(labels, int(Qt.AlignmentFlag.AlignLeft), self.low)
            painter.drawText(labels, int(Qt.AlignmentFlag.AlignRight), self.high)
        finally:
            painter.end()
