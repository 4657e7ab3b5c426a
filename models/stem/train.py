"""Train the Stem-style diffusion model on workshop sections, and sample from it in torch.

``fit_stem(train_sections, genes)`` returns a trained :class:`~models.stem.model.StemModel`;
``StemMethod`` puts it behind the harness's ``fit`` / ``predict`` interface (the mean head, or
the mean of K DDIM samples: ``StemSettings.point``). Used by ``models/evaluate.py`` (the protocol), ``models/stem/build.py`` (the shipped
model) and ``models/stem/bench.py`` (steps × samples).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from models.stem.model import StemModel, StemSampler, colour_statistics
from models.workshop.data import SectionData
from napari_virtual_st.predictor import extra_input_values

#: Seed of the declared ``noise`` input (the Predictor seeds each spot with ``[seed, spot]``).
NOISE_SEED = 0


@dataclass(frozen=True)
class StemSettings:
    """Training and sampling settings (chosen on the C sections only, never on A1)."""

    epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    #: Exponential moving average of the weights used for sampling (standard for diffusion),
    #: with the usual warm-up ``min(decay, (1 + step) / (10 + step))`` so the initial weights
    #: do not linger in the average of a short run.
    ema_decay: float = 0.995
    seed: int = 0
    n_train_steps: int = 1000
    embed_dim: int = 64
    channels: int = 24
    hidden: int = 256
    n_blocks: int = 3
    dropout: float = 0.0
    #: Diffuse residuals around the mean head (CARD) and the weight of its squared error.
    residual: bool = True
    mean_weight: float = 1.0
    schedule: str = "scaled_linear"
    #: HED stain jitter (Tellez et al. 2019; NSL's strength), random flips / 90° rotations.
    hed_scale: float = 0.2
    hed_shift: float = 0.05
    dihedral: bool = True
    #: DDIM steps and samples per spot at prediction time.
    n_steps: int = 10
    n_samples: int = 8
    #: The point estimate (``expression``): ``"mean_head"`` (the conditional-mean head, what
    #: the shipped graph outputs; :func:`mean_head_expression`) or ``"sampled_mean"`` (the mean
    #: of the samples, shipped before; ``models/results/stem_mean_head.md``). The samples give
    #: the variance either way, and training is the same.
    point: str = "mean_head"


def spot_noise(
    spot_ids: ArrayLike, n_samples: int, n_genes: int, seed: int = NOISE_SEED
) -> NDArray[np.float32]:
    """``(N, K, G)`` standard-normal starting noise, seeded per spot exactly as the engine's
    Predictor feeds a declared ``normal`` extra input (``default_rng([seed, spot])``)."""
    spec = {
        "dtype": "float32",
        "shape": ["N", int(n_samples), int(n_genes)],
        "distribution": "normal",
        "seed": int(seed),
    }
    return extra_input_values(spec, spot_ids)


#: H, E and residual optical-density vectors (Ruifrok & Johnston 2001) for the stain jitter.
_STAINS = np.array([(0.650, 0.704, 0.286), (0.072, 0.990, 0.105), (0.268, 0.570, 0.776)])


def hed_jitter(
    batch: torch.Tensor, scale: float, shift: float, rng: np.random.Generator
) -> torch.Tensor:
    """Random per-tile stain-intensity change (Tellez et al. 2019): each of the H, E and
    residual concentrations scaled by U(1 − scale, 1 + scale) and shifted by U(−shift, shift)."""
    stains = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
    to_conc = torch.from_numpy(np.linalg.inv(stains).astype(np.float32))
    to_od = torch.from_numpy(stains.astype(np.float32))
    n = len(batch)
    od = -torch.log((batch.to(torch.float32) + 1.0) / 256.0).reshape(n, -1, 3)
    alpha = torch.from_numpy(rng.uniform(1 - scale, 1 + scale, (n, 1, 3)).astype(np.float32))
    beta = torch.from_numpy(rng.uniform(-shift, shift, (n, 1, 3)).astype(np.float32))
    od = ((od @ to_conc) * alpha + beta) @ to_od
    rgb = 256.0 * torch.exp(-od) - 1.0
    return rgb.clamp(0, 255).round().to(torch.uint8).reshape(batch.shape)


def _dihedral(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each tile flipped and rotated by a random element of the dihedral group (NHWC)."""
    out = batch.clone()
    for i in range(len(batch)):
        tile = batch[i]
        k = int(rng.integers(4))
        if k:
            tile = torch.rot90(tile, k, dims=(0, 1))
        if rng.random() < 0.5:
            tile = torch.flip(tile, dims=(1,))
        out[i] = tile
    return out


def fit_stem(
    train: Sequence[SectionData],
    genes: Sequence[str],
    settings: StemSettings | None = None,
    *,
    log: bool = False,
) -> StemModel:
    """Fit the diffusion model on the spots of ``train`` for ``genes`` (log1p CP10k targets).

    Returns the EMA weights, in eval mode.
    """
    s = settings or StemSettings()
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    tiles = torch.from_numpy(np.concatenate([sec.tiles for sec in train]))
    targets = torch.from_numpy(np.concatenate([sec.targets(genes) for sec in train]))
    model = StemModel(
        len(genes),
        s.n_train_steps,
        s.embed_dim,
        s.channels,
        s.hidden,
        s.n_blocks,
        s.dropout,
        s.residual,
        s.schedule,
    )
    with torch.no_grad():
        stats = colour_statistics(tiles)
        model.encoder.stats_mean.copy_(stats.mean(dim=0))
        model.encoder.stats_std.copy_(stats.std(dim=0).clamp(min=1e-4))
        model.target_mean.copy_(targets.mean(dim=0))
        model.target_std.copy_(targets.std(dim=0).clamp(min=1e-3))
        z = (targets - model.target_mean) / model.target_std
        model.z_min.copy_(z.min(dim=0).values - 1.0)
        model.z_max.copy_(z.max(dim=0).values + 1.0)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay
    )
    n = len(tiles)
    per_epoch = -(-n // s.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=s.learning_rate,
        total_steps=max(1, s.epochs * per_epoch),
        pct_start=0.05,
    )
    start = time.perf_counter()
    model.train()
    step = 0
    for epoch in range(s.epochs):
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for i in range(0, n, s.batch_size):
            idx = order[i : i + s.batch_size]
            batch = tiles[idx]
            if s.dihedral:
                batch = _dihedral(batch, rng)
            if s.hed_scale > 0 or s.hed_shift > 0:
                batch = hed_jitter(batch, s.hed_scale, s.hed_shift, rng)
            loss = model.loss(batch, z[idx], generator, s.mean_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            decay = min(s.ema_decay, (1 + step) / (10 + step))
            step += 1
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
            total += float(loss.detach()) * len(idx)
        if log and (epoch + 1) % max(1, s.epochs // 10) == 0:
            print(
                f"epoch {epoch + 1}/{s.epochs}: loss {total / n:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    return ema.eval()


def sample_stem(
    model: StemModel,
    tiles: NDArray[np.uint8],
    n_steps: int,
    n_samples: int,
    spot_ids: ArrayLike | None = None,
    batch_size: int = 128,
    point: str = "mean_head",
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Torch DDIM sampling: ``(expression, variance)`` per tile, each ``(n, G)``: the ``point``
    estimate (:class:`~models.stem.model.StemSampler`) and the variance of ``n_samples``.

    The noise of spot ``i`` is :func:`spot_noise` of ``spot_ids[i]`` (default ``0..n-1``), the
    same the engine feeds the exported sampler.
    """
    ids = np.arange(len(tiles)) if spot_ids is None else np.asarray(spot_ids)
    sampler = StemSampler(model, n_steps, point).eval()
    means, variances = [], []
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            noise = spot_noise(ids[i : i + batch_size], n_samples, model.n_genes)
            mean, var = sampler(
                torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch_size])),
                torch.from_numpy(noise),
            )
            means.append(mean.numpy())
            variances.append(var.numpy())
    return np.concatenate(means), np.concatenate(variances)


def mean_head_expression(
    model: StemModel, tiles: NDArray[np.uint8], batch_size: int = 128
) -> NDArray[np.float32]:
    """The mean head alone (the prior mean the sampled residuals spread around), in log1p CP10k
    and clamped at 0: ``(n, G)`` for ``(n, s, s, 3)`` uint8 tiles, without sampling (the
    ``models.auxiliary_genes --stem-width`` diagnostic); the same values as the sampler's
    ``"mean_head"`` point estimate."""
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            image = torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch_size]))
            z = model.mean_head(model.encoder(image))
            out.append(torch.relu(z * model.target_std + model.target_mean).numpy())
    return np.concatenate(out).astype(np.float32)


class StemMethod:
    """The diffusion model behind the harness's ``fit`` / ``predict`` (the settings' point
    estimate; the samples' variance in ``variance_``)."""

    name = "stem"

    def __init__(self, settings: StemSettings | None = None) -> None:
        self.settings = settings or StemSettings()

    def fit(self, train: Sequence[SectionData], genes: Sequence[str]) -> StemMethod:
        self.model_ = fit_stem(train, genes, self.settings)
        return self

    def predict(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        expression, self.variance_ = sample_stem(
            self.model_,
            tiles,
            self.settings.n_steps,
            self.settings.n_samples,
            point=self.settings.point,
        )
        return expression
