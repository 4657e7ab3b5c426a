"""Write the ``vst.`` metadata of the ONNX model contract onto any ONNX model.

:class:`~napari_virtual_st.predictor.Predictor` reads and validates the same keys; this
module is the writing side, used by the model workshop and by users bringing their own
models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from napari_virtual_st.predictor import CONTRACT_VERSION


def contract_metadata(
    *,
    genes: Sequence[str],
    tile_px: int,
    tile_um: float,
    family: str,
    target: str,
    outputs: Sequence[str] = ("expression",),
    name: str | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    extra_inputs: Mapping[str, Mapping[str, Any]] | None = None,
    description: str | None = None,
) -> dict[str, str]:
    """The ``vst.`` metadata strings for a model.

    Parameters
    ----------
    genes
        Gene names in output order.
    tile_px, tile_um
        Tile side in pixels and micrometres.
    family
        ``nsl``, ``dkan``, ``stem``, ``baseline`` or any other family name.
    target
        What a value means, e.g. ``log1p_cp10k``.
    outputs
        Output tensors provided: ``expression`` and optionally ``variance``.
    name, training, metrics, license, extra_inputs, description
        Optional keys (JSON-encoded where structured).
    """
    meta: dict[str, str] = {
        "vst.format_version": CONTRACT_VERSION,
        "vst.family": family,
        "vst.genes": json.dumps(list(genes)),
        "vst.tile_px": str(int(tile_px)),
        "vst.tile_um": repr(float(tile_um)),
        "vst.target": target,
        "vst.outputs": json.dumps(list(outputs)),
    }
    optional: dict[str, Any] = {
        "vst.name": name,
        "vst.license": license,
        "vst.description": description,
    }
    for key, value in optional.items():
        if value is not None:
            meta[key] = str(value)
    for key, value in (
        ("vst.training", training),
        ("vst.metrics", metrics),
        ("vst.extra_inputs", extra_inputs),
    ):
        if value is not None:
            meta[key] = json.dumps(value)
    return meta


def attach_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """Set (replace) metadata properties on ``model`` in place and return it."""
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save ``model`` as one self-contained ``.onnx`` file, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    tmp.replace(path)
    return path
