"""The Export widget in a real viewer: regions drawn as Shapes or imported from QuPath
GeoJSON over a real prediction of the bundled slide, exported to .h5ad and GeoJSON."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import shapely
from napari.utils.notifications import notification_manager

from napari_virtual_st._napari import export_widget as ew
from napari_virtual_st._napari import export_worker
from napari_virtual_st._napari.export_widget import ExportWidget
from napari_virtual_st._napari.shapes_regions import regions_from_shapes
from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.regions import (
    assign_spots,
    read_geojson_regions,
    regions_from_geojson,
)
from napari_virtual_st.registry import default_model, sample_slide_path
from napari_virtual_st.run import RunSpec, run
from napari_virtual_st.store import PredictionStore

PLUGIN = "napari-virtual-st"
EXPORT_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def prediction(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundled model on Visium spots of the bundled real slide (CMU-1 small region)."""
    out = tmp_path_factory.mktemp("napari_export") / "cmu.vst.zarr"
    spec = RunSpec(
        slide_path=sample_slide_path(),
        model_path=default_model().path,
        store_path=out,
        grid_kind="visium",
        providers=("cpu",),
        batch_size=64,
    )
    run(spec)  # (the engine: it measures the slide statistics the default model needs)
    return out


def _messages(severity: str, since: int) -> list[str]:
    return [
        str(n.message) for n in notification_manager.records[since:] if str(n.severity) == severity
    ]


def _open(make_napari_viewer, prediction: Path) -> tuple:
    viewer = make_napari_viewer()
    viewer.open(prediction, plugin=PLUGIN)
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    assert widget.prediction.value == str(prediction)  # found from the store's layers
    return viewer, widget


def _export(widget: ExportWidget, qtbot) -> ew.ExportOutcome:
    worker = widget.export()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=EXPORT_TIMEOUT_MS)
    assert widget.last_outcome is not None
    return widget.last_outcome


def test_shapes_layers_export_exactly_the_spots_inside_each_shape_with_their_names(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path
) -> None:
    import scanpy as sc

    viewer, widget = _open(make_napari_viewer, prediction)
    store = PredictionStore.open(prediction)
    mpp = float(store.attrs["grid"]["mpp"])
    polygon = np.array([[100.0, 250.0], [100.0, 600.0], [500.0, 700.0], [450.0, 300.0]])
    rectangle = np.array([[650.0, 150.0], [650.0, 500.0], [950.0, 500.0], [950.0, 150.0]])
    ellipse = np.array([[1000.0, 400.0], [1000.0, 1000.0], [1400.0, 1000.0], [1400.0, 400.0]])
    tumour = viewer.add_shapes(
        [polygon, rectangle],
        shape_type=["polygon", "rectangle"],
        name="Tumor",
        features={"name": ["upper nest", ""]},
    )
    stroma = viewer.add_shapes([ellipse], shape_type="ellipse", name="Stroma")
    widget.source.value = ew.FROM_SHAPES
    widget.shapes.value = [tumour, stroma]
    widget.h5ad_path.value = tmp_path / "regions"  # the suffix is added
    before = len(notification_manager.records)
    outcome = _export(widget, qtbot)
    assert outcome.error is None

    # the same shapes through the core, independently of the widget
    expected = regions_from_shapes(
        [polygon, rectangle, ellipse],
        ["polygon", "rectangle", "ellipse"],
        mpp,
        names=["upper nest", None, None],
        classifications=["Tumor", "Tumor", "Stroma"],
    )
    assignment = assign_spots(expected, store.xy_level0_px)
    inside = np.flatnonzero(assignment.assigned & store.done)
    assert len(inside) > 0 and set(assignment.region_index[inside]) == {0, 1, 2}
    adata = sc.read_h5ad(tmp_path / "regions.h5ad")
    assert adata.obs_names.tolist() == [store.spot_ids[i] for i in inside]
    labels = np.array(["upper nest", "Tumor", "Stroma"])
    assert (
        adata.obs["region"].astype(str).tolist()
        == labels[assignment.region_index[inside]].tolist()
    )
    classes = np.array(["Tumor", "Tumor", "Stroma"])[assignment.region_index[inside]]
    assert adata.obs["region_class"].astype(str).tolist() == classes.tolist()
    np.testing.assert_array_equal(adata.X, store.expression()[inside])
    result = outcome.result
    assert result.region_counts == {
        "upper nest": int(np.sum(assignment.region_index[inside] == 0)),
        "Tumor": int(np.sum(assignment.region_index[inside] == 1)),
        "Stroma": int(np.sum(assignment.region_index[inside] == 2)),
    }
    assert f"{len(inside):,} spots" in widget.summary.value
    assert str(tmp_path / "regions.h5ad") in widget.summary.value
    assert any(str(tmp_path / "regions.h5ad") in m for m in _messages("info", before))
    assert not _messages("error", before)


def _qupath_annotations() -> dict:
    """A QuPath 0.5-style export: a classed square with a hole, a named ellipse-like polygon."""
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = np.stack([1500 + 300 * np.cos(t), 2200 + 250 * np.sin(t)], 1).round(2).tolist()
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "6f1f0a2e-2c5b-4c39-9b1e-0d5f3c7a9e11",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[300, 300], [1100, 300], [1100, 1500], [300, 1500], [300, 300]],
                        [[500, 600], [900, 600], [900, 1000], [500, 1000], [500, 600]],
                    ],
                },
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": True,
                },
            },
            {
                "type": "Feature",
                "id": "0b9d8e7c-1a2b-4c3d-8e9f-a0b1c2d3e4f5",
                "geometry": {"type": "Polygon", "coordinates": [[*circle, circle[0]]]},
                "properties": {
                    "objectType": "annotation",
                    "name": "Stroma A",
                    "classification": {"name": "Stroma", "color": [150, 200, 150]},
                },
            },
        ],
    }


def test_qupath_annotations_go_to_a_shapes_layer_and_back_to_qupath_unchanged(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, prediction)
    store = PredictionStore.open(prediction)
    mpp = float(store.attrs["grid"]["mpp"])
    source = tmp_path / "annotations.geojson"
    source.write_text(json.dumps(_qupath_annotations()))
    widget.source.value = ew.FROM_GEOJSON
    widget.regions_file.value = source
    layer = widget.import_geojson()
    assert layer is not None and layer in viewer.layers
    assert widget.source.value == ew.FROM_SHAPES and widget.shapes.value == [layer]
    # placed in the slide's µm frame: outline, hole and polygon, classes as features
    assert list(layer.shape_type) == ["polygon"] * 3
    assert layer.features["class"].tolist() == ["Tumor", "Tumor", "Stroma"]
    assert layer.features["hole"].tolist() == [False, True, False]
    np.testing.assert_allclose(
        layer.data[0],
        xy_level0_px_to_yx_um([[300, 300], [1100, 300], [1100, 1500], [300, 1500]], mpp),
    )
    np.testing.assert_allclose(layer.edge_color[0][:3], np.array([200, 0, 0]) / 255)
    assert layer.face_color[1][3] == 0  # the hole is see-through

    widget.want_h5ad.value = False
    widget.want_geojson.value = True
    widget.geojson_path.value = tmp_path / "back.geojson"
    outcome = _export(widget, qtbot)
    assert outcome.error is None
    back = read_geojson_regions(tmp_path / "back.geojson")  # the annotations come first
    original = regions_from_geojson(_qupath_annotations())
    assert len(back) == len(original) == 2
    for got, want in zip(back, original, strict=True):
        assert got.classification == want.classification and got.name == want.name
        assert got.color == want.color and got.properties == want.properties  # ids, isLocked
        distance = shapely.hausdorff_distance(
            got.geometry_xy_level0_px, want.geometry_xy_level0_px
        )
        assert distance < 1.0  # within a pixel
        assert len(got.geometry_xy_level0_px.interiors) == len(
            want.geometry_xy_level0_px.interiors
        )
    # the spots: those of the core's own assignment, classed by their annotation
    assignment = assign_spots(original, store.xy_level0_px)
    inside = np.flatnonzero(assignment.assigned & store.done)
    document = json.loads((tmp_path / "back.geojson").read_text())
    detections = [f for f in document["features"] if f["properties"]["objectType"] == "detection"]
    assert [f["properties"]["name"] for f in detections] == [store.spot_ids[i] for i in inside]
    assert [f["properties"]["classification"]["name"] for f in detections] == [
        original[j].classification for j in assignment.region_index[inside]
    ]


def test_cancel_leaves_no_file_and_an_older_file_as_it_was(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, widget = _open(make_napari_viewer, prediction)
    gate = threading.Event()
    paused: list[bool] = []
    real_steps = export_worker.export_steps

    def held(*args, **kwargs):  # pauses the real export once its .h5ad is at a temporary name
        steps = real_steps(*args, **kwargs)
        for report in steps:
            yield report
            if report.message.startswith("wrote"):
                break
        paused.append(any(p.name.startswith(".old.") for p in tmp_path.iterdir()))
        gate.wait(30)
        return (yield from steps)

    monkeypatch.setattr(export_worker, "export_steps", held)
    (tmp_path / "old.h5ad").write_bytes(b"previous")
    widget.want_geojson.value = True
    widget.h5ad_path.value = tmp_path / "old.h5ad"
    widget.geojson_path.value = tmp_path / "new.geojson"
    before = len(notification_manager.records)
    worker = widget.export()
    qtbot.waitUntil(lambda: bool(paused), timeout=EXPORT_TIMEOUT_MS)
    widget.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=EXPORT_TIMEOUT_MS)
    assert worker is not None and paused == [True]  # a temporary file existed
    assert widget.last_outcome.cancelled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5ad"]
    assert (tmp_path / "old.h5ad").read_bytes() == b"previous"
    assert any("cancelled" in m for m in _messages("info", before))
    assert widget.export_button.enabled and not widget.cancel_button.enabled


def test_malformed_geojson_and_empty_regions_are_notified_and_change_nothing(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, prediction)
    widget.h5ad_path.value = tmp_path / "out.h5ad"
    n_layers = len(viewer.layers)
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [')
    widget.source.value = ew.FROM_GEOJSON
    widget.regions_file.value = broken

    before = len(notification_manager.records)
    assert widget.import_geojson() is None
    assert widget.export() is None  # refused in the form: no worker
    errors = _messages("error", before)
    assert len(errors) == 2 and all(
        "broken.geojson is not a readable GeoJSON" in m for m in errors
    )

    line = tmp_path / "line.geojson"
    line.write_text(
        json.dumps(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[0, 0], [9, 9]]},
                "properties": {},
            }
        )
    )
    widget.regions_file.value = line
    before = len(notification_manager.records)
    assert widget.import_geojson() is None
    assert "not an area" in _messages("error", before)[0]

    widget.source.value = ew.FROM_SHAPES
    empty = viewer.add_shapes(name="empty")
    widget.shapes.value = [empty]
    before = len(notification_manager.records)
    assert widget.export() is None
    assert "'empty' holds no shape" in _messages("error", before)[0]

    # a shape beside the tissue, where no spot lies: the engine's message, from the worker
    far = viewer.add_shapes(
        [np.array([[-900.0, -900.0], [-900.0, -800.0], [-800.0, -800.0]])],
        shape_type="polygon",
        name="off",
    )
    widget.shapes.value = [far]
    before = len(notification_manager.records)
    outcome = _export(widget, qtbot)
    assert outcome.error is not None and not outcome.cancelled
    assert "no predicted spot lies inside the regions" in _messages("error", before)[0]
    assert len(viewer.layers) == n_layers + 2  # only the two Shapes layers added here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.geojson", "line.geojson"]


def test_output_problems_are_notified_before_anything_runs(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(prediction, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")  # from the manifest
    assert isinstance(widget, ExportWidget) and widget.prediction.value == str(prediction)
    assert widget.h5ad_path.value == prediction.with_name("cmu.h5ad")  # suggested beside it
    widget.want_h5ad.value = False
    assert not widget.export_button.enabled  # nothing ticked
    widget.want_h5ad.value = True
    (tmp_path / "folder.h5ad").mkdir()
    widget.h5ad_path.value = tmp_path / "folder.h5ad"
    before = len(notification_manager.records)
    outcome = _export(widget, qtbot)
    assert outcome.error is not None
    assert "is a folder" in _messages("error", before)[0]
    assert (tmp_path / "folder.h5ad").is_dir() and not list((tmp_path / "folder.h5ad").iterdir())
    # all spots, to a good path
    widget.h5ad_path.value = tmp_path / "all.h5ad"
    outcome = _export(widget, qtbot)
    store = PredictionStore.open(prediction)
    assert outcome.error is None and outcome.result.n_spots == int(store.done.sum())
    assert ad.read_h5ad(tmp_path / "all.h5ad").n_obs == store.n_spots
    assert "region" not in ad.read_h5ad(tmp_path / "all.h5ad").obs


def test_a_run_that_has_not_saved_its_store_yet_is_waited_for(
    make_napari_viewer, prediction: Path, tmp_path: Path
) -> None:
    from napari_virtual_st._napari.layers import add_layer, empty_heatmap_layer_data

    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    assert widget.prediction.value is None and not widget.export_button.enabled
    assert "No prediction" in widget.info.value
    run = tmp_path / "run.vst.zarr"  # the Predict widget's layers come before its store
    add_layer(viewer, empty_heatmap_layer_data(run, "ERBB2"))
    assert widget.prediction.value == str(run)
    assert widget.info.value == "Waiting for the run to save its spots…"
    viewer.open(prediction, plugin=PLUGIN)  # another store's layers: listed too
    assert set(widget.prediction.choices) - {None} == {str(run), str(prediction)}
    widget.prediction.value = str(prediction)
    assert widget.info.value.startswith(
        f"{PredictionStore.open(prediction).n_spots:,} spots × 250"
    )


def test_closing_the_panel_mid_export_stops_it_and_writes_nothing(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, widget = _open(make_napari_viewer, prediction)
    gate = threading.Event()
    started: list[bool] = []
    real_steps = export_worker.export_steps

    def held(*args, **kwargs):  # pauses the real export after its first step
        steps = real_steps(*args, **kwargs)
        yield next(steps)
        started.append(True)
        gate.wait(30)
        return (yield from steps)

    monkeypatch.setattr(export_worker, "export_steps", held)
    widget.h5ad_path.value = tmp_path / "closed.h5ad"
    worker = widget.export()
    finished: list[bool] = []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: bool(started), timeout=EXPORT_TIMEOUT_MS)
    widget.native.deleteLater()  # the user closes the panel
    qtbot.waitUntil(lambda: widget._closed, timeout=EXPORT_TIMEOUT_MS)
    gate.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=EXPORT_TIMEOUT_MS)
    assert widget.last_outcome is not None and widget.last_outcome.cancelled
    assert list(tmp_path.iterdir()) == []


def test_a_second_export_never_silently_replaces_the_first(
    make_napari_viewer, qtbot, prediction: Path, tmp_path: Path
) -> None:
    import shutil

    store = tmp_path / "cmu.vst.zarr"
    shutil.copytree(prediction, store)
    viewer = make_napari_viewer()
    viewer.open(store, plugin=PLUGIN)
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    widget.prediction.value = str(store)
    assert Path(widget.h5ad_path.value) == tmp_path / "cmu.h5ad"  # the suggested name
    assert _export(widget, qtbot).error is None
    first = (tmp_path / "cmu.h5ad").read_bytes()
    # the suggestion moves on to a free name: a second Export writes beside the first
    assert Path(widget.h5ad_path.value) == tmp_path / "cmu-2.h5ad"
    assert _export(widget, qtbot).error is None
    assert (tmp_path / "cmu.h5ad").read_bytes() == first
    assert (tmp_path / "cmu-2.h5ad").is_file() and "Replaced" not in widget.summary.value
    # a file the user chose on purpose is replaced, and the panel says so
    widget.h5ad_path.value = tmp_path / "cmu.h5ad"
    before = len(notification_manager.records)
    assert _export(widget, qtbot).error is None
    assert "Replaced the earlier cmu.h5ad." in widget.summary.value
    assert any("Replaced the earlier cmu.h5ad" in m for m in _messages("info", before))
    # a suggested name taken since it was suggested moves on before the export
    other = ExportWidget(viewer)
    viewer.window.add_dock_widget(other, name="Export again")
    other.prediction.value = str(store)
    assert Path(other.h5ad_path.value) == tmp_path / "cmu-3.h5ad"
    (tmp_path / "cmu-3.h5ad").write_bytes(b"someone else's")
    assert _export(other, qtbot).error is None
    assert (tmp_path / "cmu-3.h5ad").read_bytes() == b"someone else's"
    assert (tmp_path / "cmu-4.h5ad").is_file()
