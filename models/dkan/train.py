"""Train DKAN on workshop sections.

``fit_dkan(train_sections, genes)`` returns a trained :class:`~models.dkan.model.DKAN`. Used by
``models/evaluate.py`` (methods ``dkan*``) and ``models/dkan/build.py`` (the shipped model).

DKAN sees 64 px tiles of 110 µm (1.72 µm/px: the spot and its margin, as the protocol's
tiles, at 4× the protocol's 16 px so that the CNN sees cells). The harness hands methods its
16 px tiles; :class:`DKANMethod` re-reads the same sections' spots at 64 px through the same
engine path (``workshop/data.py``), recognising a section by its 16 px tiles.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.dkan.model import DKAN
from models.nsl.train import hed_jitter
from models.workshop.data import SectionData, her2st_sections, load_section
from models.workshop.gene_text import EMBED_DIM, gene_embeddings

TILE_PX = 64
TILE_UM = 110.0


@dataclass(frozen=True)
class DKANSettings:
    """Training settings (chosen a priori / on C only, never on A1)."""

    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    #: the pretrained encoder is fine-tuned at this fraction of the learning rate
    encoder_lr_factor: float = 0.3
    weight_decay: float = 1e-4
    dim: int = 128
    seed: int = 0
    pretrained: bool = True
    gene_semantic: bool = True
    #: InfoNCE alignment of the two paths (False: regression only, no expression path)
    align: bool = True
    #: HED colour jitter (the NSL setting) and random flips / 90° rotations
    hed_scale: float = 0.2
    hed_shift: float = 0.05
    flips: bool = True


def fit_dkan(
    train: Sequence[SectionData],
    genes: Sequence[str],
    settings: DKANSettings | None = None,
    *,
    log: bool = False,
) -> DKAN:
    """Fit DKAN on the spots (tiles of the given sections) for ``genes``."""
    settings = settings or DKANSettings()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    tiles = torch.from_numpy(np.concatenate([s.tiles for s in train]))
    targets = torch.from_numpy(np.concatenate([s.targets(genes) for s in train]))
    emb = (
        gene_embeddings(genes)
        if settings.gene_semantic
        else np.zeros((len(genes), EMBED_DIM), np.float32)
    )
    model = DKAN(
        emb, settings.dim, pretrained=settings.pretrained, gene_semantic=settings.gene_semantic
    )
    with torch.no_grad():
        model.target_mean.copy_(targets.mean(dim=0))
        model.target_std.copy_(targets.std(dim=0).clamp(min=1e-3))
    z = (targets - model.target_mean) / model.target_std
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    factor = settings.encoder_lr_factor if settings.pretrained else 1.0
    optimiser = torch.optim.AdamW(
        [
            {"params": enc, "lr": settings.learning_rate * factor},
            {"params": rest, "lr": settings.learning_rate},
        ],
        weight_decay=settings.weight_decay,
    )
    n = len(tiles)
    steps = settings.epochs * ((n + settings.batch_size - 1) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=[settings.learning_rate * factor, settings.learning_rate],
        total_steps=steps,
        pct_start=0.15,
    )
    start = time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(rng.permutation(n))
        sums = np.zeros(3)
        for i in range(0, n, settings.batch_size):
            idx = order[i : i + settings.batch_size]
            if len(idx) < 2:
                continue
            batch = tiles[idx]
            if settings.hed_scale > 0 or settings.hed_shift > 0:
                batch = hed_jitter(batch, settings.hed_scale, settings.hed_shift, rng)
            if settings.flips:
                batch = torch.rot90(batch, int(rng.integers(4)), dims=(1, 2))
                if rng.random() < 0.5:
                    batch = torch.flip(batch, dims=(2,))
            if settings.align:
                loss, mse, nce = model.training_losses(batch, z[idx])
            else:
                mse = torch.mean((model.standardised(batch) - z[idx]) ** 2)
                loss, nce = mse, torch.zeros(())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            sums += np.array([float(t.detach()) for t in (loss, mse, nce)]) * len(idx)
        if log:
            total, mse_mean, nce_mean = sums / n
            print(
                f"epoch {epoch + 1}/{settings.epochs}: loss {total:.3f} mse {mse_mean:.3f} "
                f"nce {nce_mean:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return model.eval()


def predict_dkan(model: DKAN, tiles: np.ndarray) -> np.ndarray:
    """``(n, G)`` predictions of a trained DKAN for uint8 tiles."""
    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(tiles[i : i + 64])).numpy() for i in range(0, len(tiles), 64)]
        )


def at_dkan_resolution(section: SectionData) -> SectionData:
    """The same HER2ST section's spots as :data:`TILE_PX` px tiles of :data:`TILE_UM` µm."""
    if section.tile_px == TILE_PX and section.tile_um == TILE_UM:
        return section
    source = next(s for s in her2st_sections() if s.name == section.name)
    return load_section(source, TILE_PX, TILE_UM)


class DKANMethod:
    """DKAN behind the harness's ``fit`` / ``predict`` interface."""

    name = "dkan"

    def __init__(self, settings: DKANSettings | None = None) -> None:
        self.settings = settings or DKANSettings()

    def fit(self, train: Sequence[SectionData], genes: Sequence[str]) -> DKANMethod:
        torch.set_num_threads(2)
        self._known = {}
        for source in her2st_sections():
            section = load_section(source, train[0].tile_px, train[0].tile_um)
            self._known[section.tiles.tobytes()] = section
        self.model_ = fit_dkan([at_dkan_resolution(s) for s in train], genes, self.settings)
        return self

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        if tiles.shape[1] != TILE_PX:
            section = self._known.get(tiles.tobytes())
            if section is None:
                raise ValueError("DKAN predicts HER2ST sections it can re-read at 64 px")
            tiles = at_dkan_resolution(section).tiles
        return predict_dkan(self.model_, tiles)
