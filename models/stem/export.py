"""Export the whole DDIM sampler of a Stem model into one contract ONNX file.

The graph takes ``image`` uint8 ``(N, 16, 16, 3)`` and ``noise`` float32 ``(N, K, G)`` (declared
in ``vst.extra_inputs`` as standard normal, so the engine's Predictor feeds it, seeded per spot
id) and returns ``expression`` (the point estimate: by default the mean head's prediction, the
samples' centre) and ``variance`` (the variance of the K samples). The DDIM steps are unrolled
in the graph.

``export_stem(model, path, ModelMetadata(...), n_steps=..., n_samples=...)`` sets the
metadata's outputs and ``noise`` extra input from the sampler and hands it to the engine's public
:func:`~napari_virtual_st.onnx_export.export_torch_model`, whose check feeds torch the very
noise the Predictor feeds ONNX Runtime, seeded per spot id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from models.stem.model import StemModel, StemSampler
from models.stem.train import NOISE_SEED
from napari_virtual_st.contract import ModelMetadata, attach_metadata, save_model
from napari_virtual_st.onnx_export import export_torch_model
from napari_virtual_st.precision import META_FLOAT_NODES, QUANTISED_OPS


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


def mean_head_nodes(model: onnx.ModelProto) -> list[str]:
    """The weight nodes of the conditional-mean head in an exported sampler (by the torch
    module scope the exporter records on each node)."""
    scope_key = "pkg.torch.onnx.name_scopes"
    names = []
    for node in model.graph.node:
        scopes = {p.key: p.value for p in node.metadata_props}.get(scope_key, "")
        if node.op_type in QUANTISED_OPS and "'model.mean_head'" in scopes:
            names.append(node.name)
    if not names:
        raise ValueError("no node of the mean head found in the exported sampler")
    return names


def export_stem(
    model: StemModel,
    path: str | Path,
    metadata: ModelMetadata,
    *,
    n_steps: int,
    n_samples: int,
    point: str = "mean_head",
    check_tiles: NDArray[np.uint8] | None = None,
    tolerance: float = 1e-4,
    opset: int = 18,
) -> StemExportReport:
    """Write ``model``'s DDIM sampler (``n_steps`` steps, ``n_samples`` samples, ``point``
    estimate as :class:`~models.stem.model.StemSampler`) to the contract.

    ``metadata`` describes the model (genes, tile size, family, target, provenance); its
    ``outputs`` and ``extra_inputs`` are set here from the sampler's graph (``expression`` and
    ``variance``; the ``noise`` input of :func:`noise_spec`). With the mean head as
    ``expression`` its nodes are declared ``vst.int8_float_nodes``: they are the head of that
    output, which the int8 recipe keeps float in every model (``precision.sensitive_nodes``
    finds only the denoiser's last layer here).

    Raises
    ------
    ModelError
        If the graph breaks the contract or the Predictor's output differs from the torch
        sampler on the same per-spot noise by more than ``tolerance``.
    """
    sampler = StemSampler(model.eval(), n_steps, point).eval()
    metadata = replace(
        metadata,
        outputs=("expression", "variance"),
        extra_inputs={"noise": noise_spec(n_samples, model.n_genes)},
    )
    report = export_torch_model(
        sampler, path, metadata, opset=opset, check_tiles=check_tiles, tolerance=tolerance
    )
    if point == "mean_head":
        graph = onnx.load(str(report.path))
        float_nodes = {META_FLOAT_NODES: json.dumps(mean_head_nodes(graph))}
        save_model(attach_metadata(graph, float_nodes), report.path)
    return StemExportReport(report.path, report.max_abs_diff, n_steps, n_samples)
