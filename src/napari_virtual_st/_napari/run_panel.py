"""What a prediction run shows in the panel that started it: the :class:`RunPanel` protocol.

A :class:`~.run_session.RunSession` reports to its panel through these five calls only, so
the session never reaches into a widget's fields; the Predict panel implements them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from napari_virtual_st.run import RunOutcome


class RunPanel(Protocol):
    """What a run shows in the panel that started it."""

    def show_status(self, text: str) -> None:
        """One line about where the run is."""

    def show_progress(self, done: int, total: int) -> None:
        """Spots predicted of ``total`` (0: not known yet)."""

    def show_providers(self, providers: Sequence[str]) -> None:
        """The execution providers that run the model."""

    def run_ended(self, outcome: RunOutcome) -> None:
        """The run's outcome (its layers are there; the spots layer may follow)."""

    def worker_finished(self) -> None:
        """The worker has gone: another run may start once the session is not running."""
