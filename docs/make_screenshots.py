"""Render the user guide's screenshots from a real napari session.

Opens the bundled real H&E slide (CMU-1-Small-Region.svs), predicts it with the default bundled
model through the Predict widget, browses genes and spots, and saves window screenshots to
``docs/images/``. Nothing is staged by hand: every picture is what a user sees.

Needs a display (napari draws with OpenGL): on a headless machine run it under Xvfb::

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/make_screenshots.py

Never with ``QT_QPA_PLATFORM=offscreen`` (napari's canvas renders black there).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import napari
import numpy as np
from screenshots import save_window, settle

from napari_virtual_st._napari.layers import find_layers, vst_meta

HERE = Path(__file__).resolve().parent
PLUGIN = "napari-virtual-st"
WINDOW = (1600, 1000)


def _camera(viewer: napari.Viewer):  # napari >= 0.9 moved the camera to viewer.scene
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _scale_bar(viewer: napari.Viewer):  # napari >= 0.9 moved it to viewer.canvas.overlays
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-virtual-st", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    settle()

    # 1. open the slide (File ▸ Open Sample ▸ napari-virtual-st)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    viewer.reset_view()
    _scale_bar(viewer).visible = True
    save_window(viewer, args.out, "open-slide.png")

    # 2. predict with the bundled model (Plugins ▸ Virtual ST ▸ Predict expression)
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    tmp = Path(tempfile.mkdtemp(prefix="vst-screens-"))
    predict.output.value = (
        tmp / "CMU-1-Small-Region.nsl_lite0_multilayer_floored_her2st.visium.vst.zarr"
    )
    predict.min_tissue.value = 0.3
    predict.batch_size = 1  # one spot a batch, so that the run can be caught half-way
    predict.run()
    status_bar = viewer.window._qt_window.statusBar()
    status_bar._toggle_activity_dock(True)  # napari's activity dock shows the run too
    half_way = False
    while predict.running:
        settle(0.05)
        if not half_way and predict.progress_bar.value / max(predict.progress_bar.max, 1) > 0.3:
            half_way = True
            save_window(viewer, args.out, "predict-running.png", settle_s=0.1)
    status_bar._toggle_activity_dock(False)
    if predict.last_outcome is None or predict.last_outcome.error is not None:
        raise SystemExit(f"prediction failed: {predict.status.value}")
    store = predict.last_outcome.store_path
    save_window(viewer, args.out, "predict.png")

    # 3. the gene browser: search, pick ERBB2 (and keep the first gene), colour bar in the browser
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "Gene browser")  # docked by Run
    browser.search.value = "ERB"
    browser.show_genes(["ERBB2"])
    save_window(viewer, args.out, "gene-browser.png")

    # 4. spots coloured by a gene, zoomed in on the tissue, the cursor over one spot
    browser.search.value = ""
    for layer in find_layers(viewer, store, "heatmap"):
        layer.visible = False
    (spots,) = find_layers(viewer, store, "spots")
    spots.visible = True
    browser.colour_spots_by("ERBB2")
    viewer.layers.selection.active = spots
    centre = spots.data[len(spots.data) // 2]
    camera = _camera(viewer)
    camera.center = tuple(centre)
    camera.zoom = camera.zoom * 2.0
    browser.cursor.value = browser.values_at(centre)
    save_window(viewer, args.out, "spots.png")

    # 5. a finished run reopened from disk (File ▸ Open, the .vst.zarr folder)
    viewer.layers.clear()
    viewer.open(store, plugin=PLUGIN)
    viewer.reset_view()
    heatmaps = [layer for layer in viewer.layers if vst_meta(layer).get("role") == "heatmap"]
    if heatmaps:
        viewer.layers.selection.active = heatmaps[0]
        values = np.asarray(heatmaps[0].data)
        print(f"reopened {store.name}: {np.isfinite(values).sum()} heatmap pixels")
    save_window(viewer, args.out, "reopen.png")
    viewer.close()


if __name__ == "__main__":
    main()
