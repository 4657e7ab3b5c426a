"""The plugin's docks fit a screen: a 1920×1080 one with all four open, a 1366×768 laptop
with each one (the Predict panel with the Gene browser it opens), key controls in sight."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from qtpy.QtWidgets import QApplication, QWidget

PLUGIN = "napari-virtual-st"
PANELS = ("Predict expression", "Gene browser", "Export", "Measured ST")


def _settle(qtbot, ms: int = 200) -> None:
    QApplication.processEvents()
    qtbot.wait(ms)


def in_sight(widget: Any) -> bool:
    """Whether a widget is shown and wholly inside every widget above it up to its window
    (scroll areas' viewports included): a control a user sees without scrolling."""
    native: QWidget = getattr(widget, "native", widget)
    if not native.isVisible() or native.width() <= 0 or native.height() <= 0:
        return False
    rect = native.rect()
    child, parent = native, native.parentWidget()
    while parent is not None:
        rect = rect.translated(child.pos())
        if not parent.rect().contains(rect):
            return False
        if parent.isWindow():
            return True
        child, parent = parent, parent.parentWidget()
    return True


def test_all_four_panels_docked_fit_a_1920_by_1080_screen(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    window = viewer.window._qt_window
    for name in PANELS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
        _settle(qtbot)
    minimum = window.minimumSizeHint()
    assert minimum.width() <= 1920 and minimum.height() <= 1080, minimum
    window.resize(1920, 1080)
    _settle(qtbot)
    assert window.height() <= 1080 and window.width() <= 1920


def _predict(viewer: Any) -> list[Any]:
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    return [predict.run_button, predict.cancel_button, predict.progress_bar, predict.status]


def _gene_browser(viewer: Any) -> list[Any]:
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "Gene browser")
    return [predict.run_button, predict.status, browser.colour_bar, browser.cursor]


def _export(viewer: Any) -> list[Any]:
    _, export = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    return [export.export_button, export.progress_bar, export.status]


def _measured(viewer: Any) -> list[Any]:
    _, measured = viewer.window.add_plugin_dock_widget(PLUGIN, "Measured ST")
    return [measured.tabs.tabBar(), measured.load_button, measured.status]


@pytest.mark.parametrize("dock", [_predict, _gene_browser, _export, _measured])
def test_each_panels_key_controls_are_in_sight_on_a_1366_by_768_laptop(
    make_napari_viewer, qtbot, dock: Callable[[Any], list[Any]]
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    window = viewer.window._qt_window
    window.resize(1366, 768)
    controls = dock(viewer)
    _settle(qtbot, 400)
    window.resize(1366, 768)
    _settle(qtbot, 400)
    assert window.width() <= 1366 and window.height() <= 768, (window.width(), window.height())
    hidden = [
        type(c).__name__ + ":" + str(getattr(c, "text", "")) for c in controls if not in_sight(c)
    ]
    assert not hidden, hidden


def test_all_four_panels_docked_keep_their_key_controls_in_sight_on_a_1366_by_768_laptop(
    make_napari_viewer, qtbot
) -> None:
    """Docked together, Predict, Export and Measured ST share one place as tabs over the Gene
    browser: the window fits 1366×768 and each panel, its tab chosen, shows its key controls."""
    from qtpy.QtWidgets import QDockWidget

    from napari_virtual_st._napari.dock import dock_of

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    window = viewer.window._qt_window
    window.resize(1366, 768)
    controls: dict[str, list[Any]] = {}
    for dock in (_predict, _gene_browser):
        controls[dock.__name__] = dock(viewer)
        _settle(qtbot, 200)
    # two docked at once: their docks settle in either order, they still end in one group
    controls["_export"], controls["_measured"] = _export(viewer), _measured(viewer)
    _settle(qtbot, 400)
    window.resize(1366, 768)
    _settle(qtbot, 400)
    minimum = window.minimumSizeHint()
    assert minimum.width() <= 1366 and minimum.height() <= 768, minimum
    assert window.width() <= 1366 and window.height() <= 768, (window.width(), window.height())
    steps = [d for d in window.findChildren(QDockWidget) if "Gene browser" not in d.windowTitle()]
    steps = [d for d in steps if window.tabifiedDockWidgets(d)]
    assert len(steps) == 3, [d.windowTitle() for d in steps]  # Predict, Export, Measured ST
    hidden = []
    for panel, found in controls.items():
        dock_of(found[0]).raise_()  # (the panel's tab chosen)
        _settle(qtbot, 200)
        hidden += [
            f"{panel}: {type(c).__name__} {getattr(c, 'text', '')}"
            for c in found
            if not in_sight(c)
        ]
    assert not hidden, hidden
