"""Metrics of the evaluation protocol (per-gene Pearson and friends).

Conventions, stated once:

- PCC of a gene is Pearson's r over the test spots between predicted and measured values.
  When either side is constant (e.g. the mean predictor, or a gene never detected in the test
  section) r is undefined and counted as 0 — a constant prediction carries no spatial signal.
- HEG50 / HVG50 are the 50 genes of the panel with the highest mean / variance of the measured
  values over the *training* spots (so the choice never looks at the test section).
- "smoothed" labels replace each test spot's measured value by the mean over the spot and its
  array neighbours in the 3×3 neighbourhood (the TRIPLEX / BG-TRIPLEX / DKAN protocol, which
  their published numbers use). Smoothing removes much of the measurement noise and raises PCC
  a lot: numbers against smoothed labels are not comparable with raw-label numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def pearson_per_gene(
    pred: NDArray[np.floating], true: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Pearson r per column; 0 where either column is constant."""
    p = pred.astype(np.float64) - pred.mean(axis=0)
    t = true.astype(np.float64) - true.mean(axis=0)
    varying = (np.ptp(pred, axis=0) > 0) & (np.ptp(true, axis=0) > 0)
    denom = np.sqrt((p * p).sum(axis=0) * (t * t).sum(axis=0))
    return np.divide(
        (p * t).sum(axis=0), denom, out=np.zeros(p.shape[1]), where=varying & (denom > 0)
    )


def neighbourhood_mean(
    values: NDArray[np.floating], array_rc: NDArray[np.integer]
) -> NDArray[np.float32]:
    """Each spot's values averaged with its present neighbours in the 3×3 array neighbourhood."""
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(array_rc)}
    out = np.empty_like(values, dtype=np.float32)
    for i, (r, c) in enumerate(array_rc):
        members = [
            index[(r + dr, c + dc)]
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            if (r + dr, c + dc) in index
        ]
        out[i] = values[members].mean(axis=0)
    return out


def gene_sets(
    train_targets: NDArray[np.floating], genes: Sequence[str], k: int = 50
) -> dict[str, list[int]]:
    """Column indices of the HEG-k and HVG-k sets, chosen on training targets."""
    heg = np.argsort(-train_targets.mean(axis=0), kind="stable")[:k]
    hvg = np.argsort(-train_targets.var(axis=0), kind="stable")[:k]
    return {
        "ALL": list(range(len(genes))),
        f"HEG{k}": sorted(heg.tolist()),
        f"HVG{k}": sorted(hvg.tolist()),
    }


def score(
    pred: NDArray[np.floating], true: NDArray[np.floating], sets: dict[str, list[int]]
) -> dict[str, float]:
    """PCC-<set> (mean per-gene PCC over each gene set), MSE, MAE and the share of genes with PCC > 0."""
    r = pearson_per_gene(pred, true)
    out = {f"PCC-{name}": float(r[idx].mean()) for name, idx in sets.items()}
    out["MSE"] = float(np.mean((pred.astype(np.float64) - true) ** 2))
    out["MAE"] = float(np.mean(np.abs(pred.astype(np.float64) - true)))
    out["frac_PCC_gt_0"] = float(np.mean(r > 0))
    return out


def evaluate_predictions(
    pred: NDArray[np.floating],
    true: NDArray[np.floating],
    array_rc: NDArray[np.integer],
    sets: dict[str, list[int]],
) -> dict[str, dict[str, float]]:
    """Scores against raw labels and against 3×3-neighbourhood-smoothed labels."""
    return {
        "raw": score(pred, true, sets),
        "smoothed_3x3": score(pred, neighbourhood_mean(true, array_rc), sets),
    }


def bootstrap_pcc_difference(
    pred_a: NDArray[np.floating],
    pred_b: NDArray[np.floating],
    true: NDArray[np.floating],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """How sure is "a beats b"? PCC-ALL(a) − PCC-ALL(b) on the same test spots.

    ``difference`` is the observed difference; ``ci95`` and ``share_positive`` come from
    resampling the test spots with replacement (both methods scored on the same resample).
    Neighbouring spots are correlated, so this interval is narrower than the truth: read it
    as a lower bound on the uncertainty. ``genes_a_better`` is the share of genes whose PCC
    is higher with ``a``; ``wilcoxon_p`` the two-sided signed-rank p-value of the per-gene
    differences (genes are not independent either).
    """
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(seed)
    n = len(true)
    r_a, r_b = pearson_per_gene(pred_a, true), pearson_per_gene(pred_b, true)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[i] = (
            pearson_per_gene(pred_a[idx], true[idx]).mean()
            - pearson_per_gene(pred_b[idx], true[idx]).mean()
        )
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {
        "difference": float(r_a.mean() - r_b.mean()),
        "ci95": [float(lo), float(hi)],
        "share_positive": float(np.mean(diffs > 0)),
        "genes_a_better": float(np.mean(r_a > r_b)),
        "wilcoxon_p": float(wilcoxon(r_a, r_b).pvalue) if np.any(r_a != r_b) else 1.0,
        "n_boot": n_boot,
    }
