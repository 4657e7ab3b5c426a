"""Text labels whose size never changes with their text.

A word-wrapped label that gets new text asks its dock, and through it the main window, to lay
out again. On a software-rendered display that costs tens of milliseconds each time, and a
run's status changes every quarter of a second (the cursor readout with every mouse move):
the viewer stuttered and the worker lost time to the GUI thread. These labels keep a fixed
height of a few lines; what does not fit is in the tooltip.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QLabel, QSizePolicy


def keep_height(label: Any, lines: int) -> None:
    """Make a magicgui ``Label`` word-wrapped with a fixed height of ``lines`` text lines,
    in the font it is drawn with (napari's theme sets a larger one once the panel is docked:
    the height follows, or the last line is cut)."""
    native = label.native
    native.setWordWrap(True)
    native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    keeper = _LineHeight(native, lines)
    native.installEventFilter(keeper)
    keeper.apply()


class _LineHeight(QObject):
    """Keeps a label ``lines`` text lines tall whenever its font or style changes."""

    def __init__(self, label: QLabel, lines: int) -> None:
        super().__init__(label)  # (owned by the label: lives and dies with it)
        self._label = label
        self._lines = lines

    def apply(self) -> None:
        # (a wrapped label lays its lines out a pixel further apart than the font's spacing)
        line = self._label.fontMetrics().lineSpacing() + 1
        self._label.setFixedHeight(self._lines * line + 4)

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        if event is not None and event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self.apply()
        return False


def set_text(label: Any, text: str) -> None:
    """Set a label's text, and its tooltip to the same (the whole text, however long)."""
    if label.value != text:
        label.value = text
        label.native.setToolTip(text)
