"""The Measured ST comparison panel: predict at the measured spots (the core run, through the
alignment, saved with it in the store), compare the store with the measured data in a worker,
and read the per-gene agreement in the :class:`~.measured_gene_view.GeneView` below."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import measured_layers as ml
from napari_virtual_st._napari.measured_gene_view import GeneView, fmt
from napari_virtual_st._napari.measured_panel import MeasuredPanel, MeasuredSession, Worker
from napari_virtual_st._napari.model_choices import usable_bundled_models
from napari_virtual_st._napari.predict_form import default_output_dir
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.align import Transform
from napari_virtual_st.compare import Comparison
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.measured import MeasuredST
from napari_virtual_st.run import BatchEvent, RunEvent, RunSpec, StoreReadyEvent, run_events
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.store_view import StoreView


class ComparePanel(MeasuredPanel):
    """Predict at the measured spots, save the alignment, compare.

    Parameters
    ----------
    session
        The state shared with the other panels.
    on_store_changed
        Called on the GUI thread when another store is chosen (to take its alignment).
    """

    def __init__(
        self,
        session: MeasuredSession,
        on_store_changed: Callable[[], None],
        on_compared: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(session)
        self._on_store_changed_callback = on_store_changed
        self._on_compared_callback = on_compared
        #: the per-gene table, scatter plot and maps (the dock shows them in a tab of their own)
        self.model = ComboBox(label="Model", choices=_model_choices)
        self.overwrite = CheckBox(text="Replace earlier results in this store", value=False)
        self.predict_button = PushButton(text="Predict at measured spots")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.compare_button = PushButton(text="Compare")
        self.save_button = PushButton(text="Save alignment with the store")
        self.summary = Label(value="")
        self.wrap(self.summary)
        self.gene_view = GeneView(session)
        run_row = Container(
            widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.model,
                session.store,
                self.overwrite,
                run_row,
                self.progress_bar,
                self.save_button,
                self.compare_button,
                self.summary,
            ]
        )
        self._store_is_default = True
        self._setting_store = False
        session.slide.changed.connect(self._update_default_store)
        self.model.changed.connect(self._update_default_store)
        self.predict_button.changed.connect(self.predict)
        self.cancel_button.changed.connect(self.cancel)
        self.compare_button.changed.connect(self.run_compare)
        self.save_button.changed.connect(self.save_transform)
        session.store.changed.connect(self._on_store_changed)
        self._update_default_store()

    def update_buttons(self) -> None:
        """Predicting and comparing need aligned data; Cancel stops a running worker."""
        session = self.session
        idle = not session.busy
        aligned = session.loaded and session.transform is not None
        self.predict_button.enabled = idle and aligned
        self.compare_button.enabled = idle and aligned
        self.save_button.enabled = idle and session.transform is not None
        self.cancel_button.enabled = not idle

    # -- the store ---------------------------------------------------------------------------
    def _update_default_store(self, _value: Any = None) -> None:
        """Suggest a store, as the Predict panel does: beside the slide (or in
        ``~/napari-virtual-st`` when that folder cannot be written), named after the slide
        and the model; never over a path the user chose."""
        layer = self.session.slide.value
        model = self.model.value
        if not self._store_is_default or layer is None or not isinstance(model, Path):
            return
        slide_path = vst_layers.slide_path_of(layer)
        if slide_path is None:
            return
        name = f"{slide_path.stem}.{model.stem}.measured.vst.zarr"
        self._setting_store = True
        try:
            self.session.store.value = default_output_dir(slide_path) / name
        finally:
            self._setting_store = False

    def _on_store_changed(self, _value: Any = None) -> None:
        if not self._setting_store:
            self._store_is_default = False
        self._on_store_changed_callback()
        self.session.refresh()

    def save_transform(self, _value: Any = None) -> Path | None:
        """Save the current alignment with the existing store (``transform.json``); a
        prediction saves it too."""
        session = self.session
        path = session.store_path()
        if session.transform is None or path is None or not path.is_dir():
            show_error("align the data and choose an existing prediction store first")
            return None
        try:
            written = PredictionStore.open(path).save_transform(session.transform)
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        session.set_status(f"Alignment saved with the store: {written}")
        return written

    # -- prediction --------------------------------------------------------------------------
    def predict(self, _value: Any = None) -> Worker | None:
        """Predict at the measured spots (through the alignment) in a worker."""
        session = self.session
        if session.busy:
            return None
        try:
            request = self._prediction_request()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        session.cancel = threading.Event()
        self.progress_bar.max = 0
        self.progress_bar.value = 0
        if request.overwrite:
            views_of(session.viewer).forget(request.store_path)
        assert request.spots is not None
        return session.start(
            _predict_job,
            request,
            session.cancel,
            on_yield=self._on_progress,
            on_done=self._on_predicted,
            message=f"predicting {len(request.spots):,} measured spots…",
        )

    def _prediction_request(self) -> RunSpec:
        session = self.session
        if session.measured is None or session.transform is None:
            raise VirtualSTError("load and align the measured data first")
        mpp = session.mpp()
        model = self.model.value
        if not isinstance(model, Path):
            raise VirtualSTError("choose a model first")
        store_path = session.store_path()
        if store_path is None:
            raise VirtualSTError("say where to save the predictions (Store)")
        slide_path = vst_layers.slide_path_of(session.slide.value)
        if slide_path is None:
            raise VirtualSTError("choose the slide the measured data belong to")
        return RunSpec(
            slide_path=slide_path,
            model_path=model,
            store_path=store_path,
            spots=ml.measured_grid(session.measured, session.transform, mpp),
            mpp=mpp,
            batch_size=session.batch_size,
            overwrite=bool(self.overwrite.value),
            transform=session.transform,
        )

    def cancel(self, _value: Any = None) -> None:
        """Stop the prediction after the batch in progress."""
        self.session.cancel.set()
        self.session.set_status("cancelling after the current batch…")

    def _on_progress(self, event: RunEvent) -> None:
        if not isinstance(event, StoreReadyEvent | BatchEvent):
            return
        p = event.progress
        self.progress_bar.max = max(p.spots_total, 1)
        self.progress_bar.value = p.spots_done
        self.session.set_status(f"{p.spots_done:,} of {p.spots_total:,} measured spots predicted")

    def _on_predicted(self, result: tuple[Path, StoreView]) -> None:
        store_path, view = result
        views_of(self.session.viewer).register(view)
        self.session.set_status(
            f"Predicted at the measured spots; saved with the alignment to {store_path}."
        )
        show_info(f"Predicted at the measured spots.\nSaved as {store_path.name}")

    # -- comparison --------------------------------------------------------------------------
    def run_compare(self, _value: Any = None) -> Worker | None:
        """Compare the store with the measured data in a worker; fill the table."""
        session = self.session
        if session.busy:
            return None
        store_path = session.store_path()
        if session.measured is None or session.transform is None or store_path is None:
            show_error("load and align the measured data, and choose the prediction store")
            return None
        return session.start(
            _compare_job,
            store_path,
            session.measured,
            session.transform,
            on_done=self._on_compared,
            message="comparing predicted with measured…",
        )

    def _on_compared(self, result: tuple[Comparison, StoreView]) -> None:
        comparison, view = result
        views_of(self.session.viewer).register(view)
        self.session.comparison = comparison
        self.summary.value = summary_text(comparison)
        self.session.set_status(
            "Click a gene to see its scatter plot and maps; click a header to sort."
        )
        self.gene_view.show_comparison(comparison)
        if self._on_compared_callback is not None:
            self._on_compared_callback()


def summary_text(comparison: Comparison) -> str:
    """The comparison in a few lines: spots, genes, mean scores, genes not compared."""
    s = comparison.summary()
    text = (
        f"{s['n_spots']:,} spots matched by {s['spot_match']}, {s['n_genes']} genes · "
        f"mean Pearson {fmt(s['mean_pearson'])} (median {fmt(s['median_pearson'])}) · "
        f"mean Spearman {fmt(s['mean_spearman'])} · mean SSIM {fmt(s['mean_ssim'])} · "
        f"Pearson > 0 for {s['frac_pearson_gt_0']:.0%} of genes"
    )
    if comparison.values != "per-tile":  # scored on the model's contextual values
        text += f"\npredicted values: {comparison.values}"
    missing = comparison.missing_genes
    if missing:
        shown = ", ".join(missing[:5])
        more = "…" if len(missing) > 5 else ""
        text += (
            f"\n{len(missing)} model genes are absent from the measured "
            f"data and not compared ({shown}{more})"
        )
    return text


def _model_choices(_widget: Any = None) -> list[tuple[str, Path]]:
    out = []
    for model in usable_bundled_models():
        assert model.info is not None
        out.append((f"{model.info.name} ({model.name}, bundled)", model.path))
    return out


def _predict_job(
    spec: RunSpec, cancel: threading.Event
) -> Generator[RunEvent, None, tuple[Path, StoreView]]:
    """The run at the measured spots (it saves the alignment with the store), then the
    finished store read for the maps."""
    store_path = yield from run_events(spec, cancel)
    return store_path, StoreView.open(store_path)


def _compare_job(
    store_path: Path, measured: MeasuredST, transform: Transform
) -> tuple[Comparison, StoreView]:
    """The comparison, and the store read for the maps (both off the GUI thread)."""
    return ml.compare_store(store_path, measured, transform), StoreView.open(store_path)
