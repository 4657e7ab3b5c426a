"""Train NSL on workshop sections.

``fit_nsl(train_sections, genes)`` returns a trained :class:`~models.nsl.model.NSL`. Used by
``models/evaluate.py`` (the protocol) and ``models/nsl/build.py`` (the shipped model).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.nsl.model import NSL, RUIFROK_E, RUIFROK_H
from models.workshop.data import SectionData


@dataclass(frozen=True)
class NSLSettings:
    """Training settings (fixed by the protocol on the optimistic LOSO folds, not on A1)."""

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 0.02
    weight_decay: float = 1e-4
    seed: int = 0
    #: HED jitter (Tellez et al. 2019): per tile, each stain's concentration is scaled by
    #: U(1 - a, 1 + a) and shifted by U(-b, b), simulating stain-intensity variation between
    #: labs and patients. Chosen a priori ("strong" HED jitter), not tuned on the test patient.
    hed_scale: float = 0.2
    hed_shift: float = 0.05
    pool_tissue_only: bool = True


def fit_nsl(
    train: Sequence[SectionData],
    genes: Sequence[str],
    settings: NSLSettings | None = None,
    *,
    log: bool = False,
) -> NSL:
    """Fit NSL on the spots of ``train`` for ``genes`` (log1p CP10k targets)."""
    settings = settings or NSLSettings()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    tiles = torch.from_numpy(np.concatenate([s.tiles for s in train]))
    targets = torch.from_numpy(np.concatenate([s.targets(genes) for s in train]))
    model = NSL(len(genes), pool_tissue_only=settings.pool_tissue_only)
    with torch.no_grad():
        feats = torch.cat(
            [model.pooled_features(tiles[i : i + 128]) for i in range(0, len(tiles), 128)]
        )
        model.feature_mean.copy_(feats.mean(dim=0))
        model.feature_std.copy_(feats.std(dim=0).clamp(min=1e-4))
        model.target_mean.copy_(targets.mean(dim=0))
        model.target_std.copy_(targets.std(dim=0).clamp(min=1e-3))
    z = (targets - model.target_mean) / model.target_std
    optimiser = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs)
    n = len(tiles)
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for i in range(0, n, settings.batch_size):
            idx = order[i : i + settings.batch_size]
            batch = tiles[idx]
            if settings.hed_scale > 0 or settings.hed_shift > 0:
                batch = hed_jitter(batch, settings.hed_scale, settings.hed_shift, rng)
            loss = torch.mean((model.standardised(batch) - z[idx]) ** 2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        schedule.step()
        if log:
            print(
                f"epoch {epoch + 1}/{settings.epochs}: loss {total / n:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    return model.eval()


def hed_jitter(
    batch: torch.Tensor, scale: float, shift: float, rng: np.random.Generator
) -> torch.Tensor:
    """Random per-tile stain-intensity change in H, E (and residual) optical density."""
    stains = np.array([RUIFROK_H, RUIFROK_E, (0.268, 0.570, 0.776)], np.float64)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    to_conc = torch.from_numpy(np.linalg.inv(stains).astype(np.float32))  # OD (row) @ inv -> conc
    to_od = torch.from_numpy(stains.astype(np.float32))
    n = len(batch)
    od = -torch.log((batch.to(torch.float32) + 1.0) / 256.0).reshape(n, -1, 3)
    conc = od @ to_conc
    alpha = torch.from_numpy(rng.uniform(1 - scale, 1 + scale, (n, 1, 3)).astype(np.float32))
    beta = torch.from_numpy(rng.uniform(-shift, shift, (n, 1, 3)).astype(np.float32))
    od = (conc * alpha + beta) @ to_od
    rgb = 256.0 * torch.exp(-od) - 1.0
    return rgb.clamp(0, 255).round().to(torch.uint8).reshape(batch.shape)


def predict_nsl(model: NSL, tiles: np.ndarray) -> np.ndarray:
    """``(n, G)`` predictions of a trained NSL for uint8 tiles."""
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(tiles[i : i + 128])).numpy()
                for i in range(0, len(tiles), 128)
            ]
        )


class NSLMethod:
    """NSL behind the harness's ``fit`` / ``predict`` interface."""

    name = "nsl"

    def __init__(self, settings: NSLSettings | None = None) -> None:
        self.settings = settings or NSLSettings()

    def fit(self, train: Sequence[SectionData], genes: Sequence[str]) -> NSLMethod:
        self.model_ = fit_nsl(train, genes, self.settings)
        return self

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        return predict_nsl(self.model_, tiles)
