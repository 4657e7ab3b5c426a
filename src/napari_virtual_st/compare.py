"""Predicted vs measured expression, per gene and overall.

The predicted store and the measured data are joined spot by spot — by spot id when the
prediction was made at the measured spots (the grid built from the measured coordinates
carries the barcodes), otherwise by nearest centre within half a spot pitch — and compared
gene by gene on the genes both sides have, after the measured counts are normalised to the
model's target (``log1p_cp10k``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr

from napari_virtual_st.context import describe_values
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.frames import Transform
from napari_virtual_st.grid import match_spots
from napari_virtual_st.measured import MeasuredST, log1p_cp10k
from napari_virtual_st.store import PredictionStore


class ComparisonError(VirtualSTError):
    """Predicted and measured data cannot be compared (no shared spots or genes)."""


@dataclass(frozen=True)
class GeneScore:
    """Agreement of one gene."""

    gene: str
    pearson: float
    spearman: float
    ssim: float
    mean_predicted: float
    mean_measured: float


@dataclass(frozen=True)
class Comparison:
    """Agreement of a prediction with measured data.

    Attributes
    ----------
    genes
        One :class:`GeneScore` per shared gene, in the model's gene order.
    n_spots
        Spots present on both sides.
    predicted, measured
        ``(n_spots, n_genes)`` joined values (measured normalised to the model's target).
    missing_genes
        Model genes the measured data lacks (reported, not fatal).
    spot_match
        ``"id"`` or ``"nearest"``.
    values
        What the predicted values are: ``per-tile`` or ``contextual (…)`` (the model's spot
        context, :func:`napari_virtual_st.context.describe_values`).
    """

    genes: tuple[GeneScore, ...]
    n_spots: int
    predicted: NDArray[np.float32]
    measured: NDArray[np.float32]
    missing_genes: tuple[str, ...]
    spot_match: str
    values: str = "per-tile"

    def summary(self) -> dict[str, float | int | str]:
        """Overall figures: mean Pearson/Spearman/SSIM, share of genes with Pearson > 0."""
        p = np.array([g.pearson for g in self.genes])
        return {
            "n_spots": self.n_spots,
            "n_genes": len(self.genes),
            "n_missing_genes": len(self.missing_genes),
            "mean_pearson": float(np.nanmean(p)) if len(p) else math.nan,
            "median_pearson": float(np.nanmedian(p)) if len(p) else math.nan,
            "mean_spearman": float(np.nanmean([g.spearman for g in self.genes]))
            if len(p)
            else math.nan,
            "mean_ssim": float(np.nanmean([g.ssim for g in self.genes])) if len(p) else math.nan,
            "frac_pearson_gt_0": float(np.mean(p > 0)) if len(p) else math.nan,
            "spot_match": self.spot_match,
            "values": self.values,
        }

    def sorted_by(self, key: str = "pearson") -> list[GeneScore]:
        """Gene scores, best first (NaN last)."""
        return sorted(self.genes, key=lambda g: -np.nan_to_num(getattr(g, key), nan=-np.inf))

    def write_csv(self, path: str | Path) -> Path:
        """Per-gene table (gene, pearson, spearman, ssim, means, which predicted values were
        scored), written atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                [
                    "gene",
                    "pearson",
                    "spearman",
                    "ssim",
                    "mean_predicted",
                    "mean_measured",
                    "predicted_values",
                ]
            )
            for g in self.sorted_by():
                writer.writerow(
                    [
                        g.gene,
                        f"{g.pearson:.6f}",
                        f"{g.spearman:.6f}",
                        f"{g.ssim:.6f}",
                        f"{g.mean_predicted:.6f}",
                        f"{g.mean_measured:.6f}",
                        self.values,
                    ]
                )
        tmp.replace(path)
        return path


def compare(
    store: PredictionStore,
    measured: MeasuredST,
    transform: Transform | None = None,
    *,
    max_distance_px: float | None = None,
) -> Comparison:
    """Compare a finished prediction with measured data.

    The predicted values are the store's (:meth:`PredictionStore.expression`): contextual
    when the model declares a spot context.

    Parameters
    ----------
    store
        Predictions (its target must be ``log1p_cp10k``, as the bundled models').
    measured
        Measured counts; its spot centres are in its own full-resolution pixels.
    transform
        Measured px → slide level-0 px (identity when omitted: same image).
    max_distance_px
        Largest centre distance (level-0 px) for nearest-centre matching; default half the
        spot pitch (or one spot diameter for explicit grids).

    Raises
    ------
    ComparisonError
        If no spot or no gene is shared.
    """
    predicted_all = store.expression()
    rows, match = match_spots(
        store.xy_level0_px,
        measured.xy_fullres_px if transform is None else transform.apply(measured.xy_fullres_px),
        store.grid.match_distance_px if max_distance_px is None else max_distance_px,
        spot_ids=store.grid.spot_ids,
        other_ids=measured.spot_ids,
    )
    pairs = [
        (i, int(j)) for i, j in enumerate(rows) if j >= 0 and np.isfinite(predicted_all[i]).all()
    ]
    if not pairs:
        raise ComparisonError(
            "no predicted spot lies on a measured spot: check the alignment (--transform) and that the store is complete"
        )
    p_idx = np.array([i for i, _ in pairs])
    m_idx = np.array([j for _, j in pairs])
    gene_lookup = {g: i for i, g in enumerate(measured.genes)}
    shared = [g for g in store.genes if g in gene_lookup]
    missing = tuple(g for g in store.genes if g not in gene_lookup)
    if not shared:
        raise ComparisonError(
            f"none of the model's {len(store.genes)} genes is in the measured data "
            f"(model genes like {', '.join(store.genes[:3])}; measured like {', '.join(measured.genes[:3])}): "
            "are they the same naming (symbols vs Ensembl ids)?"
        )
    target = store.model.target or "log1p_cp10k"
    if target != "log1p_cp10k":
        raise ComparisonError(
            f"the model predicts {target!r}; only log1p_cp10k can be compared with counts here"
        )
    normalised = log1p_cp10k(measured.counts[m_idx])
    measured_values = normalised[:, [gene_lookup[g] for g in shared]]
    p_cols = np.asarray(store.gene_index(shared), dtype=np.intp)
    predicted_values = predicted_all[np.ix_(p_idx, p_cols)]
    rc = store.lattice_rc[p_idx]
    scores = tuple(
        _gene_score(g, predicted_values[:, k], measured_values[:, k], rc)
        for k, g in enumerate(shared)
    )
    values = describe_values(store.context)
    return Comparison(
        scores, len(pairs), predicted_values, measured_values, missing, match, values
    )


def _gene_score(
    gene: str, pred: NDArray[np.floating], meas: NDArray[np.floating], rc: NDArray[np.integer]
) -> GeneScore:
    varying = np.ptp(pred) > 0 and np.ptp(meas) > 0
    pearson = float(np.corrcoef(pred, meas)[0, 1]) if varying else math.nan
    spearman = float(spearmanr(pred, meas).statistic) if varying else math.nan
    return GeneScore(
        gene,
        pearson,
        spearman,
        _lattice_ssim(pred, meas, rc),
        float(np.mean(pred)),
        float(np.mean(meas)),
    )


def _lattice_ssim(
    pred: NDArray[np.floating], meas: NDArray[np.floating], rc: NDArray[np.integer]
) -> float:
    """SSIM of the two heatmaps on the spot lattice, averaged over the spot cells (each map
    scaled to 0..1; NaN without a lattice). Visium's doubled ``array_col`` is halved."""
    from skimage.metrics import structural_similarity

    if (rc < 0).any() or len(rc) < 9:
        return math.nan
    rows, cols = rc[:, 0] - rc[:, 0].min(), rc[:, 1] - rc[:, 1].min()
    if np.all((rc[:, 0] + rc[:, 1]) % 2 == 0) or np.all((rc[:, 0] + rc[:, 1]) % 2 == 1):
        cols = cols // 2
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    if min(shape) < 3:
        return math.nan
    images = []
    for values in (pred, meas):
        lo, hi = float(np.min(values)), float(np.max(values))
        image = np.zeros(shape)
        image[rows, cols] = (values - lo) / (hi - lo) if hi > lo else 0.0
        images.append(image)
    window = min(7, *(s if s % 2 else s - 1 for s in shape))
    _, ssim_map = structural_similarity(
        images[0], images[1], data_range=1.0, win_size=window, full=True
    )
    return float(ssim_map[rows, cols].mean())
