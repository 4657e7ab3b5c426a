"""What a prediction run reports while it runs, and how it ended.

:func:`napari_virtual_st.run.run` calls its ``progress`` callback with these events; the
plugin receives the same events from its prediction process. They are plain, picklable
values: batch events carry the batch's values, so a viewer never re-reads the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st.errors import CancelledError, VirtualSTError
from napari_virtual_st.pipeline import Progress
from napari_virtual_st.store_view import StoreView


@dataclass(frozen=True)
class StageEvent:
    """A slow step has started (``message`` says which)."""

    message: str


@dataclass(frozen=True)
class PreviewEvent:
    """Values of a first few spots, predicted before the run's grid is known.

    Its spots lie on the run's lattice where a quick coarse tissue mask finds tissue, near
    the middle of the view; the run predicts them again in its own batches.

    Attributes
    ----------
    view
        The preview spots and their values, as a view of the run's store (same path).
    """

    view: StoreView


@dataclass(frozen=True)
class StoreReadyEvent:
    """The store exists and prediction is about to start (or was already complete).

    Attributes
    ----------
    progress
        The engine's first report: spots already done and in all.
    providers
        Execution providers the model runs on.
    mpp
        µm per level-0 pixel the run uses.
    view
        The store's contents at the start (values of a resumed run included), when the
        run was asked to report values (``RunSpec.report_values``), else ``None``.
    """

    progress: Progress
    providers: tuple[str, ...]
    mpp: float
    view: StoreView | None = None


@dataclass(frozen=True)
class BatchEvent:
    """One batch is predicted and saved; its values for every gene."""

    progress: Progress
    expression: NDArray[np.float32]
    variance: NDArray[np.float32] | None


RunEvent = StageEvent | PreviewEvent | StoreReadyEvent | BatchEvent


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: the finished store, or the engine's error (cancelling included).

    Attributes
    ----------
    store_path
        The finished store, or ``None`` when the run did not finish.
    error
        The error whose message the user should see (``None`` on success).
    """

    store_path: Path | None
    error: VirtualSTError | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the user cancelled the run."""
        return isinstance(self.error, CancelledError)
