"""Export the whole DDIM sampler of a Stem model into one contract ONNX file.

The graph takes ``image`` uint8 ``(N, 16, 16, 3)`` and ``noise`` float32 ``(N, K, G)`` (declared
in ``vst.extra_inputs`` as standard normal, so the engine's Predictor feeds it, seeded per spot
id) and returns ``expression`` (mean of the K samples) and ``variance`` (their variance). The
DDIM steps are unrolled in the graph.

``export_stem(model, path, ModelMetadata(...), n_steps=..., n_samples=...)`` sets the
metadata's outputs and ``noise`` extra input from the sampler and hands it to the engine's public
:func:`~napari_virtual_st.onnx_export.export_torch_model`, whose check feeds torch the very
noise the Predictor feeds ONNX Runtime, seeded per spot id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.stem.model import StemModel, StemSampler
from models.stem.train import NOISE_SEED
from napari_virtual_st.contract import ModelMetadata
from napari_virtual_st.onnx_export import export_torch_model


@dataclass(frozen=True)
class StemExportReport:
    """Where the sampler was written and how closely ONNX Runtime (fed by the Predictor)
    reproduces the torch sampler on the same noise."""

    path: Path
    max_abs_diff: float
    n_steps: int
    n_samples: int


def noise_spec(n_samples: int, n_genes: int, seed: int = NOISE_SEED) -> dict[str, Any]:
    """The ``vst.extra_inputs`` entry of the sampler's ``noise`` input."""
    return {
        "dtype": "float32",
        "shape": ["N", int(n_samples), int(n_genes)],
        "distribution": "normal",
        "seed": int(seed),
    }


def export_stem(
    model: StemModel,
    path: str | Path,
    metadata: ModelMetadata,
    *,
    n_steps: int,
    n_samples: int,
    check_tiles: NDArray[np.uint8] | None = None,
    tolerance: float = 1e-4,
    opset: int = 18,
) -> StemExportReport:
    """Write ``model``'s DDIM sampler (``n_steps`` steps, ``n_samples`` samples) to the contract.

    ``metadata`` describes the model (genes, tile size, family, target, provenance); its
    ``outputs`` and ``extra_inputs`` are set here from the sampler's graph (``expression`` and
    ``variance``; the ``noise`` input of :func:`noise_spec`).

    Raises
    ------
    ModelError
        If the graph breaks the contract or the Predictor's output differs from the torch
        sampler on the same per-spot noise by more than ``tolerance``.
    """
    sampler = StemSampler(model.eval(), n_steps).eval()
    metadata = replace(
        metadata,
        outputs=("expression", "variance"),
        extra_inputs={"noise": noise_spec(n_samples, model.n_genes)},
    )
    report = export_torch_model(
        sampler, path, metadata, opset=opset, check_tiles=check_tiles, tolerance=tolerance
    )
    return StemExportReport(report.path, report.max_abs_diff, n_steps, n_samples)
