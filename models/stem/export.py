"""Export the whole DDIM sampler of a Stem model into one contract ONNX file.

The graph takes ``image`` uint8 ``(N, 16, 16, 3)`` and ``noise`` float32 ``(N, K, G)`` (declared
in ``vst.extra_inputs`` as standard normal, so the engine's Predictor feeds it, seeded per spot
id) and returns ``expression`` (mean of the K samples) and ``variance`` (their variance). The
DDIM steps are unrolled in the graph.

The engine's :func:`~napari_virtual_st.onnx_export.export_torch_model` traces a module with a
single ``image`` input; a sampler needs its noise as a second input, so this module does the
same steps (dynamo export with a dynamic batch, build paths stripped, ``vst.`` metadata,
atomic save, validation by the Predictor, torch vs ONNX Runtime check) for ``(image, noise)``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from models.stem.model import StemModel, StemSampler
from models.stem.train import NOISE_SEED, spot_noise
from napari_virtual_st.contract import attach_metadata, contract_metadata, save_model
from napari_virtual_st.errors import ModelError
from napari_virtual_st.onnx_export import strip_build_paths
from napari_virtual_st.predictor import Predictor


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
    *,
    n_steps: int,
    n_samples: int,
    genes: Sequence[str],
    tile_px: int,
    tile_um: float,
    name: str | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    description: str | None = None,
    check_tiles: NDArray[np.uint8] | None = None,
    tolerance: float = 1e-4,
    opset: int = 18,
) -> StemExportReport:
    """Write ``model``'s DDIM sampler (``n_steps`` steps, ``n_samples`` samples) to the contract.

    Raises
    ------
    ModelError
        If the graph breaks the contract or the Predictor's output differs from the torch
        sampler on the same per-spot noise by more than ``tolerance``.
    """
    path = Path(path)
    sampler = StemSampler(model.eval(), n_steps).eval()
    g = model.n_genes
    image = torch.zeros((2, tile_px, tile_px, 3), dtype=torch.uint8)
    noise = torch.zeros((2, n_samples, g), dtype=torch.float32)
    batch = torch.export.Dim("N", min=1, max=1 << 16)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter warns about its own internals; they are not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                sampler,
                (image, noise),
                str(raw),
                input_names=["image", "noise"],
                output_names=["expression", "variance"],
                dynamic_shapes=({0: batch}, {0: batch}),
                opset_version=opset,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        graph = onnx.load(str(raw))
    strip_build_paths(graph)
    meta = contract_metadata(
        genes=genes,
        tile_px=tile_px,
        tile_um=tile_um,
        family="stem",
        target="log1p_cp10k",
        outputs=("expression", "variance"),
        name=name,
        training=training,
        metrics=metrics,
        license=license,
        extra_inputs={"noise": noise_spec(n_samples, g)},
        description=description,
    )
    attach_metadata(graph, meta)
    save_model(graph, path)
    predictor = Predictor(path, providers=["cpu"])  # validates the contract
    tiles = (
        check_tiles
        if check_tiles is not None
        else np.random.default_rng(0).integers(0, 256, (4, tile_px, tile_px, 3), dtype=np.uint8)
    )
    ids = np.arange(len(tiles))
    with torch.no_grad():
        mean, var = sampler(
            torch.from_numpy(np.ascontiguousarray(tiles)),
            torch.from_numpy(spot_noise(ids, n_samples, g)),
        )
    got = predictor.predict(tiles, spot_index=ids)
    if got.variance is None:
        raise ModelError("the exported sampler has no variance output")
    diff = max(
        float(np.max(np.abs(mean.numpy() - got.expression))),
        float(np.max(np.abs(var.numpy() - got.variance))),
    )
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise ModelError(
            f"the exported sampler differs from torch by {diff:.3g} (tolerance {tolerance:g})"
        )
    return StemExportReport(path, diff, n_steps, n_samples)
