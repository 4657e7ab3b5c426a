"""Text labels whose size never changes with their text.

A word-wrapped label that gets new text asks its dock, and through it the main window, to lay
out again. On a software-rendered display that costs tens of milliseconds each time, and a
run's status changes every quarter of a second (the cursor readout with every mouse move):
the viewer stuttered and the worker lost time to the GUI thread. These labels keep a fixed
height of a few lines; what does not fit is in the tooltip.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy


def keep_height(label: Any, lines: int) -> None:
    """Make a magicgui ``Label`` word-wrapped with a fixed height of ``lines`` text lines."""
    native = label.native
    native.setWordWrap(True)
    native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    native.setFixedHeight(lines * native.fontMetrics().lineSpacing() + 4)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)


def set_text(label: Any, text: str) -> None:
    """Set a label's text, and its tooltip to the same (the whole text, however long)."""
    if label.value != text:
        label.value = text
        label.native.setToolTip(text)
