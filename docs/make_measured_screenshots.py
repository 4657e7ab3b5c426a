"""Render the screenshots of ``docs/measured.md`` from a real napari session.

Opens the real HER2ST section A1 (the raw H&E PNG, black background and annotation corner
as they come, and its legacy ST counts, from ``../shared/data/her2st_subset``) with the
plugin's reader, types its µm per pixel in the widget's field, loads the measured data, aligns
it three ways (scale factor, landmarks, automatic registration), predicts at the measured
spots with the default bundled model, compares, and selects ERBB2. The landmark clicks are made
by this script (at spot centres picked by index, with a few pixels of jitter standing in for
a hand's imprecision); everything else is what the widget does for a user. It prints the
comparison's summary and ERBB2's scores: the numbers ``docs/measured.md`` quotes (and
``tests/test_napari_measured_raw.py`` checks).

Needs a display: ``xvfb-run -a -s "-screen 0 1920x1200x24" python docs/make_measured_screenshots.py``
(never with ``QT_QPA_PLATFORM=offscreen``: napari's canvas renders black there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import napari
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # models.workshop.data knows where A1's files are

from screenshots import save_window, settle  # noqa: E402

from models.workshop import data  # noqa: E402
from napari_virtual_st._napari import layers as vst_layers  # noqa: E402
from napari_virtual_st._napari.measured_widget import MeasuredWidget  # noqa: E402
from napari_virtual_st.align import from_scale  # noqa: E402
from napari_virtual_st.frames import xy_level0_px_to_yx_um  # noqa: E402

WINDOW = (1800, 1150)
#: Spot-file px → PNG px of A1 (2000 / 6954, as a user types it).
PIXEL_SCALE = 0.287604
#: A1's µm per pixel from the spot spacing (200 µm between legacy ST spots), as typed.
MPP = 3.1867


def _wait(widget: MeasuredWidget) -> None:
    while widget.busy:
        settle(0.05)
    settle(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not data.data_available():
        raise SystemExit("HER2ST data not found: ../shared/data/her2st_subset is needed")
    a1 = next(s for s in data.her2st_sections() if s.name == "A1")
    image = a1.image  # the raw PNG: the engine reads its black background as glass

    viewer = napari.Viewer(title="napari-virtual-st: measured ST", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    settle()
    from napari_virtual_st.measured import read_legacy_st

    spots0 = read_legacy_st(a1.counts, a1.spots, image, pixel_scale=PIXEL_SCALE)
    spacing = data.mpp_from_spot_spacing(spots0.xy_fullres_px, spots0.array_rc)
    print(f"A1: µm/px from the spot spacing {spacing:.4f} (typed: {MPP})")
    (slide_layer,) = viewer.open(image, plugin="napari-virtual-st")
    slide_layer.name = "A1 H&E"
    widget = MeasuredWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measured ST", area="right")
    settle()
    widget.data.slide_mpp.value = MPP  # the slide records none: given once, every panel uses it

    # 1. load the legacy ST counts + spot file + image, placed by the scale factor (1: same image)
    widget.kind.value = "legacy"
    widget.data_path.value = a1.counts
    widget.spots_path.value = a1.spots
    widget.image_path.value = image
    widget.pixel_scale.value = PIXEL_SCALE
    widget.load()
    _wait(widget)
    widget.tabs.setCurrentIndex(0)  # (the panel moved on to its Align tab)
    save_window(viewer, args.out, "measured-load.png")
    widget.tabs.setCurrentIndex(1)

    # 2. landmarks: 5 points on the slide, the same 5 on the measured image (jittered)
    rng = np.random.default_rng(5)
    picks = [10, 90, 170, 250, 330]
    xy = spots0.xy_fullres_px[picks]
    slide_marks, image_marks = widget.add_landmark_layers()
    slide_marks.data = xy_level0_px_to_yx_um(xy + rng.normal(0, 2.0, xy.shape), MPP)
    image_marks.data = (xy + rng.normal(0, 2.0, xy.shape))[:, ::-1] * widget.image_scale
    fitted = widget.fit()
    print(f"landmark fit: {widget.transform_info.value}")
    assert fitted is not None
    save_window(viewer, args.out, "measured-landmarks.png")
    for layer in (slide_marks, image_marks):
        layer.visible = False

    # 3. automatic registration from a wrong start, with the overlay to check it
    widget._set_transform(from_scale(1.25), "deliberately wrong start")
    widget.auto_register()
    _wait(widget)
    print(f"registration: {widget.transform_info.value}")
    save_window(viewer, args.out, "measured-register.png")
    for layer in viewer.layers:
        if vst_layers.vst_meta(layer).get("role") in ("registration-overlay", "measured-image"):
            layer.visible = False

    # 4. back to (a): A1's spot file refers to this very image (scale 1), the alignment the
    # guide's numbers and tests/test_napari_measured_raw.py use; predict, compare, ERBB2
    widget.scale.value = 1.0
    widget.apply_scale()
    tmp = Path(tempfile.mkdtemp(prefix="vst-measured-"))
    widget.store.value = tmp / "A1.measured.vst.zarr"
    widget.predict()
    _wait(widget)
    widget.run_compare()
    _wait(widget)
    print(f"comparison: {widget.summary.value}")
    erbb2 = next(g for g in widget.comparison.genes if g.gene == "ERBB2")
    print(f"ERBB2: Pearson {erbb2.pearson:.3f}, SSIM {erbb2.ssim:.3f}")
    row = next(i for i, r in enumerate(widget.table_rows()) if r[0] == "ERBB2")
    widget.table.selectRow(row)
    for layer in viewer.layers:
        if vst_layers.vst_meta(layer).get("role") == "measured-spots":
            layer.visible = False
    viewer.reset_view()
    save_window(viewer, args.out, "measured-compare.png")
    viewer.close()


if __name__ == "__main__":
    main()
