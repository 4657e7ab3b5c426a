"""What the Measured ST panels share: the session (the viewer, the slide and store chosen,
the loaded data and its alignment, the one worker running, the status line) and the panel
base class.

One worker runs at a time for the whole dock widget: :meth:`MeasuredSession.start` runs a job
in a ``napari.qt.threading`` worker, turns its engine errors (:class:`VirtualSTError`) into a
notification and a status line, and refreshes every panel's buttons when it starts and ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label
from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
from napari.utils.notifications import show_error

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import notify
from napari_virtual_st._napari.predict_form import file_edit_path
from napari_virtual_st.align import Transform
from napari_virtual_st.compare import Comparison
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.measured import MeasuredST
from napari_virtual_st.store import PredictionStore

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: A running job of the Measured ST widget (a function or a generator with progress).
Worker: TypeAlias = FunctionWorker | GeneratorWorker


@dataclass(frozen=True)
class _Failed:
    """A worker's job ended with an engine error, whose message the user should see."""

    error: VirtualSTError


class MeasuredSession:
    """The state the Measured ST panels share, and the worker they take turns with.

    Parameters
    ----------
    viewer
        The viewer holding the slide layer; measured and comparison layers appear there.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self.viewer = viewer
        self.measured: MeasuredST | None = None
        self.transform: Transform | None = None
        self.comparison: Comparison | None = None
        #: the measured image chosen to align with (its name, pixels, px per full-res px)
        self.image_name: str | None = None
        self.image: np.ndarray | None = None
        self.image_scale = 1.0
        #: per-spot totals and the counts by gene column, for the measured maps
        self.library: np.ndarray | None = None
        self.columns: Any = None
        self.columns_of: MeasuredST | None = None
        self.batch_size = 32
        self.worker: Worker | None = None
        self.cancel = threading.Event()
        self.closed = False
        self.panels: list[MeasuredPanel] = []
        # the two choices every panel reads (the data and compare panels show them)
        self.slide = ComboBox(label="Slide", choices=self._slide_choices)
        self.store = FileEdit(
            label="Store", mode=FileDialogMode.OPTIONAL_FILE, filter="*.vst.zarr"
        )
        self.status = Label(value="Open a slide, then load the measured data of that section.")
        self.status.native.setWordWrap(True)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)

    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer) for layer in self.viewer.layers if vst_layers.slide_path_of(layer)
        ]

    def _on_layers_changed(self, _event: Any = None) -> None:
        if self.closed:
            return
        self.slide.reset_choices()
        self.refresh()

    def close(self) -> None:
        """The dock widget closed: stop a running prediction, update nothing more."""
        self.closed = True
        self.cancel.set()

    # -- what is chosen and loaded -----------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a worker (loading, registration, prediction, comparison) is running."""
        return self.worker is not None

    @property
    def loaded(self) -> bool:
        """Whether measured data are loaded and the slide is chosen."""
        return self.measured is not None and self.slide.value is not None

    def mpp(self) -> float:
        """µm per level-0 pixel of the chosen slide.

        Raises
        ------
        VirtualSTError
            If no slide is chosen, or it does not record its resolution.
        """
        layer = self.slide.value
        if layer is None:
            raise VirtualSTError("open the slide first (File ▸ Open)")
        mpp = vst_layers.slide_mpp_of(layer)
        if mpp is None:
            raise VirtualSTError(
                "the slide does not record its µm per pixel: give it in the field under Slide"
            )
        return mpp

    def store_path(self) -> Path | None:
        """The prediction store chosen (``.vst.zarr`` added), or ``None``."""
        value = self.store.value
        if value is None or str(value) in ("", "."):
            return None
        path = file_edit_path(self.store)
        return path if path.name.endswith(".vst.zarr") else path.with_name(path.name + ".vst.zarr")

    def saved_transform(self) -> Transform | None:
        """The alignment saved with the chosen store, if any (an unreadable one is shown)."""
        path = self.store_path()
        if path is None or not path.is_dir():
            return None
        try:
            return PredictionStore.open(path).load_transform()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None

    # -- layers by role ----------------------------------------------------------------------
    def layer(self, role: str) -> Layer | None:
        """The viewer's layer with this role in ``metadata['vst']``."""
        for layer in self.viewer.layers:
            if vst_layers.vst_meta(layer).get("role") == role:
                return layer
        return None

    def remove_role(self, role: str) -> None:
        """Remove the viewer's layers with this role."""
        for layer in list(self.viewer.layers):
            if vst_layers.vst_meta(layer).get("role") == role:
                self.viewer.layers.remove(layer)

    # -- the worker and the status line ------------------------------------------------------
    def set_status(self, text: str) -> None:
        """Show ``text`` on the status line."""
        self.status.value = text

    def refresh(self) -> None:
        """Enable each panel's buttons for the current state."""
        for panel in self.panels:
            panel.update_buttons()

    def start(
        self,
        job: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None],
        on_yield: Callable[[Any], None] | None = None,
        message: str,
    ) -> Worker:
        """Run ``job(*args)`` in a worker (a generator when ``on_yield`` is given); its
        engine errors become notifications, its result goes to ``on_done``."""

        def guarded(*a: Any) -> Any:
            try:
                if on_yield is None:
                    return job(*a)
                return (yield from job(*a))
            except VirtualSTError as exc:  # (napari re-raises a returned exception)
                return _Failed(exc)

        worker = create_worker(guarded, *args, _start_thread=False)
        if on_yield is not None:
            worker.yielded.connect(on_yield)

        def returned(result: Any) -> None:
            if isinstance(result, _Failed):
                show_error(notify.toast_message("Measured ST: stopped.", str(result.error)))
                self.set_status(f"stopped: {result.error}")
            elif not self.closed:
                on_done(result)

        worker.returned.connect(returned)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self.refresh()
        self.set_status(message)
        worker.start()
        return worker

    def _on_worker_finished(self) -> None:
        self.worker = None
        if not self.closed:
            self.refresh()


class MeasuredPanel(Container):
    """One part of the Measured ST dock widget, working on the shared session.

    Parameters
    ----------
    session
        The state shared with the other panels.
    """

    def __init__(self, session: MeasuredSession) -> None:
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)
        self.session = session
        session.panels.append(self)

    def update_buttons(self) -> None:
        """Enable the panel's buttons for the session's state (none by default)."""

    @staticmethod
    def wrap(*labels: Label) -> None:
        """Let long label texts wrap."""
        for label in labels:
            label.native.setWordWrap(True)
