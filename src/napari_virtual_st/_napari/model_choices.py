"""The models a panel offers, and one line about each (what it predicts, how well, where).

The bundled models are validated once per session; the Predict and measured-data panels
offer them first, the default model at the top.
"""

from __future__ import annotations

import functools
from typing import Any

from napari_virtual_st.predictor import ModelInfo
from napari_virtual_st.registry import DEFAULT_MODEL_NAME, BundledModel, bundled_models

_PROVIDER_NAMES = {
    "TensorrtExecutionProvider": "TensorRT (NVIDIA GPU)",
    "CUDAExecutionProvider": "CUDA (NVIDIA GPU)",
    "CPUExecutionProvider": "CPU",
}


@functools.cache
def usable_bundled_models() -> tuple[BundledModel, ...]:
    """The bundled models, validated once per session; the default model first (the one
    choosers select), the others by name."""
    usable = [m for m in bundled_models() if m.info is not None]
    return tuple(sorted(usable, key=lambda m: m.name != DEFAULT_MODEL_NAME))


def provider_label(providers: list[str] | tuple[str, ...]) -> str:
    """Human name of the execution provider that runs first."""
    if not providers:
        return "unknown"
    return _PROVIDER_NAMES.get(providers[0], providers[0].removesuffix("ExecutionProvider"))


def model_summary(info: ModelInfo) -> str:
    """One line about a model: genes, tile size, what values mean, held-out metric."""
    parts = [
        f"{len(info.genes)} genes",
        f"{info.tile_px} px tiles of {info.tile_um:g} µm",
        info.target,
    ]
    metric = metric_summary(info.metadata.get("metrics"))
    if metric:
        parts.append(metric)
    if "variance" in info.outputs:
        parts.append("with uncertainty")
    if info.context is not None:
        parts.append(info.context.describe())
    return " · ".join(parts)


def metric_summary(metrics: Any) -> str:
    """The headline held-out correlations of a model's ``vst.metrics`` (PCC-* entries)."""
    if not isinstance(metrics, dict):
        return ""
    raw = metrics.get("raw")
    source = raw if isinstance(raw, dict) else metrics
    pcc = [
        f"{key} {value:.2f}"
        for key, value in source.items()
        if str(key).upper().startswith("PCC") and isinstance(value, (int, float))
    ]
    if not pcc:
        return ""
    where = metrics.get("test_section")
    return "held-out " + ", ".join(pcc[:3]) + (f" (test section {where})" if where else "")
