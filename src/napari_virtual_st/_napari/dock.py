"""Dock widgets that fit a laptop screen: forms that scroll, key controls that stay in sight.

napari stacks the plugin's docks in one column on the right of the window, and a dock cannot
be shorter than its widget's minimum height; four full forms needed a 2,755 px tall window.
:func:`scroll_form` puts a panel's form in a scroll area (its minimum height is a few lines)
and keeps the controls a user must always reach (Run, the colour bar, a status line) pinned
below it, outside the scroll. :func:`tabbed` lays long workflows out as tabs, one step each.
:func:`dock_as_step` makes the step panels (Predict, Export, Measured ST) share one place as
tabs when docked together, so the four docks fit a 1366×768 laptop; the Gene browser (the
heatmaps' legend) stays in sight beside them.

napari docks a magicgui widget's ``native`` QWidget, so the scroll area goes *inside* it:
the form's layout moves to a new inner widget (Qt's ``setLayout`` takes a layout over from
the widget that had it, with its widgets), and magicgui keeps adding to that same layout.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QBoxLayout,
    QComboBox,
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

#: Qt's largest widget size (a maximum height below it means a fixed height).
QWIDGETSIZE_MAX = (1 << 24) - 1
#: A panel's scrolling form is never shorter than this (a few fields stay in view).
MIN_FORM_PX = 72
#: Characters a chooser shows at least; longer names (models, stores) are elided, so that
#: a long name does not make the dock, and the window, wider than a laptop screen.
MIN_CHOOSER_CHARS = 16


def narrow_choosers(widget: QWidget) -> None:
    """Let every chooser under ``widget`` be narrower than its longest entry (a dock's
    minimum width is that of its widest row); wrapped texts start at the top left."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(MIN_CHOOSER_CHARS)
    for label in widget.findChildren(QLabel):
        if label.wordWrap():
            label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            # (magicgui makes labels Fixed: as wide as their text on one line, at least)
            if label.maximumHeight() < QWIDGETSIZE_MAX:
                continue  # (a label of fixed height: its text is in its tooltip)
            # (magicgui makes labels Fixed: at least as wide as their text on one line)
            policy = label.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Policy.Expanding)
            label.setSizePolicy(policy)
            label.installEventFilter(_WRAP_HEIGHT)  # (as tall as its lines at its width)


class _WrapHeight(QObject):
    """Keeps a word-wrapped label as tall as its text at the width it was given (a form's
    rows are laid out by their size hints, which assume a much wider label)."""

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        if isinstance(obj, QLabel) and event is not None and event.type() == QEvent.Type.Resize:
            height = obj.heightForWidth(obj.width())
            if height > 0 and obj.minimumHeight() != height:
                obj.setMinimumHeight(height)
        return False


_WRAP_HEIGHT = _WrapHeight()


def _native(widget: Any) -> QWidget:
    native = getattr(widget, "native", widget)
    assert isinstance(native, QWidget)
    return native


def scroll_area(
    inner: QWidget, *, min_height: int = MIN_FORM_PX, stretch: bool = True
) -> QScrollArea:
    """A frameless vertical scroll area around ``inner`` (no horizontal scrolling: it is
    as wide as its widget needs). ``stretch``: the rows keep their heights at the top when
    the area is taller than them (else the extra height goes to rows that can grow)."""
    narrow_choosers(inner)
    layout = inner.layout()
    if stretch and isinstance(layout, QBoxLayout):
        layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    scroll_bar = scroll.verticalScrollBar()
    bar = scroll_bar.sizeHint().width() if scroll_bar is not None else 16
    scroll.setMinimumWidth(inner.minimumSizeHint().width() + bar)
    scroll.setMinimumHeight(min_height)
    return scroll


def scroll_form(
    container: Any, pinned: Sequence[Any] = (), *, stretch: bool = True
) -> QScrollArea:
    """Make a magicgui container's form scroll inside its own widget (what napari docks).

    Parameters
    ----------
    container
        A magicgui ``Container`` whose fields are already added (later ones go into the
        scrolling form too).
    pinned
        Widgets (magicgui or Qt, not in ``container``) shown below the form, always in sight.
    stretch
        Keep the rows at the top of a taller dock (``False``: a row that can grow, such as
        a list, takes the extra height).

    Returns
    -------
    QScrollArea
        The scroll area holding the form.
    """
    outer = _native(container)
    form = QWidget()
    form.setObjectName("vst-form")
    form.setLayout(outer.layout())  # (takes the layout and its widgets over)
    scroll = scroll_area(form, stretch=stretch)
    layout = QVBoxLayout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    layout.addWidget(scroll, 1)
    if pinned:
        layout.addWidget(_pinned_box(pinned))
    outer.setLayout(layout)
    return scroll


def share_height(docks: Sequence[QDockWidget], shares: Sequence[float]) -> None:
    """Share the height of docks stacked in one column of their main window (``shares`` of
    the column, in order); nothing when they are not in one window."""
    window = docks[0].parentWidget() if docks else None
    if not isinstance(window, QMainWindow) or any(d.parentWidget() is not window for d in docks):
        return
    total = sum(d.height() for d in docks)
    sizes = [max(1, int(total * share)) for share in shares]
    window.resizeDocks(list(docks), sizes, Qt.Orientation.Vertical)


def _pinned_box(pinned: Sequence[Any]) -> QWidget:
    """The always-visible widgets under a form, with the form's side margins."""
    box = QWidget()
    box.setObjectName("vst-pinned")
    layout = QVBoxLayout(box)
    layout.setContentsMargins(9, 2, 9, 6)
    layout.setSpacing(4)
    for widget in pinned:
        layout.addWidget(_native(widget))
    narrow_choosers(box)
    return box


def tabbed(
    container: Any, pages: Sequence[tuple[str, Any]], pinned: Sequence[Any] = ()
) -> QTabWidget:
    """Lay a magicgui container out as tabs, one scrolling page per step.

    Parameters
    ----------
    container
        The magicgui ``Container`` napari docks (its own fields, if any, are not shown).
    pages
        ``(title, widget)`` per tab, in order.
    pinned
        Widgets shown below the tabs, always in sight.
    """
    outer = _native(container)
    tabs = QTabWidget()
    tabs.setDocumentMode(True)
    for title, page in pages:
        tabs.addTab(scroll_area(_native(page)), title)
    layout = outer.layout()
    if not isinstance(layout, QVBoxLayout):
        raise TypeError("tabbed() needs a vertical container")
    layout.addWidget(tabs, 1)
    if pinned:
        layout.addWidget(_pinned_box(pinned))
    return tabs


#: How often, and how many ms apart, a new step panel looks for its dock (napari docks a
#: panel after making it; a panel made in a script is never docked).
DOCK_TRIES, DOCK_WAIT_MS = 20, 50
#: The step panels made so far (their native widgets), oldest first: a new one joins the
#: tabs of the oldest one docked, so every step panel ends in one group whatever the order
#: their docks settle in.
_STEPS: list[weakref.ref[QWidget]] = []


def dock_as_step(widget: Any) -> None:
    """Mark ``widget`` as a step panel: once napari has docked it, it joins another step
    panel's dock in the same window and area as a tab, and is shown (its tab raised).

    Stacked, the three step panels and the Gene browser needed a 969 px tall window; as
    tabs over the Gene browser they fit a 768 px laptop screen. Nothing happens to a panel
    that is not docked (a widget made in a script) or the first step panel docked.
    """
    native = _native(widget)
    _STEPS[:] = [ref for ref in _STEPS if ref() is not None]
    _STEPS.append(weakref.ref(native))
    QTimer.singleShot(0, functools.partial(_tab_with_steps, native, DOCK_TRIES))


def dock_of(widget: Any) -> QDockWidget | None:
    """The dock holding ``widget`` (magicgui or Qt), or ``None`` when it is not docked."""
    parent = _native(widget).parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _tab_with_steps(native: QWidget, tries: int) -> None:
    try:
        dock = dock_of(native)
    except RuntimeError:  # (the panel was closed before its dock settled)
        return
    window = dock.parentWidget() if dock is not None else None
    if dock is None or not isinstance(window, QMainWindow):
        if tries > 1:  # (napari may not have docked it yet: it can process events first)
            QTimer.singleShot(DOCK_WAIT_MS, functools.partial(_tab_with_steps, native, tries - 1))
        return
    area = window.dockWidgetArea(dock)
    for ref in list(_STEPS):
        other_native = ref()
        if other_native is None or other_native is native:
            continue
        try:
            other = dock_of(other_native)
        except RuntimeError:
            continue
        if (
            other is not None
            and other is not dock
            and other.parentWidget() is window
            and not other.isFloating()
            and not other.isHidden()  # (closed)
            and window.dockWidgetArea(other) == area
        ):
            if other not in window.tabifiedDockWidgets(dock):  # (not together already)
                window.tabifyDockWidget(other, dock)
            # (the tabs above the panels, where a reader looks first, not under them)
            window.setTabPosition(area, QTabWidget.TabPosition.North)
            dock.show()
            dock.raise_()
            return
