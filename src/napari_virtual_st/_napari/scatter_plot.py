"""A small scatter plot drawn with Qt alone (the Measured ST view's predicted-vs-measured plot).

Painted with ``QPainter`` so the plugin needs nothing beyond what napari brings (no
matplotlib): a plain ``pip install napari-virtual-st`` into napari's environment has every
panel.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Point colour (matplotlib's first default colour, as the plot had before) and its opacity.
POINT_COLOUR = QColor(31, 119, 180, 150)
POINT_RADIUS_PX = 2.5
#: Margins around the plotting area, in pixels: left (tick labels + y label), top (title),
#: right, bottom (tick labels + x label).
MARGINS_PX = (52, 22, 10, 38)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 × a power of ten).

    Parameters
    ----------
    lo, hi
        The data range; equal values give the one value.
    target
        About how many ticks.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(lo / step) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(count)]


def _padded(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * 0.05 or max(abs(lo) * 0.05, 0.5)
    return lo - pad, hi + pad


class ScatterPlot(QWidget):
    """Points ``(x, y)`` with axes, round ticks, axis labels and a title.

    Parameters
    ----------
    parent
        Parent widget, if any.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._xy = np.empty((0, 2))
        self._title = ""
        self._labels = ("", "")
        self.setMinimumHeight(240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_points(
        self, x: np.ndarray, y: np.ndarray, *, title: str, x_label: str, y_label: str
    ) -> None:
        """Show these points (non-finite ones are kept but not drawn) and redraw."""
        self._xy = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
        self._title = title
        self._labels = (x_label, y_label)
        self.update()

    def points(self) -> np.ndarray:
        """``(n, 2)`` the points shown (x, y)."""
        return self._xy.copy()

    def title(self) -> str:
        """The plot's title."""
        return self._title

    def paintEvent(self, event: QPaintEvent | None) -> None:
        """Draw the axes, the ticks, the labels and the points."""
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.fillRect(self.rect(), QColor("white"))
            left, top, right, bottom = MARGINS_PX
            area = QRectF(
                left,
                top,
                max(self.width() - left - right, 1),
                max(self.height() - top - bottom, 1),
            )
            font = QFont(painter.font())
            font.setPointSizeF(8.0)
            painter.setFont(font)
            painter.setPen(QPen(QColor("black")))
            painter.drawText(
                QRectF(0, 0, self.width(), top), Qt.AlignmentFlag.AlignCenter, self._title
            )
            painter.drawRect(area)
            finite = self._xy[np.isfinite(self._xy).all(axis=1)]
            if len(finite):
                self._draw_data(painter, area, finite)
        finally:
            painter.end()

    def _draw_data(self, painter: QPainter, area: QRectF, xy: np.ndarray) -> None:
        (x0, x1), (y0, y1) = _padded(xy[:, 0]), _padded(xy[:, 1])

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(
                area.left() + (x - x0) / (x1 - x0) * area.width(),
                area.bottom() - (y - y0) / (y1 - y0) * area.height(),
            )

        metrics = painter.fontMetrics()
        for tick in nice_ticks(x0, x1):
            p = to_px(tick, y0)
            painter.drawLine(p, p + QPointF(0, 4))
            text = f"{tick:g}"
            painter.drawText(
                QPointF(p.x() - metrics.horizontalAdvance(text) / 2, p.y() + 5 + metrics.ascent()),
                text,
            )
        for tick in nice_ticks(y0, y1):
            p = to_px(x0, tick)
            painter.drawLine(p, p - QPointF(4, 0))
            text = f"{tick:g}"
            painter.drawText(
                QPointF(p.x() - 6 - metrics.horizontalAdvance(text), p.y() + metrics.ascent() / 2),
                text,
            )
        x_label, y_label = self._labels
        painter.drawText(
            QRectF(area.left(), area.bottom() + 18, area.width(), 18),
            Qt.AlignmentFlag.AlignCenter,
            x_label,
        )
        painter.save()
        painter.translate(12, area.center().y())
        painter.rotate(-90)
        painter.drawText(
            QRectF(-area.height() / 2, -9, area.height(), 18),
            Qt.AlignmentFlag.AlignCenter,
            y_label,
        )
        painter.restore()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(POINT_COLOUR)
        painter.setClipRect(area)
        for x, y in xy:
            painter.drawEllipse(to_px(float(x), float(y)), POINT_RADIUS_PX, POINT_RADIUS_PX)
