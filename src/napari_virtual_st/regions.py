"""Regions of a slide: polygons drawn in napari or annotated in QuPath, and the spots they hold.

A :class:`Region` is a polygon (or several, with holes) in **level-0 pixels, (x, y)** — the
frame of QuPath GeoJSON and of the prediction store — with a display name and an optional
class (QuPath's *classification*, e.g. ``Tumor``).

Sources: QuPath GeoJSON annotations (*File → Export objects as GeoJSON*),
:func:`read_geojson_regions`; napari Shapes, converted by the plugin
(:mod:`napari_virtual_st._napari.shapes_regions`, which gives their geometry to
:func:`polygonal_area`).

Membership (:func:`assign_spots`): a spot belongs to a region when its **centre** lies inside
the region or on its edge (QuPath's rule for detections); holes exclude. Where regions
overlap, the smallest region containing the centre wins, so a tumour outline drawn inside a
tissue outline claims its spots.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import MultiPolygon, Polygon, mapping

from napari_virtual_st.errors import VirtualSTError

#: QuPath object types that are areas drawn by a person (read as regions).
REGION_OBJECT_TYPES = ("annotation", "tmaCore", "tma_core", "PathAnnotationObject")
#: Colours (RGB) given to classes that come without one (QuPath needs a colour per class).
CLASS_PALETTE: tuple[tuple[int, int, int], ...] = (
    (200, 0, 0),
    (0, 114, 178),
    (0, 158, 115),
    (230, 159, 0),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (120, 120, 120),
    (240, 228, 66),
    (0, 0, 0),
)


_LEGACY_DETECTION_IDS = ("PathDetectionObject", "PathCellObject", "PathTileObject")
_LEGACY_TYPE_IDS = (
    *_LEGACY_DETECTION_IDS,
    "PathAnnotationObject",
    "TMACoreObject",
    "PathRootObject",
)


class RegionError(VirtualSTError):
    """Regions cannot be read or used: malformed, empty, or not areas."""


@dataclass(frozen=True, eq=False)
class Region:
    """An area of the slide, in level-0 pixels.

    Attributes
    ----------
    geometry_xy_level0_px
        A valid, non-empty shapely ``Polygon`` or ``MultiPolygon`` in (x, y) level-0 pixels.
    name
        The region's own name (QuPath's object name), or ``None``.
    classification
        Its class (QuPath's classification name, e.g. ``"Tumor"``), or ``None``.
    color
        RGB colour of the class, 0–255, or ``None`` (a palette colour is used on export).
    properties
        Every other property the region came with (QuPath ``id``, ``objectType``,
        ``isLocked``, ``metadata``, ...), kept so that an export gives the annotation back as
        it was.
    """

    geometry_xy_level0_px: Polygon | MultiPolygon
    name: str | None = None
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What to call the region in tables and legends: its name, else its class."""
        return self.name or self.classification or "region"

    @property
    def area_level0_px(self) -> float:
        """Area in level-0 pixels²."""
        return float(self.geometry_xy_level0_px.area)

    def area_mm2(self, mpp: float) -> float:
        """Area in mm², given the slide's µm per level-0 pixel."""
        return self.area_level0_px * (mpp / 1000.0) ** 2


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def polygonal_area(geometry: shapely.Geometry, what: str) -> Polygon | MultiPolygon:
    """The area of a geometry as a valid Polygon/MultiPolygon (self-crossing outlines
    repaired).

    Raises
    ------
    RegionError
        If it encloses no area; the message names it as ``what``.
    """
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    parts = [
        g
        for g in shapely.get_parts(geometry)
        if isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty and g.area > 0
    ]
    polygons = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    if not polygons:
        raise RegionError(
            f"{what} encloses no area (fewer than 3 distinct corners, or all on one line)"
        )
    if len(polygons) == 1:
        return polygons[0]
    return MultiPolygon(polygons)


# -- QuPath GeoJSON ---------------------------------------------------------------------------
def read_geojson_regions(path: str | Path) -> list[Region]:
    """Read regions from a QuPath GeoJSON file (annotations; detections are skipped).

    Accepts what QuPath writes and imports: a ``FeatureCollection``, a single ``Feature``, or
    a JSON list of features. Each annotation needs a ``Polygon`` or ``MultiPolygon`` geometry
    (holes allowed); its ``name``, ``classification`` (``{"name", "color"}``, the older
    ``{"name", "colorRGB"}``, or a plain string) and other properties are kept.

    Parameters
    ----------
    path
        A ``.geojson`` / ``.json`` file, coordinates in level-0 pixels (QuPath's frame).

    Raises
    ------
    RegionError
        If the file is missing or not JSON, holds no annotation, or an annotation is
        malformed or is not an area (a point or line); the message names the feature.
    """
    path = Path(path)
    if not path.is_file():
        raise RegionError(f"regions file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RegionError(f"{path.name} is not a readable GeoJSON (JSON) file: {exc}") from exc
    return regions_from_geojson(document, source=path.name)


def regions_from_geojson(document: Any, *, source: str = "the GeoJSON") -> list[Region]:
    """Regions from parsed GeoJSON (see :func:`read_geojson_regions`)."""
    features = _features(document, source)
    regions: list[Region] = []
    skipped = 0
    for i, feature in enumerate(features):
        if not isinstance(feature, Mapping) or not isinstance(feature.get("geometry"), Mapping):
            raise RegionError(
                f"{source}: feature {i + 1} is not a GeoJSON Feature with a geometry"
            )
        properties = feature.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise RegionError(f"{source}: feature {i + 1} has properties that are not an object")
        object_type = _object_type(feature, properties)
        if object_type not in REGION_OBJECT_TYPES:
            skipped += 1  # detections, cells, tiles: objects, not regions
            continue
        name = _text_or_none(properties.get("name"))
        what = f"{source}: annotation {i + 1}" + (f" ({name})" if name else "")
        classification, color = _classification(properties.get("classification"), what)
        geometry = _geometry(feature["geometry"], what)
        kept = {
            k: v
            for k, v in properties.items()
            if k not in ("name", "classification", "objectType", "object_type", "type")
        }
        kept["objectType"] = object_type
        if "id" in feature and feature["id"] not in _LEGACY_TYPE_IDS:
            kept["id"] = feature["id"]
        regions.append(Region(geometry, name, classification, color, kept))
    if not regions:
        detail = f" ({skipped} detections or other objects were skipped)" if skipped else ""
        raise RegionError(
            f"{source} holds no annotation{detail}: export the regions from QuPath as annotations"
        )
    return regions


def _features(document: Any, source: str) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, Mapping):
        kind = document.get("type")
        if kind == "FeatureCollection":
            features = document.get("features")
            if not isinstance(features, list):
                raise RegionError(f"{source}: the FeatureCollection has no list of features")
            return features
        if kind == "Feature":
            return [document]
        if kind in ("Polygon", "MultiPolygon"):
            return [{"type": "Feature", "geometry": document, "properties": {}}]
    raise RegionError(
        f"{source} is not GeoJSON that QuPath writes (a FeatureCollection, a Feature, or a list of features)"
    )


def _object_type(feature: Mapping[str, Any], properties: Mapping[str, Any]) -> str:
    for key in ("objectType", "object_type", "type"):
        if isinstance(properties.get(key), str):
            return str(properties[key])
    if feature.get("id") in _LEGACY_DETECTION_IDS:  # QuPath 0.2 kept the type in "id"
        return "detection"
    return "annotation"  # QuPath's default for a feature without a type


def _classification(value: Any, what: str) -> tuple[str | None, tuple[int, int, int] | None]:
    """Class name and RGB colour from QuPath's classification forms."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return (value.strip() or None), None
    if not isinstance(value, Mapping):
        raise RegionError(f"{what}: its classification is neither a name nor an object")
    name: str | None
    if isinstance(value.get("names"), list):
        name = ": ".join(str(n) for n in value["names"])  # QuPath's derived classes
    else:
        name = _text_or_none(value.get("name"))
    color: tuple[int, int, int] | None = None
    if "color" in value:
        color = _rgb(value["color"], what)
    elif "colorRGB" in value:
        color = _rgb(value["colorRGB"], what)
    return name, color


def _rgb(value: Any, what: str) -> tuple[int, int, int]:
    if isinstance(value, bool):
        raise RegionError(f"{what}: colour {value!r} is not RGB")
    if isinstance(value, int):  # packed (A)RGB, as Java ints
        packed = value & 0xFFFFFF
        return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255
    if isinstance(value, list) and len(value) in (3, 4):
        try:
            rgb = tuple(int(c) for c in value[:3])
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb):
            return rgb
    raise RegionError(f"{what}: colour {value!r} is not RGB (three numbers 0–255)")


def _geometry(geometry: Mapping[str, Any], what: str) -> Polygon | MultiPolygon:
    kind = geometry.get("type")
    if kind == "GeometryCollection" and isinstance(geometry.get("geometries"), list):
        members = [
            g
            for g in geometry["geometries"]
            if isinstance(g, Mapping) and g.get("type") in ("Polygon", "MultiPolygon")
        ]
        if members:  # QuPath writes mixed outlines so; keep their areas
            parts = [_geometry(g, what) for g in members]
            return polygonal_area(shapely.union_all(parts), what)
    if kind not in ("Polygon", "MultiPolygon"):
        raise RegionError(
            f"{what} is a {kind or 'shape without a type'}, not an area: regions must be "
            "polygons (in QuPath, remove points and lines or convert them to areas)"
        )
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list) or not coordinates:
        raise RegionError(f"{what} has no coordinates")
    polygons = coordinates if kind == "MultiPolygon" else [coordinates]
    shells = []
    for rings in polygons:
        if not isinstance(rings, list) or not rings:
            raise RegionError(f"{what} has a polygon without rings")
        arrays = [_ring(r, what) for r in rings]
        shells.append(Polygon(arrays[0], arrays[1:]))
    shape = shells[0] if kind == "Polygon" else MultiPolygon(shells)
    return polygonal_area(shape, what)


def _ring(ring: Any, what: str) -> NDArray[np.float64]:
    try:
        xy = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RegionError(f"{what} has coordinates that are not numbers") from exc
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy).all():
        raise RegionError(f"{what} has malformed coordinates (expected [x, y] pairs)")
    if len(xy) < 4 or not np.array_equal(xy[0, :2], xy[-1, :2]):
        raise RegionError(
            f"{what} has a ring that is not closed (GeoJSON rings need ≥ 4 positions, first = last)"
        )
    return xy[:, :2]


def regions_to_geojson(regions: Sequence[Region]) -> dict[str, Any]:
    """QuPath annotation features for regions (the inverse of :func:`regions_from_geojson`).

    Properties the regions came with (``id``, ``isLocked``, ``metadata``, ...) are written
    back; classes without a colour get one from :data:`CLASS_PALETTE`.
    """
    colors = class_colors(regions)
    features = []
    for region in regions:
        properties = {k: v for k, v in region.properties.items() if k != "id"}
        properties["objectType"] = str(region.properties.get("objectType", "annotation"))
        if region.name is not None:
            properties["name"] = region.name
        if region.classification is not None:
            properties["classification"] = {
                "name": region.classification,
                "color": list(colors[region.classification]),
            }
        feature: dict[str, Any] = {"type": "Feature"}
        object_id = region.properties.get("id")
        feature["id"] = str(object_id) if object_id is not None else str(uuid.uuid4())
        feature["geometry"] = geometry_to_geojson(region.geometry_xy_level0_px)
        feature["properties"] = properties
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def geometry_to_geojson(geometry: Polygon | MultiPolygon, decimals: int = 2) -> dict[str, Any]:
    """A GeoJSON geometry object (lists, not tuples), coordinates rounded like QuPath's."""
    rounded = shapely.transform(geometry, lambda xy: np.round(xy, decimals))
    return json.loads(json.dumps(mapping(rounded)))


def class_colors(regions: Sequence[Region]) -> dict[str, tuple[int, int, int]]:
    """Colour of each class: the region's own, else the next palette colour (stable order)."""
    colors: dict[str, tuple[int, int, int]] = {}
    for region in regions:
        if region.classification is not None and region.color is not None:
            colors.setdefault(region.classification, region.color)
    for region in regions:
        cls = region.classification
        if cls is not None and cls not in colors:
            used = set(colors.values())
            free = [c for c in CLASS_PALETTE if c not in used] or list(CLASS_PALETTE)
            colors[cls] = free[0]
    return colors


# -- membership -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpotAssignment:
    """Which region holds each spot.

    Attributes
    ----------
    region_index
        ``(n_spots,)`` index into the regions of the one region each spot belongs to
        (the smallest containing its centre), or ``-1`` outside every region.
    inside
        ``(n_spots, n_regions)`` whether each region contains each spot's centre.
    """

    region_index: NDArray[np.intp]
    inside: NDArray[np.bool_]

    @property
    def assigned(self) -> NDArray[np.bool_]:
        """``(n_spots,)`` whether a spot lies in some region."""
        return self.region_index >= 0

    def counts(self) -> NDArray[np.intp]:
        """Spots assigned to each region."""
        n = self.inside.shape[1]
        return np.bincount(self.region_index[self.assigned], minlength=n)


def assign_spots(regions: Sequence[Region], xy_level0_px: ArrayLike) -> SpotAssignment:
    """Assign spots to regions by their centres (vectorised point-in-polygon).

    Parameters
    ----------
    regions
        The regions, in level-0 pixels.
    xy_level0_px
        ``(n_spots, 2)`` spot centres, (x, y) level-0 pixels.

    Returns
    -------
    SpotAssignment
        A centre on an edge counts as inside; holes exclude; where regions overlap, the
        smallest containing region wins.
    """
    xy = np.asarray(xy_level0_px, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros((len(xy), len(regions)), dtype=bool)
    for j, region in enumerate(regions):
        geometry = region.geometry_xy_level0_px
        shapely.prepare(geometry)
        inside[:, j] = shapely.intersects_xy(geometry, xy[:, 0], xy[:, 1])
    areas = np.array([r.area_level0_px for r in regions], dtype=np.float64)
    ranked = np.where(inside, areas[None, :], np.inf)
    region_index = np.where(inside.any(axis=1), np.argmin(ranked, axis=1), -1)
    return SpotAssignment(region_index.astype(np.intp), inside)
