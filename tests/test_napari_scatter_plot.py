"""The Qt-only scatter plot of the Measured ST view (the plugin needs no matplotlib)."""

from __future__ import annotations

import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from napari_virtual_st._napari.scatter_plot import ScatterPlot, nice_ticks


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.13, 0.87) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert nice_ticks(-3.0, 47.0) == pytest.approx([0.0, 10.0, 20.0, 30.0, 40.0])
    assert nice_ticks(2.0, 2.0) == [2.0]
    assert nice_ticks(0.0, float("nan")) == []


def _blue_pixels(plot: ScatterPlot) -> np.ndarray:
    image = plot.grab().toImage()
    rgb = np.array(
        [
            [image.pixelColor(x, y).getRgb()[:3] for x in range(image.width())]
            for y in range(image.height())
        ]
    )
    return (rgb[..., 2] > 150) & (rgb[..., 0] < 150)  # the points' blue, not black or white


def test_points_are_drawn_where_they_are_and_kept_as_given(qtbot: QtBot) -> None:
    plot = ScatterPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 240)
    x = np.array([0.0, 1.0, 2.0, np.nan])
    y = np.array([0.0, 2.0, 4.0, 1.0])
    plot.set_points(x, y, title="ERBB2", x_label="measured", y_label="predicted")
    np.testing.assert_array_equal(plot.points(), np.column_stack([x, y]))
    assert plot.title() == "ERBB2"
    blue = _blue_pixels(plot)
    rows, cols = np.nonzero(blue)
    assert blue.sum() > 10
    # three finite points on a rising line: the lowest point is left, the highest right
    assert cols[rows.argmax()] < cols[rows.argmin()]
    plot.set_points(x[:1], y[:1], title="", x_label="", y_label="")
    assert _blue_pixels(plot).sum() < blue.sum()
    plot.set_points(np.empty(0), np.empty(0), title="", x_label="", y_label="")
    assert not _blue_pixels(plot).any()
