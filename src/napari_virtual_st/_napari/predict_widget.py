"""The Predict dock widget: choose a slide layer and a model, press Run, watch heatmaps fill in.

A form over the engine: it describes the run (a :class:`~napari_virtual_st.run.RunSpec`) and
starts a :class:`~._napari.run_session.RunSession` for it, which owns everything about that
one run (its worker, its layers, its GUI steps) and reports back here: status, progress, the
execution provider and the outcome. A new Run makes a new session.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Layer
from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import QTimer

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import notify, resolution
from napari_virtual_st._napari.gene_browser import dock_gene_browser
from napari_virtual_st._napari.labels import set_text
from napari_virtual_st._napari.model_choices import (
    model_summary,
    provider_label,
    usable_bundled_models,
)
from napari_virtual_st._napari.predict_form import (
    BROWSE,
    PredictForm,
    default_output_dir,
    file_edit_path,
    visible_region,
)
from napari_virtual_st._napari.run_session import RunSession
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.predictor import ModelInfo, Predictor
from napari_virtual_st.registry import sample_note, sample_slide_path
from napari_virtual_st.run import Region, RunOutcome, RunSpec, process
from napari_virtual_st.tissue import NotBrightfieldError

if TYPE_CHECKING:
    import napari


class PredictWidget(PredictForm):
    """Predict gene expression over a slide layer with an ONNX model.

    Parameters
    ----------
    napari_viewer
        The viewer whose slide layers are offered and where results appear.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self._viewer = napari_viewer
        self._extra_models: list[tuple[str, Path]] = []
        self._model_info: dict[Path, ModelInfo] = {}
        self._session: RunSession | None = None
        self._closed = False
        self._output_is_default = True
        self._setting_output = False
        self.batch_size = 32
        #: Run in a prediction process (``False``: in a thread of napari's process)
        self.in_process = True
        self.last_outcome: RunOutcome | None = None
        super().__init__()  # the fields (predict_form)
        self._scale = vst_layers.ScaleFollower(self._show_mpp)
        self.slide.changed.connect(self._on_slide_changed)
        self.mpp.changed.connect(self._on_mpp_edited)
        self.model.changed.connect(self._on_model_changed)
        self.grid.changed.connect(self._update_default_output)
        self.output.changed.connect(self._on_output_edited)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)
        self.native.destroyed.connect(self._on_destroyed)
        self._on_model_changed()
        self._on_slide_changed()
        # the Gene browser docks with this panel (once it is docked itself), not when Run is
        # pressed: docking re-lays out the window, which would stall the run's first seconds
        QTimer.singleShot(0, self._open_gene_browser)
        # a prediction process imports the engine now, while the user chooses, not at Run
        QTimer.singleShot(0, self._prewarm)

    def _prewarm(self) -> None:
        if self.in_process and not self._closed:
            process.prewarm()

    def _on_destroyed(self, *_: Any) -> None:
        """The panel is closing (or the viewer): stop a run after its current batch."""
        self._closed = True
        if self._session is not None:
            self._session.close()
        self._scale.stop()

    # -- choices ----------------------------------------------------------------------------
    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer) for layer in self._viewer.layers if vst_layers.slide_path_of(layer)
        ]

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, object]]:
        choices: list[tuple[str, object]] = []
        for model in usable_bundled_models():
            assert model.info is not None
            self._model_info[model.path] = model.info
            choices.append((f"{model.info.name} ({model.name}, bundled)", model.path))
        choices.extend(self._extra_models)
        choices.append(("Browse for a model file (.onnx)…", BROWSE))
        return choices

    def add_model(self, path: str | Path) -> None:
        """Validate an ONNX model file, offer it in the chooser and select it.

        Raises
        ------
        ModelError
            If the file does not follow the model contract (the message names the problem).
        """
        path = Path(path)
        info = Predictor(path, providers=["cpu"]).info
        self._model_info[path] = info
        if all(p != path for _, p in self._extra_models):
            self._extra_models.append((f"{info.name} ({path.name})", path))
        self.model.reset_choices()
        self.model.value = path

    # -- reactions --------------------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        self.slide.reset_choices()
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if added is not None and vst_layers.slide_path_of(added) is not None:
            self.slide.value = added  # a slide just opened is the one to predict on
        self._on_slide_changed()

    def _on_slide_changed(self, _value: Any = None) -> None:
        self.allow_non_brightfield.value = False  # an override is for the slide it was given
        self.allow_non_brightfield.visible = False
        layer = self.slide.value
        needs_mpp = layer is not None and vst_layers.resolution_is_given(layer)
        self.mpp.visible = needs_mpp
        self.mpp_hint.visible = needs_mpp
        self._follow_scale(layer)
        self.run_button.enabled = layer is not None and self.worker is None
        self._update_default_output()
        self._update_sample_note()

    def _update_sample_note(self) -> None:
        """A word when a model of another tissue runs on the bundled sample slide."""
        layer = self.slide.value
        info = self._model_info.get(self.model.value) if layer is not None else None
        path = vst_layers.slide_path_of(layer) if layer is not None else None
        on_sample = path is not None and path.resolve() == sample_slide_path().resolve()
        note = sample_note(info) if on_sample and info is not None else ""
        self.sample_note.value = note
        self.sample_note.visible = bool(note)

    def _follow_scale(self, layer: Layer | None) -> None:
        """Show the chosen slide's µm/px in the field, now and when any panel changes it."""
        self._scale.follow(layer)

    def _show_mpp(self, _event: Any = None) -> None:
        layer = self.slide.value
        mpp = vst_layers.slide_mpp_of(layer) if layer is not None else None
        if mpp is not None and mpp != self.mpp.value:
            with self.mpp.changed.blocked():
                self.mpp.value = mpp
        resolution.show_needed((self.mpp, self.mpp_hint), resolution.mpp_missing(layer))

    def _on_mpp_edited(self, value: float) -> None:
        """The user gave the slide's µm/px: the slide (and every panel) takes it at once."""
        layer = self.slide.value
        if layer is not None and vst_layers.resolution_is_given(layer) and value > 0:
            vst_layers.set_slide_mpp(self._viewer, layer, float(value))
            self._show_mpp()

    def _on_model_changed(self, _value: Any = None) -> None:
        value = self.model.value
        if value == BROWSE:
            self._browse_model()
            return
        info = self._model_info.get(value) if value is not None else None
        self.model_info.value = model_summary(info) if info is not None else ""
        self._update_default_output()
        self._update_sample_note()

    def _browse_model(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        filename, _ = QFileDialog.getOpenFileName(
            self.native, "Choose an ONNX model", str(Path.home()), "ONNX models (*.onnx)"
        )
        if filename:
            try:
                self.add_model(filename)
                return
            except VirtualSTError as exc:
                notify.error(str(exc), "This model file cannot be used.", status=self.status)
        choices = [c for c in self.model.choices if c != BROWSE]
        self.model.value = choices[0] if choices else None

    def _on_output_edited(self, _value: Any = None) -> None:
        if not self._setting_output:
            self._output_is_default = False

    def _update_default_output(self, _value: Any = None) -> None:
        layer = self.slide.value
        model = self.model.value
        if not self._output_is_default or layer is None or not isinstance(model, Path):
            return
        slide_path = vst_layers.slide_path_of(layer)
        assert slide_path is not None
        name = f"{slide_path.stem}.{model.stem}.{self.grid.value}.vst.zarr"
        self._setting_output = True
        try:
            self.output.value = default_output_dir(slide_path) / name
        finally:
            self._setting_output = False

    # -- running ----------------------------------------------------------------------------
    @property
    def session(self) -> RunSession | None:
        """The run in progress, or the last one."""
        return self._session

    @property
    def running(self) -> bool:
        """Whether a run is in progress (its last layers included)."""
        return self._session is not None and self._session.running

    @property
    def worker(self) -> GeneratorWorker | None:
        """The worker of the run in progress."""
        return self._session.worker if self._session is not None else None

    def request(self) -> RunSpec:
        """The run the form describes.

        Raises
        ------
        VirtualSTError
            If no slide or model is chosen.
        """
        layer = self.slide.value
        if layer is None:
            raise VirtualSTError("open a slide first (File ▸ Open, or the sample data menu)")
        model = self.model.value
        if not isinstance(model, Path):
            raise VirtualSTError("choose a model first")
        slide_path = vst_layers.slide_path_of(layer)
        assert slide_path is not None
        mpp = vst_layers.slide_mpp_of(layer)
        if mpp is None:
            mpp = float(self.mpp.value)
        if mpp <= 0:
            raise VirtualSTError(
                "this slide does not record its µm per pixel: give it in the field above "
                "(about 0.25 for a 40× scan, 0.5 for 20×)"
            )
        output = file_edit_path(self.output)
        if not output.name.endswith(".vst.zarr"):
            output = output.with_name(output.name + ".vst.zarr")
        return RunSpec(
            slide_path=slide_path,
            model_path=model,
            store_path=output,
            grid_kind=self.grid.value,
            min_tissue_fraction=float(self.min_tissue.value),
            mpp=mpp,
            batch_size=self.batch_size,
            overwrite=bool(self.overwrite.value),
            allow_non_brightfield=bool(self.allow_non_brightfield.value),
            precision=str(self.precision.value),
            visible_xy_level0_px=self.visible_region(),
            preview=True,
            report_values=True,
            yield_cpu=True,
        )

    def visible_region(self) -> Region | None:
        """The part of the chosen slide on screen, (x0, y0, x1, y1) level-0 pixels (``None``
        when the canvas size is unknown)."""
        return visible_region(self._viewer, self.slide.value)

    def run(self, _value: Any = None) -> GeneratorWorker | None:
        """Start a run of what the form describes (returns its worker, or ``None`` if
        refused): a new :class:`RunSession` (see :meth:`RunSession.start` for its steps);
        the Gene browser is docked again after the run's layers if it was closed. On a large
        slide the first values are a few preview spots predicted on a quick coarse tissue
        mask (see :mod:`napari_virtual_st.run.engine`); they stay until the run's own
        replace them.
        """
        if self.running:
            return None
        try:
            spec = self.request()
        except VirtualSTError as exc:
            notify.error(str(exc), "The run cannot start yet.", status=self.status)
            return None
        assert isinstance(spec.model_path, Path)  # request() names the model's file
        self.last_outcome = None
        session = RunSession(
            self._viewer,
            spec,
            self._model_info[spec.model_path],
            self,
            slide_layer=self.slide.value,
            in_process=self.in_process,
        )
        self._session = session
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        worker = session.start()
        session.then(self._open_gene_browser)  # (docked with this panel; again if closed)
        return worker

    def cancel(self, _value: Any = None) -> None:
        """Ask the run to stop after the batch in progress (finished batches are kept)."""
        if self.worker is None or self._session is None:
            return
        self._session.cancel()
        self.cancel_button.enabled = False
        self._set_status("cancelling after the current batch…")

    # -- what the run shows (RunPanel) -------------------------------------------------------
    def show_status(self, text: str) -> None:
        """One line about where the run is."""
        self._set_status(text)

    def show_progress(self, done: int, total: int) -> None:
        """Spots predicted of ``total`` (0: not known yet, the bar shows it is busy)."""
        self.progress_bar.max = total
        self.progress_bar.value = done

    def show_providers(self, providers: Sequence[str]) -> None:
        """The execution providers that run the model."""
        self.provider.value = f"Runs on: {provider_label(tuple(providers))}"

    def run_ended(self, outcome: RunOutcome) -> None:
        """Keep the run's outcome (``last_outcome``); after a bright-field refusal, offer the
        override."""
        self.last_outcome = outcome
        if isinstance(outcome.error, NotBrightfieldError):
            self.allow_non_brightfield.visible = True

    def worker_finished(self) -> None:
        """The worker has gone: another run may start."""
        if self._closed:
            return
        self.cancel_button.enabled = False
        self.run_button.enabled = self.slide.value is not None

    def _set_status(self, text: str) -> None:
        set_text(self.status, text)

    def _open_gene_browser(self) -> None:
        """Dock the gene browser beside this widget, once (when napari knows the plugin)."""
        if not self._closed:
            dock_gene_browser(self._viewer)
