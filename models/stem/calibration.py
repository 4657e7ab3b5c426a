"""Calibration of a predicted variance: does a larger predicted spread go with a larger error?

Spearman rank correlations between the predicted standard deviation (√variance over the K
samples) and the absolute error of the mean against the measured log1p CP10k:

- ``per_spot``: across spots, mean SD over genes vs mean |error| over genes (one value);
- ``per_gene``: for each gene, across spots; the median over genes and the share of genes
  with a positive correlation (this removes the trivial "highly expressed genes have larger
  spread and larger errors" effect);
- ``pooled``: over every (spot, gene) pair (dominated by that between-gene effect; reported
  for completeness).

``coverage_2sd`` is the share of (spot, gene) values within 2 SD of the mean (0.95 for a
calibrated Gaussian).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr


def _spearman(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def calibration(
    mean: NDArray[np.floating], variance: NDArray[np.floating], truth: NDArray[np.floating]
) -> dict[str, Any]:
    """Rank correlations between predicted SD and |error| (see the module docstring).

    Parameters
    ----------
    mean, variance, truth
        ``(n_spots, n_genes)`` predicted mean, predicted variance and measured values.
    """
    if not (mean.shape == variance.shape == truth.shape) or mean.ndim != 2:
        raise ValueError("mean, variance and truth must be (n_spots, n_genes) arrays alike")
    if np.any(variance < 0):
        raise ValueError("a variance cannot be negative")
    sd = np.sqrt(variance.astype(np.float64))
    err = np.abs(mean.astype(np.float64) - truth)
    per_gene = np.array([_spearman(sd[:, j], err[:, j]) for j in range(sd.shape[1])])
    return {
        "measure": "Spearman(predicted SD, |mean - measured|), log1p CP10k",
        "per_spot": _spearman(sd.mean(axis=1), err.mean(axis=1)),
        "per_gene_median": float(np.median(per_gene)),
        "per_gene_share_positive": float(np.mean(per_gene > 0)),
        "pooled": _spearman(sd.ravel(), err.ravel()),
        "coverage_2sd": float(np.mean(err <= 2 * sd)),
    }
