"""Regions: napari shapes (world µm) and QuPath GeoJSON to level-0 polygons; spot membership."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.regions import (
    Region,
    RegionError,
    assign_spots,
    read_geojson_regions,
    regions_from_geojson,
    regions_from_shapes,
    regions_from_shapes_layer,
)

MPP = 0.5


# -- napari shapes ----------------------------------------------------------------------------
def test_rectangle_in_world_um_becomes_level0_px_xy() -> None:
    # rows 100..300 µm, cols 40..240 µm -> x 80..480 px, y 200..600 px at 0.5 µm/px
    rect_yx_um = np.array([[100, 40], [100, 240], [300, 240], [300, 40]], float)
    (region,) = regions_from_shapes([rect_yx_um], "rectangle", MPP, names=["box"])
    assert region.name == "box" and region.classification is None
    assert region.geometry_xy_level0_px.bounds == pytest.approx((80, 200, 480, 600))
    assert region.area_mm2(MPP) == pytest.approx(0.2 * 0.2)


def test_polygon_vertices_keep_their_order_and_frame() -> None:
    triangle_yx_um = np.array([[0, 0], [0, 100], [50, 0]], float)
    (region,) = regions_from_shapes([triangle_yx_um], ["polygon"], MPP, classifications=["T"])
    xy = np.asarray(region.geometry_xy_level0_px.exterior.coords)[:-1]
    np.testing.assert_allclose(xy_level0_px_to_yx_um(xy, MPP), triangle_yx_um)
    assert region.classification == "T" and region.label == "T"


@pytest.mark.parametrize("angle_deg", [0.0, 30.0])
def test_ellipse_is_inscribed_in_its_bounding_box(angle_deg: float) -> None:
    a, b = 200.0, 50.0  # semi-axes in µm
    corners = np.array([[-b, -a], [-b, a], [b, a], [b, -a]])
    t = math.radians(angle_deg)
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    corners_yx_um = corners @ rotation.T + [1000.0, 2000.0]
    (region,) = regions_from_shapes([corners_yx_um], "ellipse", MPP)
    geometry = region.geometry_xy_level0_px
    area_um2 = geometry.area * MPP**2
    assert area_um2 == pytest.approx(math.pi * a * b, rel=0.01)
    centre = np.array(geometry.centroid.coords[0])
    np.testing.assert_allclose(centre, [2000 / MPP, 1000 / MPP], atol=1e-6)
    # the ends of the long axis touch the middle of the box's short sides
    far = max(np.linalg.norm(np.asarray(geometry.exterior.coords) - centre, axis=1))
    assert far * MPP == pytest.approx(a, rel=1e-3)


def test_self_crossing_outline_is_repaired_into_an_area() -> None:
    bow_tie_yx_um = np.array([[0, 0], [100, 100], [0, 100], [100, 0]], float)
    (region,) = regions_from_shapes([bow_tie_yx_um], "polygon", MPP)
    assert region.geometry_xy_level0_px.is_valid
    assert region.geometry_xy_level0_px.area == pytest.approx(2 * 0.25 * (100 / MPP) ** 2)


@pytest.mark.parametrize(
    ("shapes", "types", "message"),
    [
        ([], "polygon", "no shapes were drawn"),
        ([np.array([[0, 0], [10, 10]])], "line", "is a line, which encloses no area"),
        ([np.array([[0, 0], [10, 10], [20, 0]])], "path", "is a path"),
        ([np.array([[0, 0], [10, 10], [20, 20]])], "polygon", "encloses no area"),
        ([np.array([[0, 0], [10, 10]])], "polygon", "encloses no area"),
        ([np.array([[0, 0], [np.nan, 1], [2, 2]])], "polygon", "malformed vertices"),
        ([np.array([[0, 0], [0, 1], [1, 1]])], "ellipse", "4 corners"),
    ],
)
def test_shapes_that_are_not_areas_are_refused_clearly(
    shapes: list[Any], types: str, message: str
) -> None:
    with pytest.raises(RegionError, match=message):
        regions_from_shapes(shapes, types, MPP)


def test_shapes_layer_with_its_own_scale_converts_through_world_coordinates() -> None:
    from napari.layers import Shapes

    # a layer drawn in slide pixels: scale (mpp, mpp) maps its data to world µm
    rect_px = np.array([[200, 80], [200, 480], [600, 480], [600, 80]], float)
    ellipse_px = np.array([[0, 0], [0, 40], [20, 40], [20, 0]], float)
    layer = Shapes(
        [rect_px, ellipse_px],
        shape_type=["rectangle", "ellipse"],
        scale=(MPP, MPP),
        features={"name": ["core", ""], "class": ["Tumor", "Stroma"]},
    )
    rect, ellipse = regions_from_shapes_layer(layer, MPP)
    assert rect.geometry_xy_level0_px.bounds == pytest.approx((80, 200, 480, 600))
    assert (rect.name, rect.classification) == ("core", "Tumor")
    assert (ellipse.name, ellipse.label) == (None, "Stroma")
    assert ellipse.geometry_xy_level0_px.area == pytest.approx(math.pi * 20 * 10, rel=0.01)


# -- QuPath GeoJSON ---------------------------------------------------------------------------
def _feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def _write(tmp_path: Path, document: Any, name: str = "regions.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_qupath_annotations_with_classes_holes_and_multipolygons_are_read(
    tmp_path: Path,
) -> None:
    document = {
        "type": "FeatureCollection",
        "features": [
            _feature(
                {"type": "Polygon", "coordinates": [_square(0, 0, 100), _square(25, 25, 50)]},
                objectType="annotation",
                name="ring",
                classification={"name": "Tumor", "color": [200, 0, 0]},
                isLocked=True,
            ),
            _feature(
                {
                    "type": "MultiPolygon",
                    "coordinates": [[_square(200, 0, 10)], [_square(300, 0, 10)]],
                },
                objectType="annotation",
                classification={"name": "Stroma", "colorRGB": -16744448},  # QuPath < 0.4
            ),
            _feature(
                {"type": "Polygon", "coordinates": [_square(500, 500, 5)]},
                objectType="detection",
                classification="Tumor",
            ),
            _feature(
                {"type": "Polygon", "coordinates": [_square(900, 900, 5)]},
                classification="Immune cells",
            ),
        ],
    }
    ring, pieces, plain = read_geojson_regions(_write(tmp_path, document))
    assert ring.name == "ring" and ring.classification == "Tumor" and ring.color == (200, 0, 0)
    assert ring.properties["isLocked"] is True
    assert ring.geometry_xy_level0_px.area == pytest.approx(100**2 - 50**2)
    assert isinstance(pieces.geometry_xy_level0_px, MultiPolygon)
    assert (pieces.label, pieces.color) == ("Stroma", (0, 128, 0))
    assert plain.classification == "Immune cells" and plain.color is None  # no objectType


def test_single_feature_and_list_of_features_are_accepted(tmp_path: Path) -> None:
    feature = _feature({"type": "Polygon", "coordinates": [_square(0, 0, 10)]}, name="a")
    assert read_geojson_regions(_write(tmp_path, feature))[0].name == "a"
    assert len(read_geojson_regions(_write(tmp_path, [feature, feature]))) == 2


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"type": "FeatureCollection", "features": []}, "holds no annotation"),
        (
            {
                "type": "FeatureCollection",
                "features": [
                    _feature(
                        {"type": "Polygon", "coordinates": [_square(0, 0, 1)]},
                        objectType="detection",
                    )
                ],
            },
            r"holds no annotation \(1 detections",
        ),
        ([_feature({"type": "Point", "coordinates": [1, 2]}, name="dot")], r"\(dot\) is a Point"),
        ([_feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})], "not an area"),
        (
            [_feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]})],
            "not closed",
        ),
        ([_feature({"type": "Polygon", "coordinates": [[["a", 0]]]})], "not numbers"),
        ([_feature({"type": "Polygon", "coordinates": []})], "no coordinates"),
        (
            [_feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2], [0, 0]]]})],
            "encloses no area",
        ),
        (
            [
                _feature(
                    {"type": "Polygon", "coordinates": [_square(0, 0, 1)]},
                    classification={"name": "T", "color": [300, 0, 0]},
                )
            ],
            "not RGB",
        ),
        ({"type": "FeatureCollection"}, "no list of features"),
        ({"type": "Topology"}, "not GeoJSON that QuPath writes"),
        ([{"type": "Feature"}], "feature 1 is not a GeoJSON Feature"),
    ],
)
def test_malformed_empty_or_non_polygon_geojson_is_refused_naming_the_problem(
    tmp_path: Path, document: Any, message: str
) -> None:
    with pytest.raises(RegionError, match=message):
        read_geojson_regions(_write(tmp_path, document))


def test_missing_or_non_json_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="not found"):
        read_geojson_regions(tmp_path / "absent.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("<xml/>")
    with pytest.raises(RegionError, match=r"bad\.geojson is not a readable GeoJSON"):
        read_geojson_regions(bad)


def test_the_areas_of_a_geometry_collection_make_one_region() -> None:
    collection = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Polygon", "coordinates": [_square(0, 0, 10)]},
            {"type": "LineString", "coordinates": [[0, 0], [50, 50]]},
            {"type": "Polygon", "coordinates": [_square(20, 0, 10)]},
        ],
    }
    (region,) = regions_from_geojson([_feature(collection, objectType="annotation")])
    assert isinstance(region.geometry_xy_level0_px, MultiPolygon)
    assert region.area_level0_px == 200


def test_a_bare_polygon_geometry_is_one_region() -> None:
    (region,) = regions_from_geojson({"type": "Polygon", "coordinates": [_square(0, 0, 4)]})
    assert region.label == "region" and region.area_level0_px == 16


# -- membership -------------------------------------------------------------------------------
def test_membership_uses_centres_edges_count_holes_exclude_smallest_wins() -> None:
    tissue = Region(box(0, 0, 100, 100), name="tissue")
    tumour = Region(Polygon(_square(10, 10, 40), [_square(20, 20, 10)]), classification="Tumor")
    xy = np.array(
        [
            [5, 5],  # tissue only
            [15, 15],  # tumour (inside tissue too: the smaller wins)
            [25, 25],  # in the tumour's hole: tissue
            [10, 30],  # on the tumour's edge: tumour
            [100, 50],  # on the tissue's edge: tissue
            [150, 50],  # outside
        ],
        float,
    )
    assignment = assign_spots([tissue, tumour], xy)
    assert assignment.region_index.tolist() == [0, 1, 0, 1, 0, -1]
    assert assignment.inside[1].tolist() == [True, True]
    assert assignment.counts().tolist() == [3, 2]


def test_membership_is_vectorised_over_many_spots() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10_000, size=(200_000, 2))
    circle = Region(
        Polygon(
            5000
            + 3000 * np.c_[np.cos(np.linspace(0, 6.28, 500)), np.sin(np.linspace(0, 6.28, 500))]
        )
    )
    start = time.perf_counter()
    assignment = assign_spots([circle], xy)
    elapsed = time.perf_counter() - start
    expected = np.hypot(*(xy - 5000).T) < 3000
    assert np.mean(assignment.assigned == expected) > 0.999
    assert elapsed < 2.0
