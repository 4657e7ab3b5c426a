"""The Measured ST dock widget: load measured spatial transcriptomics, align it to a slide,
predict at its spots and read the per-gene agreement.

A thin composition of three panels over one shared session (:mod:`.measured_panel`):

- :class:`~.measured_data_panel.DataPanel` — the slide and the measured data, read in a worker;
- :class:`~.measured_alignment_panel.AlignmentPanel` — (a) a scale factor, (b) landmarks,
  (c) automatic registration; the measured layers follow the alignment;
- :class:`~.measured_compare_panel.ComparePanel` — prediction at the measured spots (the core
  :func:`~napari_virtual_st.run.run_events`), the comparison, and the per-gene view
  (:class:`~.measured_gene_view.GeneView`: table, scatter plot, maps).

The engine does the work (:mod:`~napari_virtual_st.measured`, :mod:`~napari_virtual_st.align`,
:mod:`~napari_virtual_st.compare`, :mod:`.measured_layers`); the GUI thread only builds layers,
the table and the scatter plot from the workers' results. The alignment is saved with the
prediction store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container

from napari_virtual_st._napari.dock import dock_as_step, tabbed
from napari_virtual_st._napari.measured_alignment_panel import AlignmentPanel
from napari_virtual_st._napari.measured_compare_panel import ComparePanel
from napari_virtual_st._napari.measured_data_panel import DataPanel
from napari_virtual_st._napari.measured_panel import MeasuredSession, Worker
from napari_virtual_st.measured import MeasuredST

if TYPE_CHECKING:
    import napari

#: The tabs shown after loading (alignment) and after comparing (the genes).
TAB_ALIGN, TAB_GENES = 1, 3


def _forward(path: str, name: str) -> Any:
    """A read-only attribute that is ``name`` of the panel at ``path`` (dotted)."""

    def get(self: MeasuredWidget) -> Any:
        owner: Any = self
        for part in path.split("."):
            owner = getattr(owner, part)
        return getattr(owner, name)

    return property(get, doc=f"``{path}.{name}``")


class MeasuredWidget(Container):
    """Load measured ST, align it to a slide layer, predict at its spots and compare.

    The panels are :attr:`data`, :attr:`alignment` and :attr:`compare`; their fields and
    actions are also reachable here under their own names (``widget.load()``,
    ``widget.fit()``, ``widget.table``, ...).

    Parameters
    ----------
    napari_viewer
        The viewer holding the slide layer; measured and comparison layers appear there.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=False)
        self.session = MeasuredSession(napari_viewer)
        self.alignment = AlignmentPanel(self.session)
        self.data = DataPanel(self.session, on_loaded=self._on_loaded)
        self.compare = ComparePanel(
            self.session,
            on_store_changed=self.alignment.use_saved,
            on_compared=lambda: self.tabs.setCurrentIndex(TAB_GENES),
        )
        # one step per tab, each scrolling: the dock fits a laptop screen; the status line
        # stays in sight whichever tab is open
        self.tabs = tabbed(
            self,
            [
                ("1 Data", self.data),
                ("2 Align", self.alignment),
                ("3 Predict", self.compare),
                ("4 Genes", self.compare.gene_view),
            ],
            pinned=[self.session.status],
        )
        dock_as_step(self)
        self.native.destroyed.connect(self._on_destroyed)
        self.session.refresh()

    def _on_loaded(self) -> None:
        """Measured data loaded: place them, and show the alignment step."""
        self.alignment.place_loaded()
        self.tabs.setCurrentIndex(TAB_ALIGN)

    def _on_destroyed(self, *_: Any) -> None:
        self.session.close()

    # -- the session's state -----------------------------------------------------------------
    @property
    def measured(self) -> MeasuredST | None:
        """The loaded measured data."""
        return self.session.measured

    @measured.setter
    def measured(self, value: MeasuredST | None) -> None:
        self.session.measured = value

    @property
    def batch_size(self) -> int:
        """Tiles per model call when predicting."""
        return self.session.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.session.batch_size = value

    @property
    def worker(self) -> Worker | None:
        """The worker in progress."""
        return self.session.worker

    busy = _forward("session", "busy")
    transform = _forward("session", "transform")
    comparison = _forward("session", "comparison")
    image_name = _forward("session", "image_name")
    image_scale = _forward("session", "image_scale")
    slide = _forward("session", "slide")
    store = _forward("session", "store")
    status = _forward("session", "status")
    # -- the data panel ----------------------------------------------------------------------
    kind = _forward("data", "kind")
    data_path = _forward("data", "data_path")
    spots_path = _forward("data", "spots_path")
    image_path = _forward("data", "image_path")
    pixel_scale = _forward("data", "pixel_scale")
    load_button = _forward("data", "load_button")
    data_info = _forward("data", "data_info")
    load = _forward("data", "load")
    # -- the alignment panel -----------------------------------------------------------------
    registration = _forward("alignment", "registration")
    scale = _forward("alignment", "scale")
    scale_button = _forward("alignment", "scale_button")
    landmark_kind = _forward("alignment", "landmark_kind")
    landmarks_button = _forward("alignment", "landmarks_button")
    fit_button = _forward("alignment", "fit_button")
    scale_known = _forward("alignment", "scale_known")
    register_button = _forward("alignment", "register_button")
    transform_info = _forward("alignment", "transform_info")
    _set_transform = _forward("alignment", "set_transform")  # (older name, used by scripts)
    apply_scale = _forward("alignment", "apply_scale")
    add_landmark_layers = _forward("alignment", "add_landmark_layers")
    fit = _forward("alignment", "fit")
    auto_register = _forward("alignment", "auto_register")
    # -- the comparison panel ----------------------------------------------------------------
    model = _forward("compare", "model")
    overwrite = _forward("compare", "overwrite")
    predict_button = _forward("compare", "predict_button")
    cancel_button = _forward("compare", "cancel_button")
    progress_bar = _forward("compare", "progress_bar")
    compare_button = _forward("compare", "compare_button")
    save_button = _forward("compare", "save_button")
    summary = _forward("compare", "summary")
    predict = _forward("compare", "predict")
    cancel = _forward("compare", "cancel")
    run_compare = _forward("compare", "run_compare")
    save_transform = _forward("compare", "save_transform")
    side_by_side = _forward("compare.gene_view", "side_by_side")
    table = _forward("compare.gene_view", "table")
    scatter = _forward("compare.gene_view", "scatter")
    table_rows = _forward("compare.gene_view", "table_rows")
    show_gene = _forward("compare.gene_view", "show_gene")
    scatter_xy = _forward("compare.gene_view", "scatter_xy")
    measured_shift_um = _forward("compare.gene_view", "measured_shift_um")
