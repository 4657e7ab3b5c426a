"""Baselines on the same split as every model: the training mean, and ridge on colour statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from models.workshop.data import SectionData

RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def colour_statistics(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Per tile: mean and std of R, G, B (0..1) and of their optical densities, and the
    tissue fraction (summed OD > 0.15): 13 features."""
    rgb = tiles.reshape(len(tiles), -1, 3).astype(np.float64)
    od = -np.log((rgb + 1.0) / 256.0)
    tissue = (od.sum(axis=-1) > 0.15).mean(axis=1, keepdims=True)
    return np.concatenate(
        [rgb.mean(1) / 255, rgb.std(1) / 255, od.mean(1), od.std(1), tissue], axis=1
    )


def per_slide(
    features: Callable[[NDArray[np.uint8]], NDArray[np.float64]],
) -> Callable[[NDArray[np.uint8]], NDArray[np.float64]]:
    """``features`` standardised over the tiles of one call (one section: the harness passes a
    whole section's tiles to ``fit`` per section and to ``predict``): the HESCAPE per-slide
    standardisation against batch effects. At prediction time it needs every tile of the
    slide first, which the engine's per-tile contract does not allow yet."""

    def standardised(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
        x = features(tiles)
        sd = x.std(axis=0)
        return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 1e-12)

    return standardised


class MeanPredictor:
    """Predicts every spot as the training mean of each gene."""

    name = "mean"

    def fit(self, train: Sequence[SectionData], genes: Sequence[str]) -> MeanPredictor:
        self.mean_ = np.concatenate([s.targets(genes) for s in train]).mean(axis=0)
        return self

    def predict(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        return np.repeat(self.mean_[None, :], len(tiles), axis=0).astype(np.float32)


class RidgeColour:
    """Ridge regression on :func:`colour_statistics` (or other per-tile ``features``), alpha
    chosen by leave-one-section-out cross-validation within the training sections (mean PCC)."""

    name = "ridge_colour"

    def __init__(
        self, features: Callable[[NDArray[np.uint8]], NDArray[np.float64]] | None = None
    ) -> None:
        self.features = features or colour_statistics

    def fit(self, train: Sequence[SectionData], genes: Sequence[str]) -> RidgeColour:
        from models.workshop.metrics import pearson_per_gene

        feats = [self.features(s.tiles) for s in train]
        targets = [s.targets(genes) for s in train]
        if len(train) > 1:
            scores = []
            for alpha in RIDGE_ALPHAS:
                rs = []
                for k in range(len(train)):
                    xtr = np.concatenate([f for i, f in enumerate(feats) if i != k])
                    ytr = np.concatenate([t for i, t in enumerate(targets) if i != k])
                    w = _ridge(xtr, ytr, alpha)
                    rs.append(pearson_per_gene(_apply(w, feats[k]), targets[k]).mean())
                scores.append(float(np.mean(rs)))
            self.alpha_ = RIDGE_ALPHAS[int(np.argmax(scores))]
        else:
            self.alpha_ = 10.0
        self.weights_ = _ridge(np.concatenate(feats), np.concatenate(targets), self.alpha_)
        return self

    def predict(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        return _apply(self.weights_, self.features(tiles)).astype(np.float32)


def _ridge(x: NDArray[np.float64], y: NDArray[np.floating], alpha: float) -> tuple[NDArray, ...]:
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    ym = y.mean(0)
    coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
    return mu, sd, coef, ym


def _apply(weights: tuple[NDArray, ...], x: NDArray[np.float64]) -> NDArray[np.float64]:
    mu, sd, coef, ym = weights
    return ((x - mu) / sd) @ coef + ym
