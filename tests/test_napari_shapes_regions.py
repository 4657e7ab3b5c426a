"""napari Shapes ↔ regions (the plugin's one conversion): drawn shapes in world µm to level-0
polygons, and regions to a Shapes layer and back unchanged. Plain functions, no viewer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from napari.layers import Shapes
from shapely.geometry import MultiPolygon, Polygon, box

from napari_virtual_st._napari.shapes_regions import (
    REGIONS_ROLE,
    regions_from_layers,
    regions_from_shapes,
    regions_from_shapes_layer,
    shapes_layer_data,
)
from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.regions import Region, RegionError

MPP = 0.5


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


# -- regions -> Shapes layer -> regions ---------------------------------------------------------
def _layer(regions: list[Region], mpp: float = MPP) -> Shapes:
    data, kwargs, kind = shapes_layer_data(regions, mpp, name="imported", source="a.geojson")
    assert kind == "shapes"
    return Shapes(data, **kwargs)


def test_regions_with_holes_and_parts_go_to_shapes_and_back_unchanged() -> None:
    ring = box(100, 100, 900, 700).difference(box(300, 300, 500, 500))  # a hole
    parts = MultiPolygon([box(1000, 0, 1200, 200), box(1300, 0, 1400, 100)])
    regions = [
        Region(ring, "ring", "Tumor", (200, 0, 0), {"id": "a-1", "isLocked": True}),
        Region(parts, None, "Stroma", None, {"id": "b-2"}),
        Region(box(0, 800, 50, 850)),
    ]
    layer = _layer(regions)
    assert len(layer.data) == 5  # ring + its hole, two parts, the small box
    assert list(layer.features["hole"]) == [False, True, False, False, False]
    assert layer.metadata["vst"]["role"] == REGIONS_ROLE
    # the hole is transparent, outlines opaque in the class colour
    np.testing.assert_allclose(layer.face_color[1][3], 0.0)
    np.testing.assert_allclose(layer.edge_color[0], [200 / 255, 0, 0, 1])
    # vertices are the regions' corners in world (row, col) µm
    xy = np.asarray(ring.exterior.coords)[:-1]
    np.testing.assert_allclose(layer.data[0], xy_level0_px_to_yx_um(xy, MPP))

    back = regions_from_layers([layer], MPP)
    assert len(back) == 3
    for got, want in zip(back, regions, strict=True):
        assert got.geometry_xy_level0_px.symmetric_difference(
            want.geometry_xy_level0_px
        ).area == pytest.approx(0, abs=1e-6)
        assert (got.name, got.classification) == (want.name, want.classification)
        assert dict(got.properties) == dict(want.properties)
    assert back[0].color == (200, 0, 0)
    assert back[1].color is not None  # a palette colour, kept as the class's


def test_drawn_layers_class_their_shapes_by_the_layer_name_unless_a_feature_says() -> None:
    rect_yx = np.array([[0, 0], [0, 100], [100, 100], [100, 0]], float)
    tumour = Shapes([rect_yx], shape_type="rectangle", name="Tumor")
    named = Shapes(
        [rect_yx + 200, rect_yx + 400],
        shape_type="polygon",
        name="Mixed",
        features={"name": ["a", ""], "class": ["Immune", ""]},
    )
    first, second, third = regions_from_layers([tumour, named], MPP)
    assert (first.name, first.classification) == (None, "Tumor")
    assert (second.name, second.classification) == ("a", "Immune")
    assert (third.name, third.classification, third.label) == (None, "Mixed", "Mixed")


def test_a_region_left_with_only_its_hole_is_dropped_and_empty_input_refused() -> None:
    ring = box(0, 0, 100, 100).difference(box(20, 20, 40, 40))
    layer = _layer([Region(ring, "r"), Region(box(200, 0, 300, 100), "s")])
    layer.selected_data = {0}
    layer.remove_selected()  # the user deletes the outline, the hole stays
    (left,) = regions_from_layers([layer], MPP)
    assert left.name == "s"
    with pytest.raises(RegionError, match="no regions"):
        shapes_layer_data([], MPP)
    with pytest.raises(RegionError, match="choose one or more Shapes layers"):
        regions_from_layers([], MPP)
    with pytest.raises(RegionError, match="'empty' holds no shape"):
        regions_from_layers([Shapes(name="empty")], MPP)
    lines = Shapes([np.array([[0, 0], [10, 10]])], shape_type="line", name="lines")
    with pytest.raises(RegionError, match="lines: shape 1 is a line"):
        regions_from_layers([lines], MPP)


def test_an_imported_layer_drawn_at_another_resolution_converts_through_frames() -> None:
    square = Region(Polygon([(0, 0), (400, 0), (400, 400), (0, 400)]), "sq")
    (back,) = regions_from_layers([_layer([square], mpp=0.25)], 0.25)
    assert back.geometry_xy_level0_px.bounds == pytest.approx((0, 0, 400, 400))
    assert back.area_mm2(0.25) == pytest.approx((400 * 0.25 / 1000) ** 2)
    assert math.isclose(back.area_level0_px, 160_000)
