"""Screenshots of the plugin's docks on a laptop (1366×768) and a full-HD screen (1920×1080).

Opens the bundled real H&E slide, predicts it with the bundled model through the Predict
panel (which docks the Gene browser), and saves the whole window at 1366×768; then docks the
Export and Measured ST panels as well (they join Predict as tabs) and saves it at 1366×768
and at 1920×1080. Each is what a user sees.

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_layout_screenshots.py

Never with ``QT_QPA_PLATFORM=offscreen`` (napari's canvas renders black there).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import napari
from screenshots import save_window, settle

from napari_virtual_st._napari.dock import dock_of as predict_dock

HERE = Path(__file__).resolve().parent
PLUGIN = "napari-virtual-st"


def _resize(viewer: napari.Viewer, size: tuple[int, int]) -> None:
    window = viewer.window._qt_window
    window.resize(*size)
    settle(0.5)
    window.resize(*size)
    settle(0.5)
    print(f"window {window.width()}×{window.height()} (asked {size[0]}×{size[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-virtual-st", show=True)
    _resize(viewer, (1366, 768))
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    settle()
    tmp = Path(tempfile.mkdtemp(prefix="vst-layout-"))
    predict.output.value = (
        tmp / "CMU-1-Small-Region.nsl_lite0_multilayer_floored_her2st.visium.vst.zarr"
    )
    predict.min_tissue.value = 0.3
    predict.run()
    while predict.running:
        settle(0.1)
    if predict.last_outcome is None or predict.last_outcome.error is not None:
        raise SystemExit(f"prediction failed: {predict.status.value}")
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "Gene browser")
    browser.show_genes(["ERBB2"])
    viewer.reset_view()
    _resize(viewer, (1366, 768))
    viewer.reset_view()
    save_window(viewer, args.out, "layout-1366x768.png")

    viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Measured ST")
    settle()
    # all four on the laptop: Predict, Export and Measured ST are tabs over the Gene browser
    _resize(viewer, (1366, 768))
    predict_dock(predict).raise_()
    viewer.reset_view()
    save_window(viewer, args.out, "layout-1366x768-all.png")
    _resize(viewer, (1920, 1080))
    viewer.reset_view()
    save_window(viewer, args.out, "layout-1920x1080.png")
    viewer.close()


if __name__ == "__main__":
    main()
