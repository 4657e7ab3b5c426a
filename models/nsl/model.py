"""The NSL network: a learned stain-deconvolution matrix per gene, trained end to end.

Dawood, Branson, Rajpoot & Minhas, "All You Need is Color: Image based Spatial Gene
Expression Prediction using Neural Stain Learning" (2021). The paper's idea, as built here:

1. RGB → optical density by Beer–Lambert: ``OD = -log((I + 1) / 256)`` per channel.
2. Per gene g, a learned 3×2 deconvolution matrix ``D_g`` (initialised from the pseudo-inverse
   of Ruifrok & Johnston's H&E stain OD vectors) maps each pixel's OD to two stain
   concentrations; concentrations are non-negative (ReLU).
3. The concentrations are pooled over tissue pixels (OD sum above a threshold: glass and
   white background are ignored): mean and standard deviation of each stain.
4. A per-gene linear head on the 4 pooled values.

Trainable weights per gene: 6 (D_g) + 4 (head) + 1 (bias) = **11**, the paper's count.

Choices the paper leaves open, and what we chose: the number of stains (2: H and E), the
pooling statistics (mean and standard deviation over tissue pixels), the tissue threshold
(total OD > 0.15), the +1 in Beer–Lambert (avoids log 0), and standardising pooled features
and targets with training-set constants (fixed buffers, not trained) so that all genes train
at the same pace; the head is then un-standardised inside the graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Ruifrok & Johnston (2001) optical-density vectors of haematoxylin and eosin (RGB).
RUIFROK_H = (0.650, 0.704, 0.286)
RUIFROK_E = (0.072, 0.990, 0.105)
#: Ruifrok & Johnston's third vector for H&E: the residual (orthogonal complement) channel.
RUIFROK_RESIDUAL = (0.268, 0.570, 0.776)


def ruifrok_deconvolution(n_stains: int = 2) -> np.ndarray:
    """``3×n_stains`` matrix mapping an RGB OD vector to stain concentrations.

    ``n_stains = 2``: (H, E), the pseudo-inverse of the two stain vectors; ``3``: (H, E,
    residual), the inverse of the full Ruifrok–Johnston matrix.
    """
    if n_stains not in (2, 3):
        raise ValueError(f"n_stains must be 2 or 3, not {n_stains}")
    stains = np.array([RUIFROK_H, RUIFROK_E, RUIFROK_RESIDUAL][:n_stains], dtype=np.float64)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    return np.linalg.pinv(stains).astype(np.float32)  # (3, n_stains)


class NSL(nn.Module):
    """Neural stain learning over uint8 NHWC RGB tiles.

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    tissue_od
        Pixels whose summed OD is at most this are background.
    pool_tissue_only
        Pool over tissue pixels only (the default), or over every pixel of the tile (then the
        pooled means also carry how much of the spot is tissue).
    """

    def __init__(
        self,
        n_genes: int,
        tissue_od: float = 0.15,
        pool_tissue_only: bool = True,
        n_stains: int = 2,
        nonnegative: bool = True,
        pool_light: bool = False,
    ) -> None:
        super().__init__()
        init = torch.from_numpy(ruifrok_deconvolution(n_stains))
        self.deconvolution = nn.Parameter(
            init.unsqueeze(0).repeat(n_genes, 1, 1).contiguous()
        )  # (G, 3, S)
        self.n_stains = n_stains
        self.nonnegative = nonnegative
        self.pool_light = pool_light
        n_features = (4 if pool_light else 2) * n_stains
        self.head = nn.Parameter(torch.zeros(n_genes, n_features))
        self.bias = nn.Parameter(torch.zeros(n_genes))
        self.tissue_od = tissue_od
        self.pool_tissue_only = pool_tissue_only
        self.register_buffer("feature_mean", torch.zeros(n_genes, n_features))
        self.register_buffer("feature_std", torch.ones(n_genes, n_features))
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_std", torch.ones(n_genes))

    def pooled_features(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, G, F)`` mean and std of the S stain concentrations over the pooled pixels
        (``F = 2S``), then, with ``pool_light``, mean and std of each stain's transmitted
        light ``exp(-c)`` (``F = 4S``)."""
        n = image.shape[0]
        g, k = self.deconvolution.shape[0], self.n_stains
        rgb = image.to(torch.float32).reshape(n, -1, 3)
        od = -torch.log((rgb + 1.0) / 256.0)  # (N, P, 3)
        if self.pool_tissue_only:
            mask = (od.sum(dim=-1) > self.tissue_od).to(torch.float32)  # (N, P)
        else:
            mask = torch.ones_like(od[..., 0])
        weights = (mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)).unsqueeze(1)  # (N, 1, P)
        matrix = self.deconvolution.permute(1, 0, 2).reshape(3, g * k)  # (3, G·S)
        conc = od @ matrix  # (N, P, G·S): one GEMM for all genes
        if self.nonnegative:
            conc = torch.relu(conc)
        pooled = [conc, torch.exp(-conc)] if self.pool_light else [conc]
        features = []
        for values in pooled:
            mean = (weights @ values).squeeze(1)  # (N, G·S)
            # two-pass variance: E[x²] − E[x]² cancels catastrophically in float32 when the
            # spread is small beside the mean (transmitted light), and torch and ONNX Runtime
            # then disagree by more than the model's resolution
            centred = values - mean.unsqueeze(1)
            var = (weights @ (centred * centred)).squeeze(1)
            std = torch.sqrt(var + 1e-6)
            features += [mean.reshape(n, g, k), std.reshape(n, g, k)]
        return torch.cat(features, dim=-1)

    def standardised(self, image: torch.Tensor) -> torch.Tensor:
        """Prediction in standardised target units (what training optimises)."""
        feats = (self.pooled_features(image) - self.feature_mean) / self.feature_std
        return (feats * self.head).sum(dim=-1) + self.bias

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, G)`` log1p CP10k from ``(N, H, W, 3)`` uint8 RGB."""
        return self.standardised(image) * self.target_std + self.target_mean

    def n_trainable_per_gene(self) -> int:
        """Trainable weights per gene: 11 with 2 stains (6 + 4 + 1), 16 with 3 (9 + 6 + 1);
        with ``pool_light`` 15 (6 + 8 + 1) and 22 (9 + 12 + 1)."""
        g = self.head.shape[0]
        return sum(p.numel() for p in self.parameters() if p.requires_grad) // g
