"""napari Shapes ↔ :class:`~napari_virtual_st.regions.Region`: the one place the plugin turns
drawn shapes into regions of the slide, and regions (e.g. QuPath annotations) into a Shapes
layer.

Shapes live in napari's world frame, (row, col) µm; regions in level-0 (x, y) px. Every
conversion between the two goes through :mod:`napari_virtual_st.frames`.

What a region is called, from a Shapes layer (:func:`regions_from_layers`):

- its **class** (QuPath's classification) is the shape's ``class`` (or ``classification``)
  feature when it has one, else **the layer's name**: draw a ``Tumor`` layer and a
  ``Stroma`` layer and the spots are classed so;
- its **name** is the shape's ``name`` (or ``label``) feature, else its class. Shapes
  sharing a label are counted together.

A layer made by :func:`shapes_layer_data` (e.g. imported from QuPath) keeps each region's own
name and class (its layer name is not used as a class) and its properties; holes are drawn as
their own (transparent) polygons and cut out again by :func:`regions_from_layers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import MultiPolygon, Polygon

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st.frames import xy_level0_px_to_yx_um, yx_um_to_xy_level0_px
from napari_virtual_st.regions import Region, RegionError, class_colors, polygonal_area

if TYPE_CHECKING:
    from napari_virtual_st._napari.layers import LayerDataTuple

#: napari shape types that enclose an area.
POLYGON_SHAPE_TYPES = ("polygon", "rectangle", "ellipse")
#: Vertices used to draw an ellipse as a polygon.
ELLIPSE_VERTICES = 64
#: Opacity of a class colour filling an imported region (its outline is opaque).
REGION_FACE_ALPHA = 0.25
#: Role of a layer made by :func:`shapes_layer_data` in ``metadata['vst']``.
REGIONS_ROLE = "regions"


# -- shapes -> regions ----------------------------------------------------------------------
def regions_from_shapes(
    shapes_yx_um: Sequence[ArrayLike],
    shape_types: Sequence[str] | str,
    mpp: float,
    *,
    names: Sequence[str | None] | None = None,
    classifications: Sequence[str | None] | None = None,
) -> list[Region]:
    """Regions from napari shapes given in world micrometres.

    Parameters
    ----------
    shapes_yx_um
        One ``(n_vertices, 2)`` array per shape, (row, col) µm — napari world coordinates
        (for a layer with its own ``scale``/``translate``, see
        :func:`regions_from_shapes_layer`). Extra leading axes (z, t) are dropped.
    shape_types
        napari's type of each shape (or one for all): ``polygon``, ``rectangle`` or
        ``ellipse``. For an ellipse the vertices are the four corners of its bounding box.
    mpp
        µm per level-0 pixel of the slide the shapes were drawn on.
    names, classifications
        Optional name and class of each shape.

    Returns
    -------
    list of Region
        In the order of the shapes. Self-crossing outlines are repaired into valid areas.

    Raises
    ------
    RegionError
        If there are no shapes, a shape is a line or path, or encloses no area.
    """
    if not mpp > 0 or not math.isfinite(mpp):
        raise RegionError(f"the slide's µm per pixel must be a positive number; got {mpp}")
    shapes = list(shapes_yx_um)
    if not shapes:
        raise RegionError("no shapes were drawn: draw a polygon, rectangle or ellipse first")
    types = [shape_types] * len(shapes) if isinstance(shape_types, str) else list(shape_types)
    names_list = list(names) if names is not None else [None] * len(shapes)
    classes = list(classifications) if classifications is not None else [None] * len(shapes)
    if not len(types) == len(names_list) == len(classes) == len(shapes):
        raise RegionError("each shape needs one shape type (and name and class, when given)")
    return [
        _region_of_shape(vertices, kind, name, cls, mpp, f"shape {i + 1}")
        for i, (vertices, kind, name, cls) in enumerate(
            zip(shapes, types, names_list, classes, strict=True)
        )
    ]


def _region_of_shape(
    vertices: ArrayLike, kind: str, name: str | None, cls: str | None, mpp: float, what: str
) -> Region:
    what += f" ({name})" if name else ""
    if kind not in POLYGON_SHAPE_TYPES:
        raise RegionError(
            f"{what} is a {kind}, which encloses no area: use a polygon, rectangle or ellipse"
        )
    yx = np.asarray(vertices, dtype=np.float64)
    if yx.ndim != 2 or yx.shape[1] < 2 or not np.isfinite(yx).all():
        raise RegionError(f"{what} has malformed vertices (expected rows of (row, col) µm)")
    yx = yx[:, -2:]
    if kind == "ellipse":
        if len(yx) != 4:
            raise RegionError(f"{what}: an ellipse needs the 4 corners of its bounding box")
        yx = _ellipse_outline(yx)
    xy = yx_um_to_xy_level0_px(yx, mpp)
    geometry = polygonal_area(Polygon(xy) if len(xy) >= 3 else Polygon(), what)
    return Region(geometry, name=name or None, classification=cls or None)


def _ellipse_outline(corners_yx: NDArray[np.float64]) -> NDArray[np.float64]:
    """The ellipse inscribed in a (possibly rotated) bounding box given by its 4 corners."""
    centre = corners_yx.mean(axis=0)
    half_a = (corners_yx[1] - corners_yx[0]) / 2
    half_b = (corners_yx[3] - corners_yx[0]) / 2
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]
    return centre + np.cos(t) * half_a + np.sin(t) * half_b


def regions_from_shapes_layer(layer: Any, mpp: float) -> list[Region]:
    """Regions from a napari ``Shapes`` layer, one per shape.

    Vertices are taken from the layer's data coordinates to world µm with the layer's own
    transform (``data_to_world``), so a layer with a ``scale`` (e.g. drawn in slide pixels)
    converts correctly. Names and classes come from the layer's ``features`` (or
    ``properties``) columns ``name`` (or ``label``) and ``class`` (or ``classification``),
    when present.

    Parameters
    ----------
    layer
        A ``napari.layers.Shapes``.
    mpp
        µm per level-0 pixel of the slide.
    """
    data = list(layer.data)
    to_world = getattr(layer, "data_to_world", None)
    shapes_yx_um = [
        np.array([to_world(v) for v in np.asarray(s)]) if to_world else np.asarray(s) for s in data
    ]
    table = _layer_table(layer)
    names = _column(table, ("name", "label"), len(data))
    classes = _column(table, ("class", "classification"), len(data))
    return regions_from_shapes(
        shapes_yx_um, list(layer.shape_type), mpp, names=names, classifications=classes
    )


def _layer_table(layer: Any) -> Mapping[str, Sequence[Any]]:
    features = getattr(layer, "features", None)
    if features is not None and len(getattr(features, "columns", ())):
        return {str(c): list(features[c]) for c in features.columns}
    properties = getattr(layer, "properties", None) or {}
    return {str(k): list(v) for k, v in properties.items()}


def _column(table: Mapping[str, Sequence[Any]], keys: Sequence[str], n: int) -> list[str | None]:
    for key in keys:
        if key in table and len(table[key]) == n:
            return [_text_or_none(v) for v in table[key]]
    return [None] * n


def _text_or_none(value: Any) -> str | None:
    if _missing(value):
        return None
    text = str(value).strip()
    return text or None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def regions_from_layers(layers: Sequence[Any], mpp: float) -> list[Region]:
    """Regions from napari Shapes layers, named as the module docstring says.

    Parameters
    ----------
    layers
        ``napari.layers.Shapes`` layers (user-drawn, or made by :func:`shapes_layer_data`).
    mpp
        µm per level-0 pixel of the slide the shapes were drawn on.

    Raises
    ------
    RegionError
        If no layer is given, a layer has no shapes, or a shape is a line or path or
        encloses no area (the message names the layer).
    """
    if not layers:
        raise RegionError("choose one or more Shapes layers holding the regions")
    regions: list[Region] = []
    for layer in layers:
        if len(layer.data) == 0:
            raise RegionError(
                f"the Shapes layer {layer.name!r} holds no shape: draw a polygon, rectangle "
                "or ellipse"
            )
        try:
            drawn = regions_from_shapes_layer(layer, mpp)
        except RegionError as exc:
            raise RegionError(f"{layer.name}: {exc}") from exc
        meta = vst_layers.vst_meta(layer)
        if meta.get("role") == REGIONS_ROLE and "region" in layer.features.columns:
            regions.extend(_regroup(layer, drawn, meta))
        else:
            regions.extend(
                Region(r.geometry_xy_level0_px, r.name, r.classification or layer.name)
                for r in drawn
            )
    return regions


def _regroup(layer: Any, drawn: list[Region], meta: dict[str, Any]) -> list[Region]:
    """The regions of a layer from :func:`shapes_layer_data`: parts united, holes cut out,
    properties restored."""
    features = layer.features
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(features["region"].tolist()):
        groups.setdefault(-1 - i if _missing(key) else int(key), []).append(i)
    holes = features["hole"].fillna(False).astype(bool).tolist() if "hole" in features else []
    properties = meta.get("region_properties") or []
    colours = meta.get("class_colors") or {}
    regions = []
    for key, members in groups.items():
        outlines = [drawn[i].geometry_xy_level0_px for i in members if not (holes and holes[i])]
        cut = [drawn[i].geometry_xy_level0_px for i in members if holes and holes[i]]
        if not outlines:
            continue  # only the holes of a region were left: nothing to export
        geometry = shapely.union_all(outlines)
        if cut:
            geometry = geometry.difference(shapely.union_all(cut))
        area = _polygons_of(geometry)
        if area is None:
            continue
        first = drawn[members[0]]
        cls = first.classification
        colour = tuple(colours[cls]) if cls in colours else None
        props = properties[key] if 0 <= key < len(properties) else {}
        regions.append(Region(area, first.name, cls, colour, dict(props)))
    return regions


def _polygons_of(geometry: Any) -> Polygon | MultiPolygon | None:
    polygons = [g for g in shapely.get_parts(geometry) if isinstance(g, Polygon) and g.area > 0]
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


# -- regions -> shapes ----------------------------------------------------------------------
def shapes_layer_data(
    regions: Sequence[Region], mpp: float, *, name: str = "QuPath regions", source: str = ""
) -> LayerDataTuple:
    """A Shapes layer of regions, in the napari world frame (row, col) µm.

    Every polygon of a region (a ``MultiPolygon`` has several) becomes a polygon shape; each
    hole becomes a transparent polygon of its own. Features: ``name``, ``class``, ``region``
    (the region's index, shared by its parts and holes) and ``hole``. Faces and outlines take
    the class colours (QuPath's, else the palette). The regions' other properties (QuPath
    ``id``, ``isLocked``, metadata) travel in ``metadata['vst']``, so
    :func:`regions_from_layers` gives the regions back as they came.

    Parameters
    ----------
    regions
        Regions in level-0 (x, y) px.
    mpp
        µm per level-0 pixel of the slide they belong to.
    name, source
        The layer's name and where the regions came from (a file path, shown in metadata).

    Raises
    ------
    RegionError
        If there are no regions.
    """
    if not regions:
        raise RegionError("there are no regions to show")
    colors = class_colors(regions)
    shapes: list[np.ndarray] = []
    rows: dict[str, list[Any]] = {"name": [], "class": [], "region": [], "hole": []}
    face: list[tuple[float, ...]] = []
    edge: list[tuple[float, ...]] = []
    for j, region in enumerate(regions):
        rgb = colors.get(region.classification or "", None) or region.color or (255, 255, 0)
        colour = tuple(c / 255 for c in rgb)
        for xy, hole in _rings_xy(region.geometry_xy_level0_px):
            shapes.append(xy_level0_px_to_yx_um(xy, mpp))
            rows["name"].append(region.name or "")
            rows["class"].append(region.classification or "")
            rows["region"].append(j)
            rows["hole"].append(hole)
            face.append((*colour, 0.0 if hole else REGION_FACE_ALPHA))
            edge.append((*colour, 1.0))
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "polygon",
        "features": rows,
        "face_color": np.array(face),
        "edge_color": np.array(edge),
        "edge_width": 2.0,
        "units": "um",
        "metadata": {
            "vst": {
                "role": REGIONS_ROLE,
                "source": source,
                "mpp": float(mpp),
                "region_properties": [dict(r.properties) for r in regions],
                "class_colors": {c: list(v) for c, v in colors.items()},
            }
        },
    }
    return (shapes, kwargs, "shapes")


def _rings_xy(geometry: Polygon | MultiPolygon) -> list[tuple[NDArray[np.float64], bool]]:
    """Each ring of each polygon as ``(n, 2)`` level-0 (x, y) px, unclosed (napari closes
    rings), with whether it is a hole."""
    parts = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    out = []
    for part in parts:
        for ring, hole in [(part.exterior, False)] + [(r, True) for r in part.interiors]:
            out.append((np.asarray(ring.coords, dtype=np.float64)[:-1, :2], hole))
    return out
