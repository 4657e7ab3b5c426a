"""The Measured ST alignment panel: place the measured data on the slide three ways, and move
the measured layers with the alignment.

(a) a scale factor (1 = the same image), (b) landmarks clicked in two Points layers and fitted
(similarity or affine) with the residual in µm, (c) automatic registration of the measured
image to the slide thumbnail in a worker, with a quality score and an overlay layer;
landmarks refine it. An alignment saved with the prediction store is picked up on loading.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton
from napari.utils.notifications import show_error

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import measured_layers as ml
from napari_virtual_st._napari.measured_panel import MeasuredPanel, MeasuredSession, Worker
from napari_virtual_st.align import Transform, fit_landmarks, from_scale
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.measured import MeasuredST

if TYPE_CHECKING:
    from napari.layers import Layer

LANDMARK_COLOURS = {"landmarks-slide": "#ff3030", "landmarks-measured": "#30c0ff"}
LANDMARK_NAMES = {
    "landmarks-slide": "landmarks on slide",
    "landmarks-measured": "landmarks on measured image",
}
FROM_STORE = "alignment read from the store"


class AlignmentPanel(MeasuredPanel):
    """Align the measured data to the slide, and keep its layers where the alignment says.

    Parameters
    ----------
    session
        The state shared with the other panels.
    """

    def __init__(self, session: MeasuredSession) -> None:
        super().__init__(session)
        self.registration: ml.Registration | None = None
        self.scale = FloatSpinBox(
            label="Slide px per measured px", value=1.0, min=1e-6, max=1e4, step=1e-6
        )
        self.scale_button = PushButton(text="(a) Same image / scale factor")
        self.landmark_kind = ComboBox(
            label="Landmark fit", choices=["similarity", "affine"], value="similarity"
        )
        self.landmarks_button = PushButton(text="(b) Place landmarks")
        self.fit_button = PushButton(text="Fit landmarks")
        self.scale_known = CheckBox(text="Scale known (the factor above)", value=False)
        self.register_button = PushButton(text="(c) Auto-register")
        self.transform_info = Label(value="No alignment yet.")
        self.wrap(self.transform_info)
        row = Container(
            widgets=[self.landmarks_button, self.fit_button], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.scale,
                self.scale_button,
                self.landmark_kind,
                row,
                self.scale_known,
                self.register_button,
                self.transform_info,
            ]
        )
        self.scale_button.changed.connect(self.apply_scale)
        self.landmarks_button.changed.connect(self.add_landmark_layers)
        self.fit_button.changed.connect(self.fit)
        self.register_button.changed.connect(self.auto_register)

    def update_buttons(self) -> None:
        """Aligning needs the data loaded (and, to register, its image) and no worker."""
        session = self.session
        ready = not session.busy and session.loaded
        for button in (self.scale_button, self.landmarks_button, self.fit_button):
            button.enabled = ready
        self.register_button.enabled = ready and session.image is not None

    # -- the alignment and the layers that follow it -----------------------------------------
    def set_transform(self, transform: Transform, why: str = "") -> None:
        """Make ``transform`` current and move the measured layers to it."""
        session = self.session
        measured = session.measured
        if measured is None:
            return
        mpp = session.mpp()
        session.transform = transform
        affine = ml.image_affine(transform, mpp, session.image_scale)
        self._place_image(affine)
        marks = session.layer("landmarks-measured")
        if marks is not None:
            marks.affine = affine
        self._place_spots(measured, ml.spots_yx_um(measured, transform, mpp))
        self.transform_info.value = ml.describe_transform(transform, mpp) + (
            f" ({why})" if why else ""
        )
        session.refresh()

    def _place_image(self, affine: np.ndarray) -> None:
        session = self.session
        if session.image is None:
            return
        layer = session.layer("measured-image")
        if layer is not None:
            layer.affine = affine
            return
        kwargs = {
            "name": "measured image",
            "rgb": True,
            "affine": affine,
            "units": "um",
            "opacity": 0.5,
            "visible": False,
            "metadata": {"vst": {"role": "measured-image"}},
        }
        vst_layers.add_layer(session.viewer, (session.image, kwargs, "image"))

    def _place_spots(self, measured: MeasuredST, yx_um: np.ndarray) -> None:
        layer = self.session.layer("measured-spots")
        if layer is not None:
            layer.data = yx_um
            return
        kwargs = {
            "name": "measured spots",
            "size": ml.spot_diameter_um(measured),
            "face_color": "transparent",
            "border_color": "#00e5ff",
            "border_width": 0.08,
            "units": "um",
            "features": {"spot": list(measured.spot_ids)},
            "metadata": {"vst": {"role": "measured-spots"}},
        }
        vst_layers.add_layer(self.session.viewer, (yx_um, kwargs, "points"))

    def place_loaded(self) -> None:
        """Place newly loaded data: by the alignment saved with the store, else the scale."""
        transform = self.session.saved_transform()
        try:
            if transform is not None:
                self.set_transform(transform, FROM_STORE)
            else:
                self.set_transform(
                    from_scale(float(self.scale.value)), "placed by the scale factor"
                )
        except VirtualSTError as exc:
            show_error(str(exc))

    def use_saved(self) -> None:
        """Take the alignment saved with the (newly chosen) store, if it has one."""
        transform = self.session.saved_transform()
        if transform is not None and self.session.measured is not None:
            try:
                self.set_transform(transform, FROM_STORE)
            except VirtualSTError as exc:
                show_error(str(exc))

    # -- (a) scale ---------------------------------------------------------------------------
    def apply_scale(self, _value: Any = None) -> None:
        """(a) Measured px × the scale factor = slide px (1: the same image)."""
        try:
            self.set_transform(from_scale(float(self.scale.value)), "scale factor")
        except VirtualSTError as exc:
            show_error(str(exc))

    # -- (b) landmarks -----------------------------------------------------------------------
    def add_landmark_layers(self, _value: Any = None) -> tuple[Layer, Layer] | None:
        """(b) Two Points layers to click corresponding points in, in the same order."""
        session = self.session
        if session.measured is None or session.transform is None:
            show_error("load the measured data first")
            return None
        mpp = session.mpp()
        slide_marks = self._landmark_layer("landmarks-slide", mpp, session.transform)
        image_marks = self._landmark_layer("landmarks-measured", mpp, session.transform)
        image = session.layer("measured-image")
        if image is not None:
            image.visible = True
        slide_marks.mode = "add"
        session.viewer.layers.selection.active = slide_marks
        session.set_status(
            "Click ≥ 3 points on the slide in 'landmarks on slide', then the same places, in the "
            "same order, on the measured image in 'landmarks on measured image'; then Fit."
        )
        return slide_marks, image_marks

    def _landmark_layer(self, role: str, mpp: float, transform: Transform) -> Layer:
        """The Points layer of one side's landmarks (made when there is none yet)."""
        existing = self.session.layer(role)
        if existing is not None:
            return existing
        size = self._extent_um() / 60
        kwargs: dict[str, Any] = {
            "name": LANDMARK_NAMES[role],
            "ndim": 2,
            "face_color": LANDMARK_COLOURS[role],
            "border_color": "white",
            "units": "um",
            "metadata": {"vst": {"role": role}},
        }
        if role == "landmarks-measured":  # data in measured image px, placed by the alignment
            image_scale = self.session.image_scale
            kwargs["affine"] = ml.image_affine(transform, mpp, image_scale)
            size /= mpp * transform.scale / image_scale
        kwargs["size"] = size
        return vst_layers.add_layer(self.session.viewer, (np.empty((0, 2)), kwargs, "points"))

    def _extent_um(self) -> float:
        layer = self.session.slide.value
        if layer is None:
            return 1000.0
        lo, hi = np.asarray(layer.extent.world)[:, -2:]
        return float(max(hi - lo))

    def fit(self, _value: Any = None) -> Transform | None:
        """(b) Fit the landmarks; the residual shows in µm. The fit refines an automatic one."""
        session = self.session
        slide_marks = session.layer("landmarks-slide")
        image_marks = session.layer("landmarks-measured")
        if session.transform is None or slide_marks is None or image_marks is None:
            show_error("place landmarks first: press (b) Place landmarks")
            return None
        try:
            mpp = session.mpp()
            src, dst = ml.landmark_pairs(
                slide_marks.data, image_marks.data, mpp, session.image_scale
            )
            fitted = fit_landmarks(src, dst, kind=self.landmark_kind.value)
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        refines = session.transform.info.get("method") == "register_images"
        if refines:
            fitted = Transform(
                fitted.matrix,
                fitted.kind,
                fitted.residual_px,
                session.transform.quality,
                {**fitted.info, "refines": "register_images"},
            )
        self.set_transform(fitted, "refines the automatic registration" if refines else "")
        session.set_status(f"Landmark fit: residual {fitted.residual_um(mpp):.1f} µm RMS.")
        return fitted

    # -- (c) registration --------------------------------------------------------------------
    def auto_register(self, _value: Any = None) -> Worker | None:
        """(c) Register the measured image to the slide thumbnail in a worker."""
        session = self.session
        if session.busy or session.measured is None or session.image_name is None:
            if session.image_name is None:
                show_error("the measured data has no image to register")
            return None
        try:
            mpp = session.mpp()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        slide_path = vst_layers.slide_path_of(session.slide.value)
        image_path = Path(session.measured.images[session.image_name])
        known = float(self.scale.value) if self.scale_known.value else None
        return session.start(
            functools.partial(ml.register_to_slide, fullres_to_level0=known),
            slide_path,
            mpp,
            image_path,
            session.image_scale,
            on_done=self._on_registered,
            message="registering the measured image to the slide…",
        )

    def _on_registered(self, registration: ml.Registration) -> None:
        self.registration = registration
        session = self.session
        session.remove_role("registration-overlay")
        kwargs = {
            "name": "registration check (measured image)",
            "rgb": True,
            "scale": registration.overlay_scale_um,
            "translate": registration.overlay_translate_um,
            "units": "um",
            "opacity": 0.5,
            "metadata": {"vst": {"role": "registration-overlay"}},
        }
        vst_layers.add_layer(session.viewer, (registration.overlay, kwargs, "image"))
        self.set_transform(registration.transform)
        quality = registration.transform.quality or 0.0
        hint = "" if quality >= 0.5 else ": check the overlay, refine with landmarks"
        session.set_status(f"Registered: quality {quality:.3f}{hint}.")
