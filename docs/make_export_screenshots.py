"""Render the screenshots of the Export widget (``docs/export.md``) from a real napari session.

Predicts the bundled real slide (``CMU-1-Small-Region.svs``) with the bundled NSL model,
opens the prediction in napari, then:

1. imports the illustrative QuPath annotations of ``make_export_figures.py`` as a Shapes layer
   with the Export widget and exports their spots to QuPath GeoJSON
   (``docs/images/export-qupath-import.png``);
2. draws regions as Shapes layers named ``Tumor`` and ``Stroma`` (a polygon, a rectangle, an
   ellipse) and exports their spots to ``.h5ad`` (``docs/images/export-shapes.png``).

The class names are labels for the demo, not a pathologist's reading of this slide. Needs a
display (napari draws with OpenGL); on a headless machine::

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/make_export_screenshots.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import napari
import numpy as np

from napari_virtual_st._napari import export_widget as ew
from napari_virtual_st._napari.layers import find_layers
from napari_virtual_st.registry import default_model, sample_slide_path
from napari_virtual_st.run import RunSpec, run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_export_figures import REGIONS  # noqa: E402  (the same two illustrative annotations)
from screenshots import save_window, settle  # noqa: E402

PLUGIN = "napari-virtual-st"
WINDOW = (1600, 1000)


def _wait_export(widget: ew.ExportWidget) -> None:
    while widget.running:
        settle(0.1)
    outcome = widget.last_outcome
    if outcome is None or outcome.error is not None:
        raise SystemExit(f"export failed: {outcome and outcome.error}")
    print(widget.summary.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vst-export-screens-"))

    store = tmp / "CMU-1-Small-Region.vst.zarr"
    run(
        RunSpec(
            slide_path=sample_slide_path(),
            model_path=default_model().path,
            store_path=store,
            providers=("cpu",),
            batch_size=64,
        )
    )

    viewer = napari.Viewer(title="napari-virtual-st", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open(store, plugin=PLUGIN)
    for layer in find_layers(viewer, store, "uncertainty"):
        layer.visible = False
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    viewer.reset_view()
    settle()

    # 1. QuPath annotations → Shapes layer → QuPath detections
    annotations = tmp / "annotations.geojson"
    annotations.write_text(json.dumps(REGIONS))
    widget.source.value = ew.FROM_GEOJSON
    widget.regions_file.value = annotations
    layer = widget.import_geojson()
    assert layer is not None
    widget.want_h5ad.value = False
    widget.want_geojson.value = True
    widget.geojson_path.value = tmp / "CMU-1-Small-Region_spots.geojson"
    widget.export()
    _wait_export(widget)
    save_window(viewer, args.out, "export-qupath-import.png", settle_s=1.0)

    # 2. regions drawn in napari: the layer's name is the class
    viewer.layers.remove(layer)
    tumour = viewer.add_shapes(
        [
            np.array([[80.0, 260.0], [90.0, 700.0], [520.0, 760.0], [560.0, 300.0]]),
            np.array([[650.0, 150.0], [650.0, 520.0], [930.0, 520.0], [930.0, 150.0]]),
        ],
        shape_type=["polygon", "rectangle"],
        name="Tumor",
        features={"name": ["upper nest", ""]},
        edge_color="#c80000",
        face_color="#c8000040",
        edge_width=4,
        units="um",
    )
    stroma = viewer.add_shapes(
        [np.array([[1000.0, 350.0], [1000.0, 1000.0], [1420.0, 1000.0], [1420.0, 350.0]])],
        shape_type="ellipse",
        name="Stroma",
        edge_color="#0072b2",
        face_color="#0072b240",
        edge_width=4,
        units="um",
    )
    widget.source.value = ew.FROM_SHAPES
    widget.shapes.value = [tumour, stroma]
    widget.want_h5ad.value = True
    widget.want_geojson.value = False
    widget.h5ad_path.value = tmp / "CMU-1-Small-Region.h5ad"
    widget.export()
    _wait_export(widget)
    viewer.layers.selection.active = stroma
    save_window(viewer, args.out, "export-shapes.png", settle_s=1.0)
    viewer.close()


if __name__ == "__main__":
    main()
