"""Heatmaps: one gene's per-spot values drawn as an image that lies exactly over the spots.

Pure NumPy, no Qt: the napari plugin places the image with the ``scale`` and ``translate``
returned here (napari world = micrometres, (row, col); napari puts the *centre* of image
pixel ``(i, j)`` at ``translate + (i, j) * scale``).

Cell geometry (each spot is drawn as one cell; cells of a full lattice tile the plane with
no gaps or overlaps, and every cell is centred exactly on its spot):

- ``st`` and ``dense`` (square lattices, pitch ``p``): one image pixel per lattice index
  ``(row, col)``, a ``p × p`` µm square centred on the spot.
- ``visium`` (hexagonal lattice, pitch ``p``, Space Ranger ``array_row``/``array_col``, where
  ``array_col`` steps by 2 along a row and odd rows are shifted by one): pixels are
  ``p·√3/2`` µm tall (one lattice row) and ``p/2`` µm wide (one ``array_col`` step); spot
  ``(r, c)`` fills the two pixels ``(r, c)`` and ``(r, c + 1)`` (offset by the smallest
  index), a ``p × p·√3/2`` µm rectangle centred on the spot. Neighbouring rows are offset by
  half a cell (a brick pattern), so every cell has the hexagon's area and six neighbours.

Pixels without a spot (off tissue, or not predicted yet) are NaN, which napari draws
transparent. Grids without a lattice (``explicit`` spot coordinates) have no heatmap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.frames import xy_level0_px_to_yx_um

if TYPE_CHECKING:
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.store import PredictionStore

#: Grid kinds whose spots lie on a lattice that can be rasterised.
LATTICE_KINDS = ("visium", "st", "dense")
#: How far (as a share of the pitch) a spot may sit from its lattice position.
LATTICE_TOLERANCE = 0.05


@dataclass(frozen=True, eq=False)
class HeatmapGeometry:
    """Where the spots of one grid fall on a heatmap image.

    Attributes
    ----------
    kind
        Grid kind (``"visium"``, ``"st"`` or ``"dense"``).
    shape
        ``(rows, cols)`` of the image.
    scale_um
        ``(row, col)`` size of one image pixel in µm (napari ``scale``).
    translate_um
        ``(row, col)`` position in µm of the centre of pixel ``(0, 0)`` (napari ``translate``).
    spot_pixels
        ``(n_spots, k, 2)`` the ``k`` image pixels ``(row, col)`` each spot fills (``k = 1``
        on square lattices, ``2`` on the Visium lattice).
    cell_um
        ``(height, width)`` of one spot's cell in µm.
    """

    kind: str
    shape: tuple[int, int]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    spot_pixels: NDArray[np.intp]
    cell_um: tuple[float, float]

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return len(self.spot_pixels)

    def rasterise(
        self, values: ArrayLike, out: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """Draw per-spot values as an image.

        Parameters
        ----------
        values
            ``(n_spots,)`` one value per spot, in grid order (NaN draws nothing).
        out
            An image of :attr:`shape` to draw into (its other pixels are left as they are);
            a new NaN image when omitted.

        Returns
        -------
        numpy.ndarray
            ``(rows, cols)`` float32 image; NaN where there is no spot.
        """
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        if len(v) != self.n_spots:
            raise ParameterError(f"expected one value per spot ({self.n_spots}); got {len(v)}")
        image = np.full(self.shape, np.nan, np.float32) if out is None else out
        for k in range(self.spot_pixels.shape[1]):
            image[self.spot_pixels[:, k, 0], self.spot_pixels[:, k, 1]] = v
        return image

    def rasterise_spots(
        self, image: NDArray[np.float32], spots: slice, values: ArrayLike
    ) -> NDArray[np.float32]:
        """Draw the values of a range of spots into an existing image (in place).

        Parameters
        ----------
        image
            Image of :attr:`shape`, changed in place.
        spots
            The spots (grid order) whose values are given.
        values
            One value per spot of ``spots``.
        """
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        pixels = self.spot_pixels[spots]
        if len(v) != len(pixels):
            raise ParameterError(f"expected {len(pixels)} values; got {len(v)}")
        for k in range(pixels.shape[1]):
            image[pixels[:, k, 0], pixels[:, k, 1]] = v
        return image

    def spot_index_image(self) -> NDArray[np.int64]:
        """``(rows, cols)`` index of the spot drawn in each pixel, -1 where none."""
        index = np.full(self.shape, -1, np.int64)
        spots = np.arange(self.n_spots)
        for k in range(self.spot_pixels.shape[1]):
            index[self.spot_pixels[:, k, 0], self.spot_pixels[:, k, 1]] = spots
        return index

    def pixel_of(self, yx_um: ArrayLike) -> NDArray[np.int64]:
        """``(n, 2)`` image pixel ``(row, col)`` holding each world point ``(row, col)`` µm."""
        yx = np.asarray(yx_um, dtype=np.float64).reshape(-1, 2)
        rel = (yx - np.asarray(self.translate_um)) / np.asarray(self.scale_um)
        return np.floor(rel + 0.5).astype(np.int64)

    def spot_at(self, yx_um: ArrayLike, index_image: NDArray[np.int64] | None = None) -> int:
        """The spot whose cell holds the world point ``(row, col)`` µm, or -1 if none.

        Parameters
        ----------
        yx_um
            One point, napari world (row, col) micrometres.
        index_image
            :meth:`spot_index_image`, when the caller keeps it (saves building it).
        """
        index = self.spot_index_image() if index_image is None else index_image
        row, col = self.pixel_of(yx_um)[0]
        if 0 <= row < self.shape[0] and 0 <= col < self.shape[1]:
            return int(index[row, col])
        return -1


@dataclass(frozen=True)
class Heatmap:
    """A rasterised gene: the image and where it goes in the napari world (µm, (row, col))."""

    image: NDArray[np.float32]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]


def lattice_geometry(
    kind: str,
    lattice_rc: ArrayLike,
    yx_um: ArrayLike,
    pitch_um: float,
    *,
    origin_yx_um: tuple[float, float] | None = None,
) -> HeatmapGeometry:
    """The heatmap geometry of spots on a lattice.

    Parameters
    ----------
    kind
        ``"visium"`` (hexagonal) or ``"st"`` / ``"dense"`` (square).
    lattice_rc
        ``(n, 2)`` lattice indices (row, col) of the spots.
    yx_um
        ``(n, 2)`` spot centres, napari world (row, col) micrometres.
    pitch_um
        Centre-to-centre distance of neighbouring spots.
    origin_yx_um
        Where lattice index (0, 0) lies, (row, col) µm, when known (a grid laid by
        :class:`~napari_virtual_st.grid.SpotGrid`); else the median the spots agree on.

    Raises
    ------
    ParameterError
        If the kind has no lattice, there are no spots, or the spots do not sit on the lattice
        their indices describe.
    """
    if kind not in LATTICE_KINDS:
        raise ParameterError(
            f"a heatmap needs spots on a lattice (visium, st or dense); this grid is {kind!r}"
        )
    rc = np.asarray(lattice_rc, dtype=np.int64).reshape(-1, 2)
    yx = np.asarray(yx_um, dtype=np.float64).reshape(-1, 2)
    if len(rc) == 0 or len(rc) != len(yx):
        raise ParameterError("a heatmap needs at least one spot, with one lattice index each")
    if not (math.isfinite(pitch_um) and pitch_um > 0) or (rc < 0).any():
        raise ParameterError(f"the {kind} grid has no usable lattice indices or pitch")
    hexagonal = kind == "visium"
    step = (
        np.array([pitch_um * math.sqrt(3.0) / 2.0, pitch_um / 2.0])
        if hexagonal
        else np.array([pitch_um, pitch_um])
    )
    # world position of lattice index (0, 0), agreed by all spots (checked below)
    offsets = yx - rc * step
    origin = np.median(offsets, axis=0) if origin_yx_um is None else np.asarray(origin_yx_um)
    if np.abs(offsets - origin).max() > LATTICE_TOLERANCE * pitch_um:
        raise ParameterError(f"the spots do not lie on a {kind} lattice of {pitch_um:g} µm pitch")
    r0, c0 = rc.min(axis=0)
    local = rc - (r0, c0)
    if hexagonal:
        pixels = np.stack([local, local + np.array([0, 1])], axis=1)
        shape = (int(local[:, 0].max()) + 1, int(local[:, 1].max()) + 2)
        # the spot's centre is the boundary between its two pixels
        translate = origin + (r0, c0) * step - (0.0, step[1] / 2.0)
        cell = (float(step[0]), float(pitch_um))
    else:
        pixels = local[:, None, :]
        shape = (int(local[:, 0].max()) + 1, int(local[:, 1].max()) + 1)
        translate = origin + (r0, c0) * step
        cell = (float(pitch_um), float(pitch_um))
    return HeatmapGeometry(
        kind=kind,
        shape=shape,
        scale_um=(float(step[0]), float(step[1])),
        translate_um=(float(translate[0]), float(translate[1])),
        spot_pixels=np.ascontiguousarray(pixels, dtype=np.intp),
        cell_um=cell,
    )


def heatmap_geometry(
    kind: str,
    lattice_rc: ArrayLike,
    xy_level0_px: ArrayLike,
    mpp: float,
    pitch_um: float,
) -> HeatmapGeometry:
    """:func:`lattice_geometry` of spots given in (x, y) level-0 pixels of a slide of ``mpp``."""
    return lattice_geometry(kind, lattice_rc, xy_level0_px_to_yx_um(xy_level0_px, mpp), pitch_um)


def grid_geometry(grid: SpotGrid) -> HeatmapGeometry:
    """The heatmap geometry of a grid: its kind, pitch and (when it knows it) lattice origin.

    Raises
    ------
    ParameterError
        If the grid has no lattice (explicit spot coordinates).
    """
    return lattice_geometry(
        grid.kind,
        grid.lattice_rc,
        xy_level0_px_to_yx_um(grid.xy_level0_px, grid.mpp),
        grid.pitch_um,
        origin_yx_um=grid.lattice_origin_yx_um,
    )


def geometry_from_store(store: PredictionStore) -> HeatmapGeometry:
    """The heatmap geometry of a prediction store's grid (:func:`grid_geometry`).

    Raises
    ------
    ParameterError
        If the store's grid has no lattice (explicit spot coordinates).
    """
    return grid_geometry(store.grid)


def rasterise_gene(
    store: PredictionStore, gene: str, *, geometry: HeatmapGeometry | None = None
) -> Heatmap:
    """One gene of a prediction store as a heatmap image placed in µm.

    Parameters
    ----------
    store
        The predictions.
    gene
        A gene the model predicts.
    geometry
        The store's :func:`geometry_from_store`, when the caller keeps it.
    """
    geometry = geometry_from_store(store) if geometry is None else geometry
    image = geometry.rasterise(store.gene_values(gene))
    return Heatmap(image, geometry.scale_um, geometry.translate_um)


def robust_limits(
    values: ArrayLike, percentiles: Sequence[float] = (1.0, 99.0)
) -> tuple[float, float]:
    """Display limits of values: their 1st–99th percentiles (ignoring NaN), never empty.

    Returns ``(0, 1)`` when no value is finite, and widens a constant range so that
    ``low < high``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, percentiles))
    if hi <= lo:
        pad = max(abs(lo) * 0.01, 1e-6)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def most_variable_gene(genes: Sequence[str], expression: ArrayLike) -> str:
    """The gene whose predicted values vary most across the spots: the one shown first.

    Only spots predicted for every gene count (a run in progress has NaN rows); with none,
    the first gene.

    Parameters
    ----------
    genes
        Gene names, one per column.
    expression
        ``(n_spots, G)`` values, NaN where not predicted.

    Raises
    ------
    ParameterError
        If there are no genes, or not one column per gene.
    """
    values = np.asarray(expression, dtype=np.float64)
    if not genes or values.ndim != 2 or values.shape[1] != len(genes):
        raise ParameterError(f"expected one column per gene ({len(genes)}); got {values.shape}")
    done = np.isfinite(values).all(axis=1)
    if not done.any():
        return genes[0]
    return genes[int(np.argmax(values[done].var(axis=0)))]
