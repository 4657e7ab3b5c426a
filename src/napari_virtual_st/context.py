"""Spot context: a spot's value from its own tile and its neighbours' (the fixed-kernel case).

Expression is spatially smooth over several spots, so a per-tile model leaves signal on the
table (TRIPLEX, mclSTExp and DKAN's spatial priors all use more than one tile). The simplest
contextual model is a fixed kernel: a spot's value is the Gaussian-weighted mean of the
per-tile values of the spots within ``radius_um`` of it, itself included::

    value_i = sum_j w_ij * tile_j / sum_j w_ij,   w_ij = exp(-d_ij^2 / (2 sigma_um^2)),  d_ij <= radius_um

A model declares it in its metadata (``vst.context``, JSON ``{"kind": "gaussian", "sigma_um":
..., "radius_um": ...}``); without that key values are per-tile, as before.

The learnt generalisation, kind ``"rings"``: neighbours are binned by centre distance into
rings (ring 0 is the spot itself; ring ``b`` holds the other spots with
``ring_edges_um[b-1] < d <= ring_edges_um[b]``, the first ring starting at 0), and each gene
``g`` has its own non-negative weight per ring, ``a_bg``, fitted on held-out predictions
(``models/context_stage.py``)::

    value_ig = sum_j a_{ring(ij), g} * tile_jg / sum_j a_{ring(ij), g}

It is the Gaussian kernel's formula with a per-gene weight per ring in place of
``exp(-d^2 / 2 sigma^2)``, so a ring kernel whose coefficients are the Gaussian's weights at the
ring distances gives the Gaussian's values exactly on a lattice (each ring one distance),
at the edge as in the interior. JSON: ``{"kind": "rings", "ring_edges_um": [...],
"radius_um": <the last edge>, "coefficients": [[a_0g, ..., a_Bg] for each gene, in the
model's gene order]}``.

Edges and gaps: the weights are renormalised over the neighbours that *have* a value, so a
spot at the tissue edge (fewer neighbours) or one whose neighbours are not predicted yet (a
progressive run) is the mean of what is there; a spot with no neighbour within the radius
keeps its own per-tile value (for rings: also a spot whose present rings all weigh 0 for a
gene). Spots without a per-tile value stay NaN.

This module is pure NumPy/SciPy: the engine, the store, the evaluation in ``models/`` and the
viewer all call the same two functions, so a value is computed the same way everywhere.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.spatial import cKDTree

from napari_virtual_st.errors import ModelError

CONTEXT_KINDS = ("gaussian", "rings")
#: A kernel wider than this (µm) is not "context" but a slide-wide average.
MAX_RADIUS_UM = 5000.0


@dataclass(frozen=True)
class SpotContext:
    """A neighbourhood kernel, as a model's metadata declares it (module doc).

    Parameters
    ----------
    sigma_um
        Gaussian: standard deviation of the weight, in micrometres; ``None`` for rings.
    radius_um
        Neighbours farther than this (centre to centre, µm) get no weight; for rings, the
        last ring edge.
    kind
        ``"gaussian"`` (fixed kernel) or ``"rings"`` (per-gene ring weights, learnt).
    ring_edges_um
        Rings: the outer edge of each neighbour ring (µm, ascending); ring 0, the spot
        itself, has no edge.
    coefficients
        Rings: for each gene of the model (in its gene order), the non-negative weight of
        ring 0 (itself) and of each neighbour ring.
    """

    sigma_um: float | None
    radius_um: float
    kind: str = "gaussian"
    ring_edges_um: tuple[float, ...] = ()
    coefficients: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_KINDS:
            raise ModelError(
                f"vst.context: kind {self.kind!r} is not one of {', '.join(CONTEXT_KINDS)}"
            )
        if self.kind == "rings":
            self._check_rings()
        else:
            _check_positive("sigma_um", self.sigma_um)
            if self.ring_edges_um or self.coefficients:
                raise ModelError(
                    "vst.context: a gaussian kernel takes no ring_edges_um or coefficients"
                )
        _check_positive("radius_um", self.radius_um)
        if self.radius_um > MAX_RADIUS_UM:
            raise ModelError(
                f"vst.context: radius_um {self.radius_um:g} is over {MAX_RADIUS_UM:g} µm "
                "(a neighbourhood, not the whole slide)"
            )

    def _check_rings(self) -> None:
        if self.sigma_um is not None:
            raise ModelError("vst.context: a rings kernel takes no sigma_um")
        edges = _numbers("ring_edges_um", self.ring_edges_um)
        if not edges:
            raise ModelError("vst.context: ring_edges_um must list at least one ring edge")
        for edge in edges:
            _check_positive("ring_edges_um", edge)
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ModelError(f"vst.context: ring_edges_um must ascend, got {list(edges)}")
        if edges[-1] != self.radius_um:
            raise ModelError(
                f"vst.context: radius_um {self.radius_um:g} is not the last ring edge "
                f"{edges[-1]:g}"
            )
        if not isinstance(self.coefficients, (list, tuple)) or not self.coefficients:
            raise ModelError("vst.context: coefficients must list one row per gene")
        rows = []
        for g, row in enumerate(self.coefficients):
            values = _numbers(f"coefficients[{g}]", row)
            if len(values) != len(edges) + 1:
                raise ModelError(
                    f"vst.context: coefficients[{g}] has {len(values)} values; it needs "
                    f"{len(edges) + 1} (the spot itself and {len(edges)} ring(s))"
                )
            if any(v < 0 for v in values):
                raise ModelError(f"vst.context: coefficients[{g}] has a negative weight")
            if not any(v > 0 for v in values):
                raise ModelError(f"vst.context: coefficients[{g}] are all 0 (no value)")
            rows.append(values)
        object.__setattr__(self, "ring_edges_um", edges)
        object.__setattr__(self, "coefficients", tuple(rows))

    @classmethod
    def rings(
        cls, ring_edges_um: Sequence[float], coefficients: NDArray[np.floating] | Sequence
    ) -> SpotContext:
        """A rings kernel: ``coefficients`` is ``(n_genes, len(ring_edges_um) + 1)``."""
        coef = np.asarray(coefficients, dtype=np.float64)
        if coef.ndim != 2:
            raise ModelError("vst.context: coefficients must be one row per gene")
        edges = tuple(float(e) for e in ring_edges_um)
        return cls(
            sigma_um=None,
            radius_um=edges[-1] if edges else 0.0,
            kind="rings",
            ring_edges_um=edges,
            coefficients=tuple(tuple(float(v) for v in row) for row in coef),
        )

    @property
    def n_genes(self) -> int | None:
        """How many genes the kernel has weights for (``None``: the same for every gene)."""
        return len(self.coefficients) if self.kind == "rings" else None

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> SpotContext:
        """Parse the ``vst.context`` value, refusing anything malformed by name."""
        try:
            record = json.loads(text) if isinstance(text, str) else dict(text)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"vst.context is not a JSON object: {exc}") from exc
        if not isinstance(record, dict):
            raise ModelError("vst.context must be a JSON object")
        kind = record.get("kind", "gaussian")
        if kind == "rings":
            allowed, needed = (
                {"kind", "radius_um", "ring_edges_um", "coefficients"},
                {
                    "ring_edges_um",
                    "coefficients",
                },
            )
        else:
            allowed, needed = {"kind", "sigma_um", "radius_um"}, {"sigma_um", "radius_um"}
        unknown = set(record) - allowed
        if unknown:
            raise ModelError(f"vst.context: unknown key(s) {', '.join(sorted(unknown))}")
        missing = needed - set(record)
        if missing:
            raise ModelError(f"vst.context: missing {', '.join(sorted(missing))}")
        if kind == "rings":
            edges = _numbers("ring_edges_um", record["ring_edges_um"])
            coefficients = record["coefficients"]
            if not isinstance(coefficients, list):
                raise ModelError("vst.context: coefficients must list one row per gene")
            return cls(
                sigma_um=None,
                radius_um=record.get("radius_um", edges[-1] if edges else 0.0),
                kind="rings",
                ring_edges_um=edges,
                coefficients=tuple(tuple(_numbers("coefficients", r)) for r in coefficients),
            )
        return cls(sigma_um=record["sigma_um"], radius_um=record["radius_um"], kind=kind)

    def as_dict(self) -> dict[str, Any]:
        """The kernel as the JSON object of ``vst.context`` (what stores and exports record)."""
        if self.kind == "rings":
            return {
                "kind": self.kind,
                "ring_edges_um": list(self.ring_edges_um),
                "radius_um": self.radius_um,
                "coefficients": [list(row) for row in self.coefficients],
            }
        return {"kind": self.kind, "sigma_um": self.sigma_um, "radius_um": self.radius_um}

    def to_json(self) -> str:
        """The ``vst.context`` value for this kernel."""
        return json.dumps(self.as_dict())

    def describe(self) -> str:
        """One line for people, e.g. ``Gaussian context, σ 150 µm within 300 µm``."""
        if self.kind == "rings":
            edges = ", ".join(f"{e:g}" for e in self.ring_edges_um)
            return f"learnt ring context, per-gene weights of itself and rings to {edges} µm"
        return f"Gaussian context, σ {self.sigma_um:g} µm within {self.radius_um:g} µm"


def _check_positive(key: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ModelError(f"vst.context: {key} must be a positive number, got {value!r}")


def _numbers(key: str, values: Any) -> tuple[float, ...]:
    """``values`` as finite floats, refused by ``key`` when not a list of finite numbers."""
    if not isinstance(values, (list, tuple)):
        raise ModelError(f"vst.context: {key} must be a list of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ModelError(f"vst.context: {key} holds {v!r}, not a finite number")
        out.append(float(v))
    return tuple(out)


def describe_values(context: SpotContext | None) -> str:
    """``"per-tile"`` or, with a spot context, e.g. ``contextual (Gaussian context, σ 150 µm
    within 300 µm)``: the one wording the CLI, the exports and the viewer use."""
    return "per-tile" if context is None else f"contextual ({context.describe()})"


@dataclass(frozen=True, eq=False)
class RingWeights:
    """A rings kernel between spots: which ring each pair falls in, and the per-gene weights.

    Attributes
    ----------
    rings
        ``(n, n)`` sparse; entry ``(i, j)`` is ``1 + b`` for spot ``j`` in ring ``b`` of spot
        ``i`` (1 on the diagonal: ring 0 is the spot itself), absent beyond the radius.
    coefficients
        ``(n_rings, n_genes)`` float64, the kernel's ``a_bg``.
    """

    rings: sparse.csr_matrix
    coefficients: NDArray[np.float64]

    @functools.cached_property
    def grouped(self) -> bool:
        """Whether the genes share few distinct weight sets (at most one per ring): then one
        weight matrix per set is faster than one sum per ring."""
        distinct = np.unique(self.coefficients.T, axis=0)
        return len(distinct) <= self.coefficients.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``, as a weight matrix's."""
        return self.rings.shape


#: What :func:`context_weights` gives: a weight matrix (Gaussian) or :class:`RingWeights`.
ContextWeights: TypeAlias = "sparse.csr_matrix | RingWeights"


def context_weights(xy_um: NDArray[np.floating], context: SpotContext) -> ContextWeights:
    """The kernel's weights between every pair of spots within its radius (self included).

    Parameters
    ----------
    xy_um
        Spot centres ``(n, 2)`` in micrometres (any frame, as long as it is isotropic).
    context
        The kernel.

    Returns
    -------
    scipy.sparse.csr_matrix or RingWeights
        Gaussian: ``(n, n)``; row ``i`` holds ``w_ij`` for the spots ``j`` within the radius
        of ``i``. Rings: the ring of each such pair and the per-gene ring weights.
    """
    xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if n == 0 and context.kind == "gaussian":
        return sparse.csr_matrix((0, 0), dtype=np.float64)
    pairs = cKDTree(xy).query_pairs(context.radius_um, output_type="ndarray")
    if n == 0:
        pairs = np.empty((0, 2), np.intp)
    a, b = pairs[:, 0], pairs[:, 1]
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    dx, dy = x[a] - x[b], y[a] - y[b]  # each pair once (1 s less on 100k spots)
    rows = np.concatenate([np.arange(n), a, b])
    cols = np.concatenate([np.arange(n), b, a])
    if context.kind == "rings":
        edges = np.asarray(context.ring_edges_um, np.float64)
        # ring of each pair: 1 + the first edge at or beyond its distance (self: 0)
        ring = 1 + np.searchsorted(edges, np.sqrt(dx * dx + dy * dy), side="left")
        ring = np.minimum(ring, len(edges))  # (a pair kept at the radius by rounding)
        data = np.concatenate([np.ones(n), ring + 1.0, ring + 1.0])
        coefficients = np.asarray(context.coefficients, np.float64).T.copy()
        return RingWeights(sparse.csr_matrix((data, (rows, cols)), shape=(n, n)), coefficients)
    w = np.exp(-(dx * dx + dy * dy) / (2.0 * context.sigma_um**2))  # type: ignore[operator]
    weights = np.concatenate([np.ones(n), w, w])
    return sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))


def spot_weights(
    xy_level0_px: NDArray[np.floating], mpp: float, context: SpotContext
) -> ContextWeights:
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
    weights: ContextWeights,
    rows: NDArray[np.integer] | slice | None = None,
    columns: NDArray[np.integer] | Sequence[int] | None = None,
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
    columns
        Rings only: which of the kernel's genes the columns of ``tile_values`` are (default:
        all of them, in order); the Gaussian weighs every gene alike.

    Returns
    -------
    numpy.ndarray
        ``(len(rows), G)`` float32; NaN where the spot itself has no per-tile value.
    """
    values = np.asarray(tile_values)
    n = weights.shape[0]
    if values.ndim != 2 or values.shape[0] != n:
        raise ValueError(f"tile values {values.shape} do not match {n} spots of the kernel")
    coefficients = None
    if isinstance(weights, RingWeights):
        coefficients = weights.coefficients
        if columns is not None:
            coefficients = coefficients[:, np.asarray(columns, dtype=np.intp)]
        if coefficients.shape[1] != values.shape[1]:
            raise ValueError(
                f"tile values have {values.shape[1]} genes; the ring kernel has weights for "
                f"{coefficients.shape[1]}"
            )
    matrix = weights.rings if isinstance(weights, RingWeights) else weights
    own = np.arange(n) if rows is None else np.arange(n)[rows]
    w = sparse.csr_matrix(matrix if rows is None else matrix[own])
    if rows is not None:  # only the neighbours of these rows, relabelled in order
        cols = np.unique(w.indices)
        values = values[cols]
        w = sparse.csr_matrix(
            (w.data, np.searchsorted(cols, w.indices), w.indptr), shape=(len(own), len(cols))
        )
    have = np.all(np.isfinite(values), axis=1)
    if not have.any():  # (a new store: nothing to average)
        return np.full((len(own), values.shape[1]), np.nan, np.float32)
    own_values = np.asarray(tile_values)[own]
    if coefficients is not None:
        # which way depends on the whole kernel, never on the genes asked for, so a gene
        # gets the same bits whichever genes are computed with it
        apply = _apply_grouped if weights.grouped else _apply_ring_sums
        out = apply(values, w, have, coefficients, own_values)
    else:
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
    own_have = np.all(np.isfinite(own_values), axis=1)
    out[~own_have] = np.nan
    return out


def _apply_grouped(
    values: NDArray[np.floating],
    ring_of: sparse.csr_matrix,
    have: NDArray[np.bool_],
    coefficients: NDArray[np.float64],
    own_values: NDArray[np.floating],
) -> NDArray[np.float32]:
    """The rings kernel on already selected rows, for a kernel with few distinct per-gene
    weights: genes with the same ring weights share one weight matrix (one matrix for a
    kernel shared by every gene: as fast as the Gaussian)."""
    out = np.empty((ring_of.shape[0], values.shape[1]), np.float32)
    ring = ring_of.data.astype(np.intp) - 1
    present = have[ring_of.indices]
    vectors, group = np.unique(coefficients.T, axis=0, return_inverse=True)
    for k, vector in enumerate(vectors):
        genes = np.flatnonzero(group.ravel() == k)
        # the same sparsity pattern, zero weight for neighbours without a value
        w = sparse.csr_matrix(
            (vector[ring] * present, ring_of.indices, ring_of.indptr), shape=ring_of.shape
        )
        total = np.asarray(w.sum(axis=1)).ravel()
        for start in range(0, len(genes), _GENE_BLOCK):
            cols = genes[start : start + _GENE_BLOCK]
            filled = np.where(have[:, None], values[:, cols].astype(np.float64), 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                result = np.asarray(w @ filled) / total[:, None]
            # no weight on what is there (a gene that ignores itself, its rings empty)
            out[:, cols] = np.where(total[:, None] > 0, result, own_values[:, cols])
    return out


def _apply_ring_sums(
    values: NDArray[np.floating],
    ring_of: sparse.csr_matrix,
    have: NDArray[np.bool_],
    coefficients: NDArray[np.float64],
    own_values: NDArray[np.floating],
) -> NDArray[np.float32]:
    """The rings kernel on already selected rows, for a kernel with many distinct per-gene
    weights: per ring, the sum and count of the neighbours that have a value, weighted per
    gene (a row's order of summation is fixed)."""
    n_rings = coefficients.shape[0]
    ring_sums = []
    for b in range(n_rings):  # one 0/1 matrix per ring, zero where a neighbour has no value
        in_ring = (ring_of.data == b + 1) & have[ring_of.indices]
        ring_sums.append(
            sparse.csr_matrix(
                (in_ring.astype(np.float64), ring_of.indices, ring_of.indptr),
                shape=ring_of.shape,
            )
        )
    counts = [np.asarray(m.sum(axis=1)).ravel() for m in ring_sums]
    out = np.empty((ring_of.shape[0], values.shape[1]), np.float32)
    for start in range(0, values.shape[1], _GENE_BLOCK):
        block = slice(start, start + _GENE_BLOCK)
        filled = np.where(have[:, None], values[:, block].astype(np.float64), 0.0)
        num = np.zeros((ring_of.shape[0], filled.shape[1]))
        den = np.zeros_like(num)
        for b in range(n_rings):
            a = coefficients[b, block]
            num += np.asarray(ring_sums[b] @ filled) * a
            den += counts[b][:, None] * a
        with np.errstate(invalid="ignore", divide="ignore"):
            result = num / den
        # no weight on what is there (a gene that ignores itself, its rings empty): own value
        result = np.where(den > 0, result, own_values[:, block])
        out[:, block] = result
    return out


def spots_near(weights: ContextWeights, spots: NDArray[np.integer] | slice) -> NDArray[np.intp]:
    """The spots whose contextual value depends on any of ``spots`` (themselves included)."""
    matrix = weights.rings if isinstance(weights, RingWeights) else weights
    affected = matrix[spots].tocoo().col
    return np.unique(affected).astype(np.intp)
