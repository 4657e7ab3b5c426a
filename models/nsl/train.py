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
from models.workshop.baselines import RIDGE_ALPHAS
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
    #: Weight of an L2 prior pulling each gene's deconvolution matrix towards Ruifrok &
    #: Johnston's (0 = the paper's unconstrained matrix). Limits how far the stain vectors can
    #: fit one patient's staining.
    prior_weight: float = 0.0
    #: Stains deconvolved: 2 (H, E; 11 weights per gene) or 3 (H, E, residual; 16).
    n_stains: int = 2
    #: How the per-gene linear head is finally fitted: ``"adam"`` (jointly with the matrices,
    #: the paper's end-to-end training) or ``"ridge"`` (after end-to-end training, the head is
    #: refitted in closed form on the learned stain features with an L2 penalty chosen by
    #: leave-one-section-out within the training sections, as the ridge baseline chooses its).
    head: str = "adam"
    #: Train the deconvolution matrices (the paper) or keep them at Ruifrok & Johnston's.
    learn_deconvolution: bool = True
    #: Clip concentrations at 0 (physical stains; glass and off-stain colours then pool as
    #: 0) or keep the signed deconvolution output.
    nonnegative: bool = True
    #: Also pool each stain's transmitted light ``exp(-c)`` (mean, std): the deconvolved
    #: single-stain images as a microscope shows them, where bright pixels weigh as they do
    #: in RGB statistics, not as in optical density.
    pool_light: bool = False


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
    model = NSL(
        len(genes),
        pool_tissue_only=settings.pool_tissue_only,
        n_stains=settings.n_stains,
        nonnegative=settings.nonnegative,
        pool_light=settings.pool_light,
    )
    with torch.no_grad():
        feats = torch.cat(
            [model.pooled_features(tiles[i : i + 128]) for i in range(0, len(tiles), 128)]
        )
        model.feature_mean.copy_(feats.mean(dim=0))
        model.feature_std.copy_(feats.std(dim=0).clamp(min=1e-4))
        model.target_mean.copy_(targets.mean(dim=0))
        model.target_std.copy_(targets.std(dim=0).clamp(min=1e-3))
    z = (targets - model.target_mean) / model.target_std
    prior = model.deconvolution.detach().clone()
    model.deconvolution.requires_grad_(settings.learn_deconvolution)
    optimiser = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
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
            if settings.prior_weight > 0:
                drift = (model.deconvolution - prior).pow(2).sum(dim=(1, 2)).mean()
                loss = loss + settings.prior_weight * drift
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        schedule.step()
        if log:
            print(
                f"epoch {epoch + 1}/{settings.epochs}: loss {total / n:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    model.eval()
    if settings.head == "ridge":
        sections = np.concatenate([np.full(len(s.tiles), k) for k, s in enumerate(train)])
        refit_head_ridge(model, tiles, z, sections, log=log)
    elif settings.head != "adam":
        raise ValueError(f"head must be 'adam' or 'ridge', not {settings.head!r}")
    return model


def refit_head_ridge(
    model: NSL,
    tiles: torch.Tensor,
    z: torch.Tensor,
    sections: np.ndarray,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    *,
    log: bool = False,
) -> float:
    """Refit every gene's head and bias in closed form (ridge) on the learned stain features.

    The penalty is the one of ``alphas`` with the best mean per-gene Pearson over
    leave-one-section-out folds of the training spots (one penalty for all genes, as the
    ridge baseline). Returns the chosen penalty.
    """
    with torch.no_grad():
        feats = torch.cat(
            [model.pooled_features(tiles[i : i + 128]) for i in range(0, len(tiles), 128)]
        )
        x = ((feats - model.feature_mean) / model.feature_std).double()  # (n, G, F)
    y = z.double()  # (n, G)
    groups = np.unique(sections)
    alpha = float(alphas[0])
    if len(groups) > 1 and len(alphas) > 1:
        scores = []
        for a in alphas:
            fold_scores = []
            for k in groups:
                held = torch.from_numpy(sections == k)
                w, b = _ridge_per_gene(x[~held], y[~held], a)
                pred = (x[held] * w).sum(-1) + b
                fold_scores.append(float(_mean_pearson(pred, y[held])))
            scores.append(np.mean(fold_scores))
        alpha = float(alphas[int(np.argmax(scores))])
    w, b = _ridge_per_gene(x, y, alpha)
    with torch.no_grad():
        model.head.copy_(w.float())
        model.bias.copy_(b.float())
    if log:
        print(f"head refitted by ridge, alpha {alpha:g}")
    return alpha


def _ridge_per_gene(
    x: torch.Tensor, y: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene ridge: ``x (n, G, F)``, ``y (n, G)`` → weights ``(G, F)``, bias ``(G,)``."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    gram = torch.einsum("ngf,ngh->gfh", xc, xc)
    rhs = torch.einsum("ngf,ng->gf", xc, yc)
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    w = torch.linalg.solve(gram + alpha * eye, rhs.unsqueeze(-1)).squeeze(-1)
    return w, ym - (xm * w).sum(-1)


def _mean_pearson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over genes of the Pearson correlation down the spots (constant columns count 0)."""
    p = pred - pred.mean(0)
    t = target - target.mean(0)
    denom = torch.sqrt((p * p).sum(0) * (t * t).sum(0))
    r = torch.where(denom > 0, (p * t).sum(0) / denom.clamp(min=1e-12), torch.zeros_like(denom))
    return r.mean()


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
