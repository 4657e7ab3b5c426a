"""A worker's messages handled on the GUI thread in order, never re-entered: :class:`Inbox`.

napari's progress bars and layer controls process Qt events while they update, so a handler
of one worker message can be entered again by the next before it returns; the inbox queues
messages that arrive meanwhile and handles them once the one in hand is done.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any


class Inbox:
    """Messages (a handler and its arguments) handled one after another, in order."""

    def __init__(self) -> None:
        self._waiting: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._draining = False

    def post(self, handler: Callable[..., None], *args: Any) -> None:
        """Handle ``handler(*args)`` now, or after the messages before it when one is being
        handled (a re-entered call returns at once)."""
        self._waiting.append((handler, args))
        if self._draining:
            return
        self._draining = True
        try:
            while self._waiting:
                handler, args = self._waiting.popleft()
                handler(*args)
        finally:
            self._draining = False

    def clear(self) -> None:
        """Drop the messages not handled yet."""
        self._waiting.clear()
