"""``SpotGrid``: where the spots (or tiles) are on a slide.

Kinds of grid:

- ``visium``: hexagonal lattice, 55 µm spots, 100 µm between neighbouring centres. Lattice
  indices follow Space Ranger's ``array_row`` / ``array_col`` convention: rows are
  100·√3/2 µm apart and ``array_col`` steps by 2 along a row, odd rows shifted by one.
- ``st``: legacy Spatial Transcriptomics square lattice, 100 µm spots, 200 µm pitch.
- ``dense``: square tiles covering the tissue, pitch = tile size minus the overlap.
- ``explicit``: centres given by the caller (e.g. the measured spots of a Visium run).

Lattice spots (``visium``, ``st``) lie wholly on the slide; dense tiles cover all of it, the
last ones overhanging its right and bottom edges where the tile size does not divide it.
All centres are level-0 pixels, (x, y) order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.tissue import TissueMask

if TYPE_CHECKING:
    from napari_virtual_st.heatmap import HeatmapGeometry

GridKind = Literal["visium", "st", "dense", "explicit"]
SpotMatch = Literal["id", "nearest"]

VISIUM_SPOT_UM = 55.0
VISIUM_PITCH_UM = 100.0
ST_SPOT_UM = 100.0
ST_PITCH_UM = 200.0


@dataclass(frozen=True, eq=False)
class SpotGrid:
    """Spot centres on a slide, with their lattice indices.

    Attributes
    ----------
    kind
        ``"visium"``, ``"st"``, ``"dense"`` or ``"explicit"``.
    xy_level0_px
        ``(n, 2)`` float64 spot centres, (x, y) level-0 pixels.
    lattice_rc
        ``(n, 2)`` int32 lattice indices (row, col); for ``visium`` these are Space Ranger's
        ``array_row``/``array_col``.
    spot_diameter_um
        Diameter (or tile side, for ``dense``) of a spot in µm.
    pitch_um
        Centre-to-centre distance of neighbouring spots in µm (0 for ``explicit``).
    mpp
        µm per level-0 pixel of the slide the grid was laid on.
    spot_ids
        Optional names of the spots (barcodes for measured data); default ``"r_c"``.
    """

    kind: GridKind
    xy_level0_px: NDArray[np.float64]
    lattice_rc: NDArray[np.int32]
    spot_diameter_um: float
    pitch_um: float
    mpp: float
    spot_ids: tuple[str, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        xy = np.ascontiguousarray(self.xy_level0_px, dtype=np.float64).reshape(-1, 2)
        rc = np.ascontiguousarray(self.lattice_rc, dtype=np.int32).reshape(-1, 2)
        if len(xy) != len(rc):
            raise ParameterError("a grid needs one lattice index per spot")
        if self.spot_ids is not None and len(self.spot_ids) != len(xy):
            raise ParameterError("a grid needs one id per spot")
        object.__setattr__(self, "xy_level0_px", xy)
        object.__setattr__(self, "lattice_rc", rc)

    def __len__(self) -> int:
        return len(self.xy_level0_px)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def visium(
        cls,
        slide_dimensions: tuple[int, int],
        mpp: float,
        *,
        origin_um: tuple[float, float] = (0.0, 0.0),
    ) -> SpotGrid:
        """Hexagonal Visium lattice (55 µm spots, 100 µm pitch) over the whole slide.

        Every spot lies wholly on the slide.

        Parameters
        ----------
        slide_dimensions
            (width, height) of level 0 in pixels.
        mpp
            µm per level-0 pixel.
        origin_um
            (x, y) offset of the first spot centre from the half-pitch margin, in µm.
        """
        return cls.hexagonal(
            slide_dimensions,
            mpp,
            VISIUM_SPOT_UM,
            VISIUM_PITCH_UM,
            origin_um=origin_um,
            kind="visium",
        )

    @classmethod
    def hexagonal(
        cls,
        slide_dimensions: tuple[int, int],
        mpp: float,
        spot_diameter_um: float,
        pitch_um: float,
        *,
        origin_um: tuple[float, float] = (0.0, 0.0),
        kind: GridKind = "visium",
    ) -> SpotGrid:
        """A hexagonal lattice with any spot size and pitch (see :meth:`visium`)."""
        _check_geometry(mpp, spot_diameter_um, pitch_um)
        width_um, height_um = slide_dimensions[0] * mpp, slide_dimensions[1] * mpp
        row_step = pitch_um * np.sqrt(3.0) / 2.0
        x_first = pitch_um / 2 + origin_um[0]
        y_first = pitch_um / 2 + origin_um[1]
        radius = spot_diameter_um / 2
        n_rows = _count_within(height_um - y_first - radius, row_step)
        xs: list[NDArray[np.floating[Any]]] = []
        ys: list[NDArray[np.floating[Any]]] = []
        rows: list[NDArray[np.integer[Any]]] = []
        cols: list[NDArray[np.integer[Any]]] = []
        for r in range(n_rows):
            shift = pitch_um / 2 if r % 2 else 0.0
            n_cols = _count_within(width_um - x_first - shift - radius, pitch_um)
            i = np.arange(n_cols)
            xs.append(x_first + shift + i * pitch_um)
            ys.append(np.full(n_cols, y_first + r * row_step))
            rows.append(np.full(n_cols, r))
            cols.append(2 * i + (r % 2))
        no_float, no_int = np.empty(0, np.float64), np.empty(0, np.int32)  # a grid of no spots
        xy_um = np.stack(
            [np.concatenate(xs or [no_float]), np.concatenate(ys or [no_float])], axis=1
        )
        rc = np.stack([np.concatenate(rows or [no_int]), np.concatenate(cols or [no_int])], axis=1)
        return cls(
            kind=kind,
            xy_level0_px=xy_um / mpp,
            lattice_rc=rc.astype(np.int32),
            spot_diameter_um=spot_diameter_um,
            pitch_um=pitch_um,
            mpp=mpp,
            params={"origin_um": list(origin_um)},
        )

    @classmethod
    def legacy_st(
        cls,
        slide_dimensions: tuple[int, int],
        mpp: float,
        *,
        origin_um: tuple[float, float] = (0.0, 0.0),
    ) -> SpotGrid:
        """Square legacy-ST lattice (100 µm spots, 200 µm pitch), every spot on the slide."""
        return cls.square(
            slide_dimensions, mpp, ST_SPOT_UM, ST_PITCH_UM, origin_um=origin_um, kind="st"
        )

    @classmethod
    def dense(
        cls,
        slide_dimensions: tuple[int, int],
        mpp: float,
        tile_um: float,
        *,
        overlap_um: float = 0.0,
    ) -> SpotGrid:
        """Square tiles of ``tile_um`` side covering the slide, ``overlap_um`` shared by neighbours."""
        _check_geometry(mpp, tile_um, tile_um)
        if not 0 <= overlap_um < tile_um:
            raise ParameterError(
                f"tile overlap must be at least 0 and less than the tile size ({tile_um} µm); got {overlap_um}"
            )
        grid = cls.square(
            slide_dimensions,
            mpp,
            tile_um,
            tile_um - overlap_um,
            kind="dense",
            first_um=tile_um / 2,
            cover_slide=True,
        )
        grid.params["overlap_um"] = overlap_um
        return grid

    @classmethod
    def square(
        cls,
        slide_dimensions: tuple[int, int],
        mpp: float,
        spot_diameter_um: float,
        pitch_um: float,
        *,
        origin_um: tuple[float, float] = (0.0, 0.0),
        kind: GridKind = "st",
        first_um: float | None = None,
        cover_slide: bool = False,
    ) -> SpotGrid:
        """A square lattice with any spot size and pitch.

        Parameters
        ----------
        slide_dimensions
            (width, height) of level 0 in pixels.
        mpp
            µm per level-0 pixel.
        spot_diameter_um, pitch_um
            Spot diameter (tile side) and centre-to-centre distance in µm.
        origin_um
            (x, y) offset of the first spot centre in µm.
        kind
            Grid kind recorded on the result.
        first_um
            Distance of the first centre from the slide's top-left edge (default half a pitch).
        cover_slide
            ``False``: every spot lies wholly on the slide. ``True``: the fewest spots whose
            squares together reach the slide's right and bottom edges (the last ones may
            overhang them), so no strip of the slide is left out (dense tiles).
        """
        _check_geometry(mpp, spot_diameter_um, pitch_um)
        width_um, height_um = slide_dimensions[0] * mpp, slide_dimensions[1] * mpp
        first = pitch_um / 2 if first_um is None else first_um
        x_first, y_first = first + origin_um[0], first + origin_um[1]
        if cover_slide:
            half = spot_diameter_um / 2
            n_cols = _count_to_cover(width_um - x_first - half, pitch_um)
            n_rows = _count_to_cover(height_um - y_first - half, pitch_um)
        else:
            radius = spot_diameter_um / 2
            n_cols = _count_within(width_um - x_first - radius, pitch_um)
            n_rows = _count_within(height_um - y_first - radius, pitch_um)
        rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        rc = np.stack([rr.ravel(), cc.ravel()], axis=1)
        xy_um = np.stack([x_first + rc[:, 1] * pitch_um, y_first + rc[:, 0] * pitch_um], axis=1)
        return cls(
            kind=kind,
            xy_level0_px=xy_um.astype(np.float64) / mpp,
            lattice_rc=rc.astype(np.int32),
            spot_diameter_um=spot_diameter_um,
            pitch_um=pitch_um,
            mpp=mpp,
            params={"origin_um": list(origin_um)},
        )

    @classmethod
    def from_coordinates(
        cls,
        xy_level0_px: ArrayLike,
        mpp: float,
        spot_diameter_um: float,
        *,
        lattice_rc: ArrayLike | None = None,
        spot_ids: list[str] | tuple[str, ...] | None = None,
    ) -> SpotGrid:
        """A grid of explicit spot centres (e.g. measured Visium spots in level-0 px)."""
        xy = np.asarray(xy_level0_px, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            raise ParameterError("spot coordinates must be finite numbers")
        _check_geometry(mpp, spot_diameter_um, spot_diameter_um)
        rc = np.full((len(xy), 2), -1, np.int32) if lattice_rc is None else np.asarray(lattice_rc)
        return cls(
            kind="explicit",
            xy_level0_px=xy,
            lattice_rc=rc,
            spot_diameter_um=spot_diameter_um,
            pitch_um=0.0,
            mpp=mpp,
            spot_ids=None if spot_ids is None else tuple(str(s) for s in spot_ids),
        )

    # -- filtering --------------------------------------------------------------------------
    def subset(self, keep: ArrayLike) -> SpotGrid:
        """The grid restricted to a boolean mask or index array over its spots."""
        keep = np.asarray(keep)
        ids = (
            None if self.spot_ids is None else tuple(np.asarray(self.spot_ids, dtype=object)[keep])
        )
        return SpotGrid(
            kind=self.kind,
            xy_level0_px=self.xy_level0_px[keep],
            lattice_rc=self.lattice_rc[keep],
            spot_diameter_um=self.spot_diameter_um,
            pitch_um=self.pitch_um,
            mpp=self.mpp,
            spot_ids=ids,
            params=dict(self.params),
        )

    def tissue_fractions(self, tissue: TissueMask) -> NDArray[np.float64]:
        """Fraction of each spot's footprint (square of the spot diameter) that is tissue."""
        return tissue.fraction_in_squares(self.xy_level0_px, self.spot_diameter_um / self.mpp)

    def filter_tissue(self, tissue: TissueMask, min_fraction: float = 0.5) -> SpotGrid:
        """Drop spots with less than ``min_fraction`` of tissue under them."""
        if not 0.0 <= min_fraction <= 1.0:
            raise ParameterError(
                f"tissue fraction threshold must be between 0 and 1; got {min_fraction}"
            )
        grid = self.subset(self.tissue_fractions(tissue) >= min_fraction)
        grid.params["min_tissue_fraction"] = float(min_fraction)
        return grid

    @classmethod
    def from_description(
        cls,
        description: Mapping[str, Any],
        xy_level0_px: ArrayLike,
        lattice_rc: ArrayLike,
        spot_ids: Sequence[str] | None = None,
    ) -> SpotGrid:
        """The grid that :meth:`describe` described, given its spots again.

        A prediction store keeps the description in its attributes and the coordinates in
        arrays; this puts them back together. Keys a description lacks (older stores) take
        their defaults: no pitch, no parameters.

        Parameters
        ----------
        description
            A grid's :meth:`describe` (at least ``kind``, ``spot_diameter_um`` and ``mpp``).
        xy_level0_px, lattice_rc
            ``(n, 2)`` spot centres (x, y level-0 px) and lattice indices (row, col).
        spot_ids
            The spots' names, when they have some.

        Raises
        ------
        ParameterError
            If the description lacks the kind, the spot diameter or the µm/px.
        """
        missing = [k for k in ("kind", "spot_diameter_um", "mpp") if k not in description]
        if missing:
            raise ParameterError(f"the grid description lacks {missing[0]!r}")
        # numbers as described (an int stays an int: the fingerprint hashes their JSON)
        diameter, pitch, mpp = (
            _described_number(description, key) for key in ("spot_diameter_um", "pitch_um", "mpp")
        )
        return cls(
            kind=description["kind"],
            xy_level0_px=np.asarray(xy_level0_px),
            lattice_rc=np.asarray(lattice_rc),
            spot_diameter_um=diameter,
            pitch_um=pitch,
            mpp=mpp,
            spot_ids=None if spot_ids is None else tuple(str(s) for s in spot_ids),
            params=dict(description.get("params") or {}),
        )

    # -- geometry ---------------------------------------------------------------------------
    @property
    def spot_radius_um(self) -> float:
        """Half the spot diameter (tile side), µm."""
        return self.spot_diameter_um / 2

    @property
    def spot_radius_px(self) -> float:
        """Half the spot diameter (tile side), level-0 px."""
        return self.spot_radius_um / self.mpp

    @property
    def match_distance_px(self) -> float:
        """The largest centre distance (level-0 px) at which a spot of another set (measured
        data) counts as one of these: half the pitch, or one spot diameter for a grid without
        a pitch (explicit centres)."""
        size_um = self.pitch_um / 2 if self.pitch_um else self.spot_diameter_um
        return float(size_um / self.mpp)

    @property
    def lattice_origin_yx_um(self) -> tuple[float, float] | None:
        """Where lattice index (0, 0) lies, napari world (row, col) µm, when the grid was laid
        by this module (``visium``, ``st``, ``dense`` with a recorded origin); else ``None``.

        Lattice ``(r, c)`` then lies at this origin plus ``r`` rows and ``c`` columns steps
        (see :mod:`napari_virtual_st.heatmap`).
        """
        origin = self.params.get("origin_um")
        if self.kind not in ("visium", "st", "dense") or not self.pitch_um or origin is None:
            return None
        first = self.spot_diameter_um / 2 if self.kind == "dense" else self.pitch_um / 2
        return (first + float(origin[1]), first + float(origin[0]))

    def heatmap_geometry(self) -> HeatmapGeometry:
        """Where these spots fall on a heatmap image (:func:`~napari_virtual_st.heatmap.grid_geometry`).

        Raises
        ------
        ParameterError
            If the grid has no lattice (explicit spot coordinates).
        """
        from napari_virtual_st.heatmap import grid_geometry

        return grid_geometry(self)

    # -- identity ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-friendly parameters (for provenance), without the coordinates."""
        return {
            "kind": self.kind,
            "n_spots": len(self),
            "spot_diameter_um": self.spot_diameter_um,
            "pitch_um": self.pitch_um,
            "mpp": self.mpp,
            "params": self.params,
            "fingerprint": self.fingerprint,
        }

    @property
    def fingerprint(self) -> str:
        """Hash of the spot centres, lattice indices and ids."""
        digest = hashlib.sha256()
        digest.update(np.round(self.xy_level0_px, 6).tobytes())
        digest.update(self.lattice_rc.tobytes())
        digest.update(json.dumps([self.kind, self.spot_diameter_um, self.pitch_um]).encode())
        if self.spot_ids is not None:
            digest.update("\n".join(self.spot_ids).encode())
        return digest.hexdigest()[:32]


# -- matching spots of two sets (a prediction and measured data) -----------------------------
def match_distance_px(grid: SpotGrid | Mapping[str, Any]) -> float:
    """The largest centre distance (level-0 px) at which two spots count as one by default:
    :attr:`SpotGrid.match_distance_px`.

    Parameters
    ----------
    grid
        A grid, or its :meth:`SpotGrid.describe`.
    """
    if isinstance(grid, SpotGrid):
        return grid.match_distance_px
    size_um = grid["pitch_um"] / 2 if grid.get("pitch_um") else grid["spot_diameter_um"]
    return float(size_um / grid["mpp"])


def match_spots(
    xy_level0_px: ArrayLike,
    other_xy_level0_px: ArrayLike,
    max_distance_px: float,
    *,
    spot_ids: Sequence[str] | None = None,
    other_ids: Sequence[str] | None = None,
) -> tuple[NDArray[np.intp], SpotMatch]:
    """For each spot, the index of the same spot among ``other`` spots (``-1``: none).

    Spots are joined by id when both sides have ids and at least one is shared (a prediction
    made at the measured spots carries their barcodes); otherwise each spot is joined to the
    nearest other centre closer than ``max_distance_px`` (several spots may share one).

    It lives here beside :class:`SpotGrid`, not in :mod:`napari_virtual_st.frames`: it decides
    which spots are the same spot (by identity first, by centre within a bound taken from the
    grid's pitch, :attr:`SpotGrid.match_distance_px`), where frames only converts coordinates. Both
    sides must already be in one frame, level-0 (x, y) px.

    Parameters
    ----------
    xy_level0_px, other_xy_level0_px
        ``(n, 2)`` and ``(m, 2)`` spot centres, level-0 (x, y) px (measured ones through their
        alignment, :meth:`~napari_virtual_st.frames.Transform.apply`).
    max_distance_px
        Largest centre distance (level-0 px) for the nearest-centre join.
    spot_ids, other_ids
        The spots' ids (``n`` and ``m`` of them), when they have some.

    Returns
    -------
    rows, how
        ``(n,)`` indices into the other spots, ``-1`` where unmatched, and ``"id"`` or
        ``"nearest"``: how they were joined.
    """
    xy = np.asarray(xy_level0_px, np.float64).reshape(-1, 2)
    rows = np.full(len(xy), -1, np.intp)
    if spot_ids is not None and len(spot_ids) > 0 and other_ids is not None:
        if len(spot_ids) != len(xy):
            raise ParameterError(f"{len(spot_ids)} spot ids were given for {len(xy)} spots")
        lookup = {s: i for i, s in enumerate(other_ids)}
        if any(s in lookup for s in spot_ids):
            rows[:] = [lookup.get(s, -1) for s in spot_ids]
            return rows, "id"
    other = np.asarray(other_xy_level0_px, np.float64).reshape(-1, 2)
    distance, nearest = cKDTree(other).query(xy, distance_upper_bound=max_distance_px)
    found = np.isfinite(distance)
    rows[found] = nearest[found]
    return rows, "nearest"


def _described_number(description: Mapping[str, Any], key: str) -> float:
    """A number of a grid description (0 when absent or null), refused when not a number."""
    value = description.get(key)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"the grid description's {key} is not a number: {value!r}")
    return value


def _count_within(room_um: float, pitch_um: float) -> int:
    """Spots that fit when the first leaves ``room_um`` before the edge: 0 if it does not fit."""
    if room_um < -1e-9:
        return 0
    return math.floor(room_um / pitch_um + 1e-9) + 1


def _count_to_cover(remaining_um: float, pitch_um: float) -> int:
    """Spots needed so that the first plus ``pitch_um`` steps reach ``remaining_um`` further."""
    return max(math.ceil(remaining_um / pitch_um - 1e-9), 0) + 1


def _check_geometry(mpp: float, spot_diameter_um: float, pitch_um: float) -> None:
    for name, value in (
        ("µm/px", mpp),
        ("spot diameter (µm)", spot_diameter_um),
        ("pitch (µm)", pitch_um),
    ):
        if not (np.isfinite(value) and value > 0):
            raise ParameterError(f"{name} must be a positive number; got {value}")
