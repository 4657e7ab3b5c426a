"""Regions: QuPath GeoJSON to level-0 polygons, and spot membership (napari Shapes: see
test_napari_shapes_regions.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from napari_virtual_st.regions import (
    Region,
    RegionError,
    assign_spots,
    read_geojson_regions,
    regions_from_geojson,
)

MPP = 0.5


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
