"""Error notifications whose first line is a whole sentence.

napari's toast shows about one line of its message until it is expanded, and cut the
plugin's long messages mid-sentence ("the slide does not record its µm per…"). Each error is
shown as a short headline a toast has room for, then the whole message (seen when the toast
is expanded, in napari's notification list, and in the panel's status line, which the
panels keep in sight).
"""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error

from napari_virtual_st._napari.labels import set_text

#: Characters napari's collapsed toast shows on its one line (400 px wide, default font).
TOAST_CHARS = 44


def toast_message(headline: str, message: str) -> str:
    """``headline`` alone when ``message`` adds nothing, else the headline, then the message
    on the next line."""
    message = message.strip()
    if not message or message == headline:
        return headline
    if len(message) <= TOAST_CHARS:
        return message
    return f"{headline}\n{message}"


def error(message: str, headline: str, *, status: Any = None) -> None:
    """Show an error: a toast whose first line is ``headline`` (a whole sentence that fits)
    and the whole ``message`` after it; ``status``, a panel's status label, shows the whole
    message too."""
    if status is not None:
        set_text(status, message)
    show_error(toast_message(headline, message))
