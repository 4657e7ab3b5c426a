"""Spot context: a spot's value from its own tile and its neighbours' (the fixed-kernel case).

Expression is spatially smooth over several spots, so a per-tile model leaves signal on the
table (TRIPLEX, mclSTExp and DKAN's spatial priors all use more than one tile). The simplest
contextual model is a fixed kernel: a spot's value is the Gaussian-weighted mean of the
per-tile values of the spots within ``radius_um`` of it, itself included::

    value_i = sum_j w_ij * tile_j / sum_j w_ij,   w_ij = exp(-d_ij^2 / (2 sigma_um^2)),  d_ij <= radius_um

A model declares it in its metadata (``vst.context``, JSON ``{"kind": "gaussian", "sigma_um":
..., "radius_um": ...}``); without that key values are per-tile, as before.

Edges and gaps: the weights are renormalised over the neighbours that *have* a value, so a
spot at the tissue edge (fewer neighbours) or one whose neighbours are not predicted yet (a
progressive run) is the mean of what is there; a spot with no neighbour within the radius
keeps its own per-tile value. Spots without a per-tile value stay NaN.

This module is pure NumPy/SciPy: the engine, the store, the evaluation in ``models/`` and the
viewer all call the same two functions, so a value is computed the same way everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.spatial import cKDTree

from napari_virtual_st.errors import ModelError

CONTEXT_KINDS = ("gaussian",)
#: A kernel wider than this (µm) is not "context" but a slide-wide average.
MAX_RADIUS_UM = 5000.0


@dataclass(frozen=True)
class SpotContext:
    """A fixed neighbourhood kernel, as a model's metadata declares it.

    Parameters
    ----------
    sigma_um
        Standard deviation of the Gaussian weight, in micrometres.
    radius_um
        Neighbours farther than this (centre to centre, µm) get no weight.
    kind
        ``"gaussian"`` (the only kind so far).
    """

    sigma_um: float
    radius_um: float
    kind: str = "gaussian"

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_KINDS:
            raise ModelError(
                f"vst.context: kind {self.kind!r} is not one of {', '.join(CONTEXT_KINDS)}"
            )
        for key in ("sigma_um", "radius_um"):
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ModelError(f"vst.context: {key} must be a positive number, got {value!r}")
        if self.radius_um > MAX_RADIUS_UM:
            raise ModelError(
                f"vst.context: radius_um {self.radius_um:g} is over {MAX_RADIUS_UM:g} µm "
                "(a neighbourhood, not the whole slide)"
            )

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> SpotContext:
        """Parse the ``vst.context`` value, refusing anything malformed by name."""
        try:
            record = json.loads(text) if isinstance(text, str) else dict(text)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"vst.context is not a JSON object: {exc}") from exc
        if not isinstance(record, dict):
            raise ModelError("vst.context must be a JSON object")
        unknown = set(record) - {"kind", "sigma_um", "radius_um"}
        if unknown:
            raise ModelError(f"vst.context: unknown key(s) {', '.join(sorted(unknown))}")
        missing = {"sigma_um", "radius_um"} - set(record)
        if missing:
            raise ModelError(f"vst.context: missing {', '.join(sorted(missing))}")
        return cls(
            sigma_um=record["sigma_um"],
            radius_um=record["radius_um"],
            kind=record.get("kind", "gaussian"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The kernel as the JSON object of ``vst.context`` (what stores and exports record)."""
        return {"kind": self.kind, "sigma_um": self.sigma_um, "radius_um": self.radius_um}

    def to_json(self) -> str:
        """The ``vst.context`` value for this kernel."""
        return json.dumps(self.as_dict())

    def describe(self) -> str:
        """One line for people, e.g. ``Gaussian context, σ 150 µm within 300 µm``."""
        return f"Gaussian context, σ {self.sigma_um:g} µm within {self.radius_um:g} µm"


def describe_values(context: SpotContext | None) -> str:
    """``"per-tile"`` or, with a spot context, e.g. ``contextual (Gaussian context, σ 150 µm
    within 300 µm)``: the one wording the CLI, the exports and the viewer use."""
    return "per-tile" if context is None else f"contextual ({context.describe()})"


def context_weights(xy_um: NDArray[np.floating], context: SpotContext) -> sparse.csr_matrix:
    """The kernel's weights between every pair of spots within its radius (self included).

    Parameters
    ----------
    xy_um
        Spot centres ``(n, 2)`` in micrometres (any frame, as long as it is isotropic).
    context
        The kernel.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)``; row ``i`` holds ``w_ij`` for the spots ``j`` within the radius of ``i``.
    """
    xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if n == 0:
        return sparse.csr_matrix((0, 0), dtype=np.float64)
    pairs = cKDTree(xy).query_pairs(context.radius_um, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    dx, dy = x[a] - x[b], y[a] - y[b]  # each pair once (1 s less on 100k spots)
    w = np.exp(-(dx * dx + dy * dy) / (2.0 * context.sigma_um**2))
    rows = np.concatenate([np.arange(n), a, b])
    cols = np.concatenate([np.arange(n), b, a])
    weights = np.concatenate([np.ones(n), w, w])
    return sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))


def spot_weights(
    xy_level0_px: NDArray[np.floating], mpp: float, context: SpotContext
) -> sparse.csr_matrix:
    """:func:`context_weights` of spots given in level-0 pixels of a slide of ``mpp`` µm/px.

    The store, its exports and the viewer all build a store's weights with this one call, so
    their contextual values agree to the bit.
    """
    xy = np.asarray(xy_level0_px, dtype=np.float64).reshape(-1, 2)
    return context_weights(xy * float(mpp), context)


#: Genes computed at once by :func:`apply_context` (bounds its float64 working copy).
_GENE_BLOCK = 64


def apply_context(
    tile_values: NDArray[np.floating],
    weights: sparse.csr_matrix,
    rows: NDArray[np.integer] | slice | None = None,
) -> NDArray[np.float32]:
    """Contextual values from per-tile values: the renormalised weighted mean (module doc).

    Parameters
    ----------
    tile_values
        ``(n, G)`` per-tile values of every spot; NaN rows are spots without a value yet.
    weights
        :func:`context_weights` of the same spots.
    rows
        Which spots to compute (default all); a progressive run recomputes only the spots
        near the ones that just arrived. Only those spots' neighbours are read, and a spot's
        value does not depend on which other rows are computed with it.

    Returns
    -------
    numpy.ndarray
        ``(len(rows), G)`` float32; NaN where the spot itself has no per-tile value.
    """
    values = np.asarray(tile_values)
    n = weights.shape[0]
    if values.ndim != 2 or values.shape[0] != n:
        raise ValueError(f"tile values {values.shape} do not match {n} spots of the kernel")
    own = np.arange(n) if rows is None else np.arange(n)[rows]
    w = sparse.csr_matrix(weights if rows is None else weights[own])
    if rows is not None:  # only the neighbours of these rows, relabelled in order
        cols = np.unique(w.indices)
        values = values[cols]
        w = sparse.csr_matrix(
            (w.data, np.searchsorted(cols, w.indices), w.indptr), shape=(len(own), len(cols))
        )
    have = np.all(np.isfinite(values), axis=1)
    if not have.any():  # (a new store: nothing to average)
        return np.full((len(own), values.shape[1]), np.nan, np.float32)
    # the same sparsity pattern, zero weight for neighbours without a value (keeps each
    # row's order of summation, so a row's result never depends on the other rows)
    w_have = sparse.csr_matrix((w.data * have[w.indices], w.indices, w.indptr), shape=w.shape)
    total = np.asarray(w_have.sum(axis=1)).ravel()
    out = np.empty((len(own), values.shape[1]), np.float32)
    for start in range(0, values.shape[1], _GENE_BLOCK):
        block = values[:, start : start + _GENE_BLOCK].astype(np.float64)
        filled = np.where(have[:, None], block, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, start : start + _GENE_BLOCK] = np.asarray(w_have @ filled) / total[:, None]
    own_have = np.all(np.isfinite(np.asarray(tile_values)[own]), axis=1)
    out[~own_have] = np.nan
    return out


def spots_near(weights: sparse.csr_matrix, spots: NDArray[np.integer] | slice) -> NDArray[np.intp]:
    """The spots whose contextual value depends on any of ``spots`` (themselves included)."""
    affected = weights[spots].tocoo().col
    return np.unique(affected).astype(np.intp)
