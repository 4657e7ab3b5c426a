"""The DKAN network: gene-semantic queries over image and expression features (two paths).

After Zhang et al., "Dual-Path Knowledge-Augmented Contrastive Alignment Network for Spatially
Resolved Transcriptomics". As built here:

1. **Gene queries**: each gene's text embedding (MiniLM, 384-d, ``workshop/gene_text.py``) is
   a fixed buffer (baked into the ONNX graph as a constant) projected to ``d`` dims by a
   learned linear map. Ablation: free learned gene queries instead (``gene_semantic=False``).
2. **Image path** (the inference path): EfficientNet-Lite0 feature map of the tile → ``d``-dim
   tokens (one per feature-map cell plus the pooled token); the gene queries attend to them
   (single-head scaled dot-product cross-attention), and a shared readout plus a per-gene bias
   gives each gene's standardised expression.
3. **Expression path** (training only): the spot's measured expression as gene tokens (query
   + value × learned vector); the same queries attend to them. The two paths' spot summaries
   are aligned with InfoNCE inside the batch, beside the supervised regression loss; the two
   losses are weighted adaptively by learned uncertainties (Kendall et al. 2018).

Only the image path is exported (tile → expression). Targets are standardised with training
constants (buffers), un-standardised inside the graph.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from models.workshop.efficientnet_lite import efficientnet_lite0


class DKAN(nn.Module):
    """DKAN over uint8 NHWC RGB tiles.

    Parameters
    ----------
    gene_embeddings
        ``(G, E)`` text embeddings of the genes (kept as a constant buffer).
    dim
        Width of the shared query / token space.
    pretrained
        Start the encoder from the ImageNet EfficientNet-Lite0 weights (else from scratch).
    gene_semantic
        Use the text embeddings as gene queries (else free learned queries: the ablation).
    """

    def __init__(
        self,
        gene_embeddings: np.ndarray,
        dim: int = 128,
        pretrained: bool = True,
        gene_semantic: bool = True,
    ) -> None:
        super().__init__()
        n_genes, e_dim = gene_embeddings.shape
        self.gene_semantic = gene_semantic
        self.encoder = efficientnet_lite0(pretrained=pretrained)
        self.encoder._fc = nn.Identity()  # the ImageNet classifier is not used
        self.token = nn.Sequential(nn.Linear(self.encoder.out_channels, dim), nn.LayerNorm(dim))
        if gene_semantic:
            self.register_buffer("gene_text", torch.from_numpy(gene_embeddings.astype(np.float32)))
            self.query_proj = nn.Linear(e_dim, dim)
        else:
            self.free_queries = nn.Parameter(torch.randn(n_genes, dim) * 0.1)
        self.key_img = nn.Linear(dim, dim)
        self.value_img = nn.Linear(dim, dim)
        self.key_expr = nn.Linear(dim, dim)
        self.value_expr = nn.Linear(dim, dim)
        self.expr_scale = nn.Parameter(torch.randn(dim) * 0.1)
        self.readout = nn.Linear(dim, 1)
        self.gene_bias = nn.Parameter(torch.zeros(n_genes))
        self.proj_img = nn.Linear(dim, dim)
        self.proj_expr = nn.Linear(dim, dim)
        #: log-variances of the adaptive loss weighting (regression, alignment)
        self.log_vars = nn.Parameter(torch.zeros(2))
        self.dim = dim
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_std", torch.ones(n_genes))

    def queries(self) -> torch.Tensor:
        """``(G, d)`` gene queries."""
        if self.gene_semantic:
            return self.query_proj(self.gene_text)
        return self.free_queries

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, T, d)`` tokens of ``(N, H, W, 3)`` uint8 tiles (cells of the map + pooled)."""
        x = image.to(torch.float32).permute(0, 3, 1, 2)
        fmap = self.encoder.features(self.encoder.normalise(x))  # (N, C, h, w)
        cells = fmap.flatten(2).transpose(1, 2)  # (N, h·w, C)
        tokens = torch.cat([cells, fmap.mean(dim=(2, 3)).unsqueeze(1)], dim=1)
        return self.token(tokens)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.dim)
        return torch.softmax(scores, dim=-1) @ values

    def image_path(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, G, d)`` gene-wise image features (queries attending to image tokens)."""
        tokens = self.image_tokens(image)
        q = self.queries().unsqueeze(0)  # (1, G, d)
        return self._attend(q, self.key_img(tokens), self.value_img(tokens)) + q

    def expression_path(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, G, d)`` gene-wise expression features from standardised targets ``(N, G)``."""
        q = self.queries().unsqueeze(0)
        tokens = q + z.unsqueeze(-1) * self.expr_scale  # (N, G, d)
        return self._attend(q, self.key_expr(tokens), self.value_expr(tokens)) + q

    def standardised(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, G)`` prediction in standardised target units."""
        return self.readout(self.image_path(image)).squeeze(-1) + self.gene_bias

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, G)`` log1p CP10k from ``(N, H, W, 3)`` uint8 RGB (the exported path)."""
        return self.standardised(image) * self.target_std + self.target_mean

    def training_losses(
        self, image: torch.Tensor, z: torch.Tensor, temperature: float = 0.1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted total, regression MSE, InfoNCE) of a batch with standardised targets."""
        feats = self.image_path(image)
        pred = self.readout(feats).squeeze(-1) + self.gene_bias
        mse = torch.mean((pred - z) ** 2)
        a = nn.functional.normalize(self.proj_img(feats.mean(dim=1)), dim=-1)
        b = nn.functional.normalize(self.proj_expr(self.expression_path(z).mean(dim=1)), dim=-1)
        logits = a @ b.T / temperature
        labels = torch.arange(len(z))
        nce = 0.5 * (
            nn.functional.cross_entropy(logits, labels)
            + nn.functional.cross_entropy(logits.T, labels)
        )
        s = self.log_vars
        total = torch.exp(-s[0]) * mse + s[0] + torch.exp(-s[1]) * nce + s[1]
        return total, mse, nce
