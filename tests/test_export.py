"""Exports of a real prediction (CMU-1-Small-Region.svs): AnnData that scanpy plots as it is,
QuPath GeoJSON that follows QuPath's import rules, and atomic writes."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from shapely.geometry import Polygon, box, shape

from napari_virtual_st.align import from_scale
from napari_virtual_st.export import (
    ExportError,
    export_store,
    select_spots,
    to_anndata,
    to_geojson,
    write_geojson,
    write_h5ad,
    write_regions_geojson,
)
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.measured import MeasuredST, log1p_cp10k
from napari_virtual_st.pipeline import build_grid, predict_slide
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.regions import Region, read_geojson_regions, regions_from_geojson
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore

# -- QuPath's import rules ---------------------------------------------------------------------
#: What QuPath (0.4–0.6, qupath.lib.io PathObjectTypeAdapters / GsonTools / ROITypeAdapters)
#: accepts when it imports GeoJSON objects, as documented by its reader:
#: * the file is strict JSON: a FeatureCollection with a ``features`` list (a Feature or a list
#:   of Features also work);
#: * a Feature has ``type: Feature``, a ``geometry`` and an object of ``properties``; ``id``,
#:   when given, is a UUID;
#: * a geometry has a known ``type`` and ``coordinates`` (polygon rings are closed, ≥ 4
#:   positions, of finite [x, y] numbers in full-resolution pixels); ``isEllipse`` is a bool;
#: * ``properties.objectType`` names a QuPath object type (annotation, detection, cell, tile,
#:   tmaCore); ``name`` is a string; ``isLocked`` a bool;
#: * ``classification`` is a string, or an object with ``name`` (or ``names``) **and**
#:   ``color`` [r, g, b(, a)] of 0–255 (or the older packed ``colorRGB``);
#: * ``measurements`` is an object of name → finite number, or a list of {name, value}.
QUPATH_OBJECT_TYPES = {"annotation", "detection", "cell", "tile", "tmaCore"}
QUPATH_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


def check_qupath_geojson(text: str) -> list[dict[str, Any]]:
    """Assert that GeoJSON text follows QuPath's import rules; return its features."""

    def no_constants(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    document = json.loads(text, parse_constant=no_constants)
    assert document["type"] == "FeatureCollection"
    assert isinstance(document["features"], list) and document["features"]
    for feature in document["features"]:
        assert feature["type"] == "Feature"
        if "id" in feature:
            uuid.UUID(feature["id"])
        _check_geometry(feature["geometry"])
        properties = feature["properties"]
        assert properties["objectType"] in QUPATH_OBJECT_TYPES
        assert isinstance(properties.get("name", ""), str)
        assert isinstance(properties.get("isLocked", False), bool)
        if "classification" in properties:
            _check_classification(properties["classification"])
        if "measurements" in properties:
            measurements = properties["measurements"]
            if isinstance(measurements, list):
                measurements = {m["name"]: m["value"] for m in measurements}
            assert isinstance(measurements, dict)
            for key, value in measurements.items():
                assert isinstance(key, str) and key
                assert isinstance(value, (int, float)) and not isinstance(value, bool)
                assert math.isfinite(value)
    return document["features"]


def _check_geometry(geometry: dict[str, Any]) -> None:
    assert geometry["type"] in QUPATH_GEOMETRY_TYPES
    assert isinstance(geometry.get("isEllipse", False), bool)
    polygons = {"Polygon": [geometry["coordinates"]], "MultiPolygon": geometry["coordinates"]}
    for rings in polygons.get(geometry["type"], []):
        assert rings, "a polygon needs an outer ring"
        for ring in rings:
            assert len(ring) >= 4 and ring[0] == ring[-1], "rings are closed, ≥ 4 positions"
            for position in ring:
                assert len(position) in (2, 3)
                assert all(isinstance(c, (int, float)) and math.isfinite(c) for c in position)


def _check_classification(value: Any) -> None:
    if isinstance(value, str):
        return
    assert "name" in value or "names" in value
    if "colorRGB" in value:
        assert isinstance(value["colorRGB"], int)
        return
    color = value["color"]  # QuPath needs it with a name object
    assert len(color) in (3, 4) and all(isinstance(c, int) and 0 <= c <= 255 for c in color)


# -- a real prediction -------------------------------------------------------------------------
def _predict(slide_path: Path, model_path: Path, out: Path, kind: str) -> PredictionStore:
    predictor = Predictor(model_path, providers=["cpu"])
    with Slide(slide_path) as slide:
        grid = build_grid(slide, kind, tile_um=predictor.info.tile_um)  # type: ignore[arg-type]
        return predict_slide(slide, predictor, grid, out, batch_size=64)


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[PredictionStore, Path]:
    """Visium spots on the real CMU-1-Small-Region slide, predicted by a synthetic model with
    variance (5 genes)."""
    from conftest import WSI_DIR
    from synthetic_models import write_mean_colour_model

    slide = WSI_DIR / "CMU-1-Small-Region.svs"
    if not slide.exists():
        pytest.skip("real slide CMU-1-Small-Region.svs not available in ../shared/data/wsi")
    folder = tmp_path_factory.mktemp("export")
    model = write_mean_colour_model(folder / "synthetic.onnx", with_variance=True)
    return _predict(slide, model, folder / "cmu.vst.zarr", "visium"), slide


@pytest.fixture(scope="module")
def regions(real_store: tuple[PredictionStore, Path]) -> list[Region]:
    """A classified tumour square with a hole, and a named stroma strip (level-0 px)."""
    document = {
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
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[1100, 1500], [2000, 1500], [2000, 2900], [1100, 2900], [1100, 1500]]
                    ],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": "Stroma A",
                    "classification": {"name": "Stroma", "color": [150, 200, 150]},
                    "metadata": {"annotator": "pathologist 1"},
                },
            },
        ],
    }
    return regions_from_geojson(document)


# -- AnnData -------------------------------------------------------------------------------------
def test_anndata_holds_the_spots_inside_the_regions_in_visium_layout(
    real_store: tuple[PredictionStore, Path], regions: list[Region]
) -> None:
    store, slide_path = real_store
    adata = to_anndata(store, regions, hires_px=800, lowres_px=200)
    inside = Polygon(regions[0].geometry_xy_level0_px.exterior).union(
        regions[1].geometry_xy_level0_px
    )
    hole = box(500, 600, 900, 1000)
    xy = store.xy_level0_px
    expected = [
        i
        for i, (x, y) in enumerate(xy)
        if inside.covers(shape({"type": "Point", "coordinates": (x, y)}))
        and not hole.contains(shape({"type": "Point", "coordinates": (x, y)}))
    ]
    assert adata.obs["spot_index"].tolist() == expected
    assert adata.n_obs == len(expected) > 10
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, store.expression()[expected])
    assert list(adata.var_names) == list(store.genes)
    assert list(adata.obs_names) == [store.spot_ids[i] for i in expected]
    np.testing.assert_array_equal(
        adata.obs[["array_row", "array_col"]], store.lattice_rc[expected]
    )
    np.testing.assert_array_equal(adata.obsm["spatial"], xy[expected])
    assert set(adata.obs["region"].cat.categories) == {"Tumor", "Stroma A"}
    assert set(adata.obs["region_class"]) == {"Tumor", "Stroma"}
    assert len(adata.uns["region_colors"]) == len(adata.obs["region"].cat.categories)
    class_colours = dict(
        zip(
            adata.obs["region_class"].cat.categories, adata.uns["region_class_colors"], strict=True
        )
    )
    assert class_colours == {"Tumor": "#c80000", "Stroma": "#96c896"}
    np.testing.assert_array_equal(adata.layers["variance"], store.variance()[expected])

    (library,) = adata.uns["spatial"]
    assert library == "CMU-1-Small-Region"
    spatial = adata.uns["spatial"][library]
    hires, lowres = spatial["images"]["hires"], spatial["images"]["lowres"]
    assert hires.dtype == np.uint8 and max(hires.shape[:2]) == 800 and hires.shape[2] == 3
    assert max(lowres.shape[:2]) == 200
    factors = spatial["scalefactors"]
    with Slide(slide_path) as slide:
        w0, h0 = slide.dimensions
        mpp = slide.mpp
    assert factors["tissue_hires_scalef"] * w0 == pytest.approx(hires.shape[1], abs=0.5)
    assert factors["tissue_hires_scalef"] * h0 == pytest.approx(hires.shape[0], abs=0.5)
    assert factors["tissue_lowres_scalef"] * w0 == pytest.approx(lowres.shape[1], abs=0.5)
    assert factors["spot_diameter_fullres"] == pytest.approx(55.0 / mpp)
    assert spatial["metadata"]["source_image_path"] == str(slide_path)

    provenance = adata.uns["virtual_st"]
    assert provenance["model"]["file"] == "synthetic.onnx"
    assert provenance["model"]["sha256"] == store.attrs["model"]["sha256"]
    assert provenance["slide"]["fingerprint"] == store.attrs["slide"]["fingerprint"]
    assert provenance["grid"]["kind"] == "visium"
    assert len(json.loads(provenance["regions_geojson"])["features"]) == 2


@pytest.mark.filterwarnings("ignore:.*squidpy.pl.spatial_scatter:FutureWarning")
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # matplotlib, inside scanpy
def test_scanpy_plots_the_written_h5ad_with_no_extra_arguments(
    real_store: tuple[PredictionStore, Path], regions: list[Region], tmp_path: Path
) -> None:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    store, _ = real_store
    path = write_h5ad(to_anndata(store, regions, hires_px=600, lowres_px=150), tmp_path / "x.h5ad")
    adata = ad.read_h5ad(path)
    axes = sc.pl.spatial(adata, color=[store.genes[0], "region"], show=False)
    try:
        assert len(axes) == 2
        (image,) = axes[0].get_images()
        spatial = adata.uns["spatial"]["CMU-1-Small-Region"]
        np.testing.assert_array_equal(image.get_array(), spatial["images"]["hires"])
        (spots,) = axes[0].collections
        scalef = spatial["scalefactors"]["tissue_hires_scalef"]
        centres = np.array(
            [(p.vertices.min(axis=0) + p.vertices.max(axis=0)) / 2 for p in spots.get_paths()]
        )
        expected = adata.obsm["spatial"] * scalef
        np.testing.assert_allclose(
            np.sort(centres, axis=0), np.sort(expected, axis=0), atol=0.05
        )  # spots drawn where they are on the image
        diameter = np.ptp(spots.get_paths()[0].vertices, axis=0)
        expected_diameter = spatial["scalefactors"]["spot_diameter_fullres"] * scalef
        np.testing.assert_allclose(diameter, expected_diameter, rtol=0.02)
    finally:
        plt.close("all")


def _synthetic_measured(store: PredictionStore, genes: list[str]) -> MeasuredST:
    """Counts at every store spot (half-size image coordinates, other spot names)."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(5.0, size=(store.n_spots, len(genes))).astype(np.float32)
    return MeasuredST(
        counts=sp.csr_matrix(counts),
        genes=tuple(genes),
        spot_ids=tuple(f"m{i}" for i in range(store.n_spots)),
        xy_fullres_px=store.xy_level0_px / 2 + 1.0,
        array_rc=store.lattice_rc,
        source="h5ad",
    )


def test_aligned_measured_data_become_a_layer_in_the_models_units(
    real_store: tuple[PredictionStore, Path], regions: list[Region]
) -> None:
    store, _ = real_store
    genes = [store.genes[2], "OTHER", store.genes[0]]  # two model genes, one other
    measured = _synthetic_measured(store, genes)
    adata = to_anndata(store, regions, measured=measured, transform=from_scale(2.0), hires_px=64)
    index = adata.obs["spot_index"].to_numpy()
    layer = adata.layers["measured"]
    assert layer.shape == adata.shape and layer.dtype == np.float32
    assert adata.var["measured"].tolist() == [g in genes for g in store.genes]
    counts = measured.counts.toarray()
    # the synthetic model's target is not log1p_cp10k: raw counts are kept
    np.testing.assert_array_equal(layer[:, 2], counts[index, 0])
    np.testing.assert_array_equal(layer[:, 0], counts[index, 2])
    assert np.isnan(layer[:, [1, 3, 4]]).all()
    assert adata.uns["virtual_st"]["measured"]["spot_match"] == "nearest"
    assert adata.uns["virtual_st"]["measured"]["units"] == "counts"

    store.attrs["model"]["target"] = "log1p_cp10k"  # in memory only: normalised like the model
    try:
        adata = to_anndata(
            store, regions, measured=measured, transform=from_scale(2.0), hires_px=64
        )
    finally:
        store.attrs["model"]["target"] = "synthetic"
    np.testing.assert_allclose(
        adata.layers["measured"][:, 2], log1p_cp10k(counts[index])[:, 0], rtol=1e-6
    )

    elsewhere = from_scale(2.0, offset_xy=(50_000.0, 0.0))  # a misaligned section
    with pytest.raises(ExportError, match="no exported spot lies on a measured spot"):
        to_anndata(store, regions, measured=measured, transform=elsewhere, hires_px=64)


def test_the_slide_must_be_found_and_be_the_stores_own(
    real_store: tuple[PredictionStore, Path], tmp_path: Path, tiny_svs: Path
) -> None:
    store, slide_path = real_store
    store.attrs["slide"]["path"] = str(tmp_path / "moved.svs")  # in memory only
    try:
        with pytest.raises(ExportError, match=r"is not at .*moved\.svs.*--slide"):
            to_anndata(store, hires_px=64)
        adata = to_anndata(store, slide=slide_path, hires_px=64)
        assert adata.n_obs == store.n_spots
        with pytest.raises(ExportError, match="is not the slide"):
            to_anndata(store, slide=tiny_svs, hires_px=64)
    finally:
        store.attrs["slide"]["path"] = str(slide_path)


def test_only_predicted_spots_are_exported_and_empty_selections_are_errors(
    real_store: tuple[PredictionStore, Path], tmp_path: Path
) -> None:
    store, slide_path = real_store
    with Slide(slide_path) as slide:
        grid = SpotGrid.visium(slide.dimensions, slide.mpp)
    partial = PredictionStore.create(
        tmp_path / "p.vst.zarr", grid=grid, genes=["A"], chunk_spots=8
    )
    with pytest.raises(ExportError, match="holds no predicted spot yet"):
        select_spots(partial)
    partial.write_chunk(1, np.ones((8, 1), np.float32))
    assert select_spots(partial).spot_index.tolist() == list(range(8, 16))
    assert to_anndata(partial, slide=slide_path, hires_px=64).n_obs == 8
    far = [Region(box(-500, -500, -100, -100), name="elsewhere")]
    with pytest.raises(
        ExportError, match=r"no predicted spot lies inside the regions \(elsewhere\)"
    ):
        select_spots(store, far)


# -- QuPath GeoJSON -----------------------------------------------------------------------------
def test_geojson_detections_follow_qupaths_import_rules_with_gene_measurements(
    real_store: tuple[PredictionStore, Path], regions: list[Region], tmp_path: Path
) -> None:
    store, _ = real_store
    path = write_geojson(to_geojson(store, regions, include_variance=True), tmp_path / "s.geojson")
    features = check_qupath_geojson(path.read_text(encoding="utf-8"))
    annotations = [f for f in features if f["properties"]["objectType"] == "annotation"]
    detections = [f for f in features if f["properties"]["objectType"] == "detection"]
    assert len(annotations) == 2
    selection = select_spots(store, regions)
    assert len(detections) == len(selection)
    values = store.expression()
    variance = store.variance()
    radius = 55.0 / store.attrs["grid"]["mpp"] / 2
    by_name = {f["properties"]["name"]: f for f in detections}
    for k, i in enumerate(selection.spot_index):
        feature = by_name[store.spot_ids[i]]
        measurements = feature["properties"]["measurements"]
        assert list(measurements)[: len(store.genes)] == list(store.genes)
        np.testing.assert_allclose(
            [measurements[g] for g in store.genes], values[i], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            [measurements[f"{g} variance"] for g in store.genes], variance[i], rtol=1e-5
        )
        region = regions[selection.region_index[k]]
        assert feature["properties"]["classification"] == {
            "name": region.classification,
            "color": list(region.color),
        }
        outline = shape(feature["geometry"])
        assert feature["geometry"]["isEllipse"] is True
        assert (
            outline.centroid.distance(
                shape({"type": "Point", "coordinates": store.xy_level0_px[i]})
            )
            < 0.05
        )
        assert outline.area == pytest.approx(math.pi * radius**2, rel=0.01)
    # ids are stable from one export to the next (QuPath merges objects by id)
    again = to_geojson(store, regions, include_regions=False)["features"]
    assert [f["id"] for f in again] == [f["id"] for f in detections]


def test_dense_tiles_are_square_detections_and_spots_without_regions_are_all_exported(
    tmp_path: Path, cmu_small_svs: Path, synthetic_model: Path
) -> None:
    store = _predict(cmu_small_svs, synthetic_model, tmp_path / "dense.vst.zarr", "dense")
    features = check_qupath_geojson(json.dumps(to_geojson(store, genes=[store.genes[1]])))
    assert len(features) == store.n_spots
    side = 55.0 / store.attrs["grid"]["mpp"]
    first = features[0]
    assert "isEllipse" not in first["geometry"] and "classification" not in first["properties"]
    assert shape(first["geometry"]).area == pytest.approx(side**2, rel=1e-3)
    assert list(first["properties"]["measurements"]) == [store.genes[1]]


def test_qupath_annotations_round_trip_through_regions(
    regions: list[Region], tmp_path: Path
) -> None:
    qupath_file = tmp_path / "from_qupath.geojson"
    qupath_file.write_text(json.dumps(_qupath_export()))
    regions_in = read_geojson_regions(qupath_file)
    out = write_regions_geojson(regions_in, tmp_path / "back.geojson")
    features = check_qupath_geojson(out.read_text(encoding="utf-8"))
    original = _qupath_export()["features"]
    assert len(features) == len(original)
    for before, after in zip(original, features, strict=True):
        assert after["id"] == before["id"]
        assert after["properties"] == before["properties"]
        assert shape(after["geometry"]).equals(shape(before["geometry"]))
    again = read_geojson_regions(out)
    for a, b in zip(regions_in, again, strict=True):
        assert (a.name, a.classification, a.color) == (b.name, b.classification, b.color)
        assert a.geometry_xy_level0_px.equals(b.geometry_xy_level0_px)


def _qupath_export() -> dict[str, Any]:
    """Annotations as QuPath 0.5 writes them (File → Export objects as GeoJSON)."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "d0b8f4a6-5a3e-4f0e-9d5c-1b2a3c4d5e6f",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[120.5, 80], [900, 95.25], [850, 700], [100, 650], [120.5, 80]],
                        [[300, 300], [500, 300], [500, 450], [300, 300]],
                    ],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": "Invasive front",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": True,
                },
            },
            {
                "type": "Feature",
                "id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [[[1000, 1000], [1200, 1000], [1200, 1200], [1000, 1200], [1000, 1000]]],
                        [[[1300, 1000], [1400, 1000], [1400, 1100], [1300, 1000]]],
                    ],
                },
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Stroma", "color": [150, 200, 150]},
                    "metadata": {"source": "manual"},
                },
            },
        ],
    }


# -- atomic writes and the one-call export ------------------------------------------------------
def test_a_failed_write_leaves_no_half_file_and_keeps_the_previous_one(
    real_store: tuple[PredictionStore, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import anndata as ad

    store, _ = real_store
    document = to_geojson(store, genes=[store.genes[0]])
    target = tmp_path / "spots.geojson"
    target.write_text("previous")

    def half_dump(obj: Any, fh: Any, **kwargs: Any) -> None:
        fh.write('{"type": "FeatureCollection", "features": [')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", half_dump)
    with pytest.raises(KeyboardInterrupt):
        write_geojson(document, target)
    assert target.read_text() == "previous"

    def half_h5ad(adata: Any, filename: Path) -> None:
        Path(filename).write_bytes(b"\x89HDF\r\n")
        raise OSError(28, "No space left on device")

    import napari_virtual_st.export as export_module

    monkeypatch.setattr(export_module, "_write_h5ad", half_h5ad)
    with pytest.raises(ExportError, match="No space left"):
        write_h5ad(ad.AnnData(np.zeros((2, 2), np.float32)), tmp_path / "x.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spots.geojson"]


def test_export_store_writes_both_files_and_counts_spots_per_region(
    real_store: tuple[PredictionStore, Path], regions: list[Region], tmp_path: Path
) -> None:
    import anndata as ad

    store, _ = real_store
    with pytest.raises(ExportError, match="say what to write"):
        export_store(store, regions)
    result = export_store(
        store.path, regions, h5ad=tmp_path / "a.h5ad", geojson=tmp_path / "a.geojson"
    )
    selection = select_spots(store, regions)
    assert result.n_spots == len(selection)
    assert result.region_counts == selection.counts()
    assert sum(result.region_counts.values()) == result.n_spots
    assert ad.read_h5ad(result.h5ad).n_obs == result.n_spots
    features = check_qupath_geojson(result.geojson.read_text(encoding="utf-8"))
    assert len(features) == result.n_spots + len(regions)


# -- progress and cancel ------------------------------------------------------------------------
def test_export_reports_progress_in_order_and_a_cancel_writes_nothing(
    real_store: tuple[PredictionStore, Path],
    regions: list[Region],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import napari_virtual_st.export as export

    store, _ = real_store
    monkeypatch.setattr(export, "GEOJSON_CHUNK_SPOTS", 50)  # several chunks of real spots
    reports: list[export.ExportProgress] = []
    result = export_store(
        store,
        h5ad=tmp_path / "all.h5ad",
        geojson=tmp_path / "all.geojson",
        progress=reports.append,
    )
    chunks = math.ceil(result.n_spots / 50)
    assert [r.done for r in reports] == list(range(1, len(reports) + 1))
    assert len(reports) == reports[-1].total == 1 + 3 + chunks + 1
    assert reports[-1].fraction == 1.0
    assert sum(r.message.startswith("GeoJSON:") for r in reports) == chunks
    assert reports[-2].message == f"GeoJSON: {result.n_spots:,} of {result.n_spots:,} spots"

    # cancel at every step in turn: no file under either final name, old files kept
    (tmp_path / "old.geojson").write_text("previous")
    for stop_at in range(1, len(reports) + 1):
        calls = iter(range(1, 100))

        def cancel(stop_at: int = stop_at, calls: Any = calls) -> bool:
            return next(calls) >= stop_at

        with pytest.raises(export.ExportCancelled, match="nothing was written"):
            export_store(
                store, h5ad=tmp_path / "new.h5ad", geojson=tmp_path / "old.geojson", cancel=cancel
            )
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "all.geojson",
            "all.h5ad",
            "old.geojson",
        ]
        assert (tmp_path / "old.geojson").read_text() == "previous"

    # a generator stopped half-way (what a closed napari worker does) removes its files too
    steps = export.export_steps(store, regions, h5ad=tmp_path / "half.h5ad")
    next(steps), next(steps), next(steps), next(steps)  # the .h5ad is at its temporary name
    assert any(p.name.startswith(".half.") for p in tmp_path.iterdir())
    steps.close()
    assert not any("half" in p.name for p in tmp_path.iterdir())


def test_output_paths_that_are_folders_or_under_a_file_are_refused(
    real_store: tuple[PredictionStore, Path], tmp_path: Path
) -> None:
    store, _ = real_store
    (tmp_path / "folder.h5ad").mkdir()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ExportError, match="is a folder"):
        export_store(store, h5ad=tmp_path / "folder.h5ad")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_store(store, geojson=tmp_path / "plain" / "spots.geojson")
    with pytest.raises(ExportError, match="cannot both be written"):
        export_store(store, h5ad=tmp_path / "same", geojson=tmp_path / "same")
    assert (tmp_path / "folder.h5ad").is_dir() and (tmp_path / "plain").read_text() == "x"


# -- measured counts of a real section ------------------------------------------------------------
def test_real_her2st_a1_export_carries_its_measured_counts_as_log1p_cp10k(
    tmp_path: Path,
) -> None:
    """The bundled NSL model at the measured spots of HER2ST A1 (real data); the measured
    layer is log1p CP10k of A1's own counts, spot by spot and gene by gene."""
    from models.workshop import data
    from napari_virtual_st.cli import main
    from napari_virtual_st.measured import read_legacy_st
    from napari_virtual_st.registry import bundled_models

    if not data.data_available():
        pytest.skip(
            "HER2ST data not available: ../shared/data/her2st_subset is absent beside the checkout"
        )
    a1 = next(s for s in data.her2st_sections() if s.name == "A1")
    measured = read_legacy_st(a1.counts, a1.spots, a1.image, pixel_scale=a1.pixel_scale)
    mpp = data.mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    image = data._cleaned_copy(a1.image, a1.mask_boxes, a1.black_background)
    model = next(m for m in bundled_models() if m.info is not None and m.info.family == "nsl")
    out = tmp_path / "a1.vst.zarr"
    argv = ["predict", str(image), "--model", str(model.path), "--mpp", repr(mpp)]
    argv += ["--out", str(out), "--quiet", "--measured", str(a1.counts), "--spots", str(a1.spots)]
    assert main([*argv, "--pixel-scale", repr(a1.pixel_scale)]) == 0  # as tests/test_compare.py
    store = PredictionStore.open(out)
    assert store.attrs["model"]["target"] == "log1p_cp10k"

    adata = to_anndata(store, measured=measured, hires_px=64, lowres_px=32)
    info = adata.uns["virtual_st"]["measured"]
    assert info["spot_match"] == "id" and info["units"] == "log1p_cp10k"
    assert adata.n_obs == info["n_spots_matched"] == measured.n_spots == 346
    rows = [measured.spot_ids.index(s) for s in adata.obs_names]
    gene_cols = [measured.genes.index(g) for g in adata.var_names]
    assert adata.var["measured"].all()  # the model's 250 genes are all measured in A1
    expected = log1p_cp10k(measured.counts)[np.ix_(rows, gene_cols)]
    np.testing.assert_allclose(adata.layers["measured"], expected, rtol=1e-6)
    # the real counts, not something derived from the predictions
    raw = measured.counts.toarray()[np.ix_(rows, gene_cols)]
    library = measured.counts.toarray().sum(axis=1)[rows]
    np.testing.assert_allclose(
        np.expm1(adata.layers["measured"]) * library[:, None] / 1e4, raw, rtol=1e-3, atol=1e-3
    )
    assert not np.allclose(adata.layers["measured"], adata.X)
