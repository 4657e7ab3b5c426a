"""Auxiliary Gene Learning (issue 19 item 4): extra genes as training targets only.

A model is trained on the gene panel *plus* ``n_aux`` further genes and scored on the panel
alone: the extra targets can only help through parameters the genes share (an image trunk, a
denoiser), as an auxiliary task. The auxiliary genes are fixed before any score is seen: the
next ``n_aux`` genes by mean log1p CP10k over the training spots, among genes measured in every
training section (the rule :func:`~models.workshop.data.gene_panel` uses for the panel, ranks
``n_panel + 1 … n_panel + n_aux``). Nothing about the held-out section chooses them.

Methods whose genes share no parameter (the colour ridge, NSL: per-gene deconvolution and
head) cannot change by construction; ``tests/test_workshop.py`` checks that on the ridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.workshop.data import SectionData, gene_panel


def auxiliary_genes(train: Sequence[SectionData], genes: Sequence[str], n_aux: int) -> list[str]:
    """The ``n_aux`` genes after ``genes`` in the training sections' mean-expression ranking."""
    ranked = gene_panel(train, len(genes) + n_aux)
    panel = set(genes)
    return [g for g in ranked if g not in panel][:n_aux]


class AuxiliaryGenes:
    """``inner`` trained on the panel plus auxiliary genes; predicts the panel only.

    Parameters
    ----------
    inner
        A harness method (``fit(train, genes)``, ``predict(tiles)``).
    n_aux
        How many auxiliary genes to add.
    """

    def __init__(self, inner: Any, n_aux: int) -> None:
        if n_aux < 1:
            raise ValueError(f"n_aux must be at least 1, got {n_aux}")
        self.inner = inner
        self.n_aux = n_aux
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}_aux{n_aux}"

    def fit(self, train: Sequence[SectionData], genes: Sequence[str]) -> AuxiliaryGenes:
        self.genes_ = list(genes)
        self.auxiliary_ = auxiliary_genes(train, genes, self.n_aux)
        self.inner.fit(train, [*self.genes_, *self.auxiliary_])
        return self

    def predict(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        values = np.asarray(self.inner.predict(tiles))
        variance = getattr(self.inner, "variance_", None)
        if variance is not None:
            self.variance_ = np.asarray(variance)[:, : len(self.genes_)]
        return values[:, : len(self.genes_)]
