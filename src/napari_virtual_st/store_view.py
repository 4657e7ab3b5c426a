"""``StoreView``: what the viewer shows of one prediction store, held in memory.

A finished store is read once when it is opened; during a run the view starts from the
store's state when the run began and takes each batch's values as it lands, so the GUI
never re-reads the store. No Qt and no napari here: views are built in worker threads and
handed to the GUI thread, which alone changes them afterwards.

A model with spot context (:mod:`napari_virtual_st.context`): the view keeps the per-tile
values (what a run's batches carry and the store holds) beside the contextual ones it shows.
When a batch lands, only the spots within the kernel's radius of it are recomputed
(:func:`~napari_virtual_st.context.spots_near`), with the neighbours known so far; once every
spot is in, the view holds exactly what :meth:`PredictionStore.expression` reads.

:class:`StoreViews` keeps one view per store for one viewer (the plugin gives each napari
viewer its own, :func:`napari_virtual_st._napari.views.views_of`): there is no process-wide
registry, so two viewers never share a prediction's values.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st.context import (
    SpotContext,
    apply_context,
    describe_values,
    spot_weights,
    spots_near,
)
from napari_virtual_st.errors import ParameterError
from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.heatmap import HeatmapGeometry, most_variable_gene, robust_limits
from napari_virtual_st.slide import locate_slide
from napari_virtual_st.store import ModelRecord, PredictionStore, SlideRecord, spot_names


class StoreView:
    """Genes, spot positions (µm), values and heatmap geometry of one prediction store.

    Parameters
    ----------
    path
        The ``.vst.zarr`` folder.
    attrs
        The store's attributes (genes, slide, model; kept as read).
    grid
        The store's spots (:attr:`PredictionStore.grid`).
    spot_ids
        One name per spot.
    expression, variance
        ``(n, G)`` *per-tile* values so far (NaN where not predicted), as the store holds
        them; variance ``None`` when the model gives none.

    Attributes
    ----------
    expression, variance
        The values shown: contextual when the model declares a spot context, else the
        per-tile values themselves (the same arrays).
    tile_expression, tile_variance
        The per-tile values (what :meth:`update` takes).
    context
        The model's spot context, ``None`` for per-tile values.
    """

    def __init__(
        self,
        path: str | Path,
        attrs: dict[str, Any],
        grid: SpotGrid,
        spot_ids: Sequence[str],
        expression: NDArray[np.float32],
        variance: NDArray[np.float32] | None,
    ) -> None:
        self.path = Path(path)
        self.attrs = attrs
        self.genes: tuple[str, ...] = tuple(attrs["genes"])
        self.grid = grid
        self.model = ModelRecord.from_attrs(attrs.get("model"))
        self.slide = SlideRecord.from_attrs(attrs.get("slide"))
        self.kind: str = grid.kind
        self.mpp = grid.mpp
        self.spot_diameter_um = grid.spot_diameter_um
        self.pitch_um = grid.pitch_um
        self.xy_level0_px = grid.xy_level0_px
        self.lattice_rc = grid.lattice_rc.astype(np.int64)
        #: spot centres in the napari world frame, (row, col) µm
        self.yx_um = xy_level0_px_to_yx_um(self.xy_level0_px, self.mpp)
        self.spot_ids = list(spot_ids)
        self.tile_expression = np.asarray(expression, dtype=np.float32)
        self.tile_variance = None if variance is None else np.asarray(variance, np.float32)
        self.context: SpotContext | None = self.model.context
        # built here (in the worker thread that makes the view), not in the GUI's first update
        self._weights = (
            None
            if self.context is None
            else spot_weights(self.xy_level0_px, self.mpp, self.context)
        )
        self.expression = self._contextual(self.tile_expression)
        self.variance = (
            None if self.tile_variance is None else self._contextual(self.tile_variance)
        )
        self._gene_index = {g: i for i, g in enumerate(self.genes)}
        try:
            self.geometry: HeatmapGeometry | None = grid.heatmap_geometry()
        except ParameterError:
            self.geometry = None  # explicit spot coordinates: spots only, no heatmap
        self._index_image: NDArray[np.int64] | None = None

    # -- construction -----------------------------------------------------------------------
    def _contextual(self, tile: NDArray[np.float32]) -> NDArray[np.float32]:
        """The values shown for per-tile values ``tile`` (``tile`` itself without context)."""
        if self._weights is None:
            return tile
        return apply_context(tile, self._weights)

    @classmethod
    def from_store(cls, store: PredictionStore) -> StoreView:
        """Read everything the viewer needs from an open store.

        Values are read only when some spot is done (a new store is all NaN); the per-tile
        values of the done spots, from which the view computes what it shows.
        """
        n, g = store.n_spots, len(store.genes)
        done = store.done
        started = bool(done.any())
        empty = np.full((n, g), np.nan, np.float32)
        expression = store.expression(per_tile=True) if started else empty
        variance = None
        if store.has_variance:
            variance = store.variance(per_tile=True) if started else empty.copy()
        if store.is_contextual and started and not done.all():  # as the store reads them
            for values in (expression, variance):
                if values is not None:
                    values[~done] = np.nan
        return cls(
            store.path,
            dict(store.attrs),
            store.grid,
            store.spot_ids,
            expression,
            variance,
        )

    @classmethod
    def of_grid(
        cls,
        path: str | Path,
        grid: SpotGrid,
        *,
        genes: Sequence[str],
        model: Mapping[str, Any],
        slide: Mapping[str, Any],
        expression: NDArray[np.float32],
        variance: NDArray[np.float32] | None = None,
        preview: bool = False,
    ) -> StoreView:
        """A view of spots that are not (yet) in a store, e.g. a run's preview.

        It has the attributes a store of ``grid`` would have (genes, grid, model, slide)
        and the same spot names.
        """
        attrs: dict[str, Any] = {
            "genes": list(genes),
            "grid": grid.describe(),
            "model": dict(model),
            "slide": dict(slide),
        }
        if preview:
            attrs["preview"] = True
        ids = spot_names(grid.spot_ids, grid.lattice_rc)
        return cls(path, attrs, grid, ids, expression, variance)

    @classmethod
    def open(cls, path: str | Path) -> StoreView:
        """Open a store read-only and read it (see :meth:`from_store`)."""
        return cls.from_store(PredictionStore.open(path))

    # -- description ------------------------------------------------------------------------
    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return len(self.xy_level0_px)

    @property
    def has_variance(self) -> bool:
        """Whether the model gave a variance per value."""
        return self.variance is not None

    @property
    def spots_done(self) -> int:
        """Spots whose values are known."""
        return int(np.isfinite(self.expression[:, 0]).sum()) if self.genes else 0

    @property
    def name(self) -> str:
        """Short display name: the store folder without ``.vst.zarr``."""
        name = self.path.name
        return name[: -len(".vst.zarr")] if name.endswith(".vst.zarr") else self.path.stem

    @property
    def model_name(self) -> str:
        """The model's display name."""
        return self.model.display_name

    @property
    def is_contextual(self) -> bool:
        """Whether the values shown are contextual (the model declares a spot context)."""
        return self.context is not None

    @property
    def values_description(self) -> str:
        """``per-tile`` or ``contextual (Gaussian context, σ … µm within … µm)``."""
        return describe_values(self.context)

    @property
    def target(self) -> str:
        """What a value means (e.g. ``log1p_cp10k``)."""
        return self.model.target or ""

    @property
    def slide_path(self) -> Path | None:
        """The slide the predictions were made on: where the store recorded it, else a file of
        its name beside the store (either only if its fingerprint matches); ``None`` when
        neither is that slide."""
        record = self.slide
        return locate_slide(record.name, record.path, record.fingerprint, near=(self.path.parent,))

    def gene_column(self, gene: str) -> int:
        """Column of ``gene``; raises naming an unknown gene."""
        try:
            return self._gene_index[gene]
        except KeyError:
            raise ParameterError(f"gene {gene!r} is not predicted by this model") from None

    # -- values -----------------------------------------------------------------------------
    def values(self, gene: str) -> NDArray[np.float32]:
        """``(n_spots,)`` predicted values of ``gene`` (NaN where not predicted yet)."""
        return self.expression[:, self.gene_column(gene)]

    def sd(self, gene: str) -> NDArray[np.float32] | None:
        """``(n_spots,)`` predicted standard deviation of ``gene``, or ``None``."""
        if self.variance is None:
            return None
        var = self.variance[:, self.gene_column(gene)]
        return np.sqrt(np.maximum(var, 0.0))

    def update(
        self,
        spots: slice,
        expression: NDArray[np.float32],
        variance: NDArray[np.float32] | None = None,
    ) -> None:
        """Take the per-tile values of a range of spots (one finished batch).

        With a spot context, the shown values of these spots and of their neighbours within
        the kernel's radius are recomputed from what is known so far.
        """
        self.tile_expression[spots] = expression
        if self.tile_variance is not None and variance is not None:
            self.tile_variance[spots] = variance
        if self._weights is None:
            return
        rows = spots_near(self._weights, spots)
        self.expression[rows] = apply_context(self.tile_expression, self._weights, rows)
        if self.variance is not None and self.tile_variance is not None:
            self.variance[rows] = apply_context(self.tile_variance, self._weights, rows)

    def has_finished_spots_of(self, other: StoreView) -> bool:
        """Whether this view has finished exactly the spots ``other`` has (``other`` being the
        same store read again). A run's batches carry the very values its store keeps, and a
        finished spot's values are all finite (a run refuses others), so a view that took a
        run's batches holds its store's values then, and taking them again changes nothing.
        """
        mine, theirs = self.tile_expression, other.tile_expression
        if mine.shape != theirs.shape:
            return False
        if mine.shape[1] == 0:
            return True
        return bool(np.array_equal(np.isnan(mine[:, 0]), np.isnan(theirs[:, 0])))

    def limits(self, gene: str, *, uncertainty: bool = False) -> tuple[float, float]:
        """Display limits (1st–99th percentile) of a gene's values or standard deviations."""
        values = self.sd(gene) if uncertainty else self.values(gene)
        return robust_limits(values if values is not None else [])

    def most_variable_gene(self) -> str:
        """The gene whose predicted values vary most across spots (the first if none do)."""
        return most_variable_gene(self.genes, self.expression)

    # -- pictures ---------------------------------------------------------------------------
    def heatmap(self, gene: str, *, uncertainty: bool = False) -> NDArray[np.float32]:
        """The gene's values (or SDs) rasterised on the lattice (see :mod:`..heatmap`)."""
        if self.geometry is None:
            raise ParameterError(
                f"{self.path.name}: spots given by coordinates have no heatmap; use the spots layer"
            )
        values = self.sd(gene) if uncertainty else self.values(gene)
        if values is None:
            raise ParameterError("this model gives no uncertainty (variance)")
        return self.geometry.rasterise(values)

    def spot_at(self, yx_um: ArrayLike) -> int:
        """The spot under a world point (row, col) µm: its heatmap cell, else its spot circle.

        Returns -1 when there is none.
        """
        point = np.asarray(yx_um, dtype=np.float64).reshape(-1)[-2:]
        if self.geometry is not None:
            if self._index_image is None:
                self._index_image = self.geometry.spot_index_image()
            return self.geometry.spot_at(point, self._index_image)
        if self.n_spots == 0:
            return -1
        dist = np.hypot(*(self.yx_um - point).T)
        nearest = int(np.argmin(dist))
        return nearest if dist[nearest] <= self.spot_diameter_um / 2 else -1

    def features(self) -> pd.DataFrame:
        """A table with one row per spot: its id and every gene's predicted value."""
        table = pd.DataFrame(self.expression, columns=list(self.genes), copy=False)
        table.insert(0, "spot", self.spot_ids)
        return table


class StoreViews:
    """The views of the stores one viewer shows, by resolved path (GUI thread only).

    One registry belongs to one viewer (the plugin makes it on first use and drops it with
    the viewer, see :func:`napari_virtual_st._napari.views.views_of`), so two viewers in one
    process never see each other's predictions: a run or a store opened in one registers its
    view there only.
    """

    def __init__(self) -> None:
        self._views: dict[str, StoreView] = {}
        self._listeners: list[weakref.WeakMethod[Callable[[StoreView], None]]] = []

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str | Path) and _key(path) in self._views

    def register(self, view: StoreView) -> StoreView:
        """Make ``view`` the one shown for its store (replacing an older one) and tell the
        listeners (e.g. an open Gene browser)."""
        self._views[_key(view.path)] = view
        for ref in list(self._listeners):
            callback = ref()
            if callback is None:
                self._listeners.remove(ref)
            else:
                callback(view)
        return view

    def on_register(self, callback: Callable[[StoreView], None]) -> None:
        """Call the bound method ``callback`` with every view registered from now on (held
        weakly: it stops when its object goes away)."""
        self._listeners.append(weakref.WeakMethod(callback))

    def lookup(self, path: str | Path) -> StoreView | None:
        """The registered view of a store, or ``None`` (never reads the disk)."""
        return self._views.get(_key(path))

    def get(self, path: str | Path) -> StoreView:
        """The registered view of a store, reading the store if it has none yet."""
        view = self.lookup(path)
        if view is None:
            view = self.register(StoreView.open(path))
        return view

    def forget(self, path: str | Path) -> None:
        """Drop the registered view of a store (e.g. before it is overwritten)."""
        self._views.pop(_key(path), None)


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())
