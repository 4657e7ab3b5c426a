"""The models a panel offers, and one line about each (what it predicts, how well, where).

The bundled models are validated once per session; the Predict and measured-data panels
offer them first, the default model at the top.
"""

from __future__ import annotations

import functools
from typing import Any

import onnxruntime as ort

from napari_virtual_st.display import target_unit
from napari_virtual_st.predictor import ModelInfo
from napari_virtual_st.registry import (
    DEFAULT_MODEL_NAME,
    BundledModel,
    bundled_models,
    trained_on,
)

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


def first_provider_label() -> str:
    """What a run will likely run on, without trying a GPU here (a GPU provider is tried
    quietly when the run starts, in the run's process: loading CUDA/TensorRT libraries
    takes seconds and must not stall the panel as it opens)."""
    gpus = [
        p
        for p in ort.get_available_providers()
        if p in _PROVIDER_NAMES and p != "CPUExecutionProvider"
    ]
    if not gpus:
        return "CPU"
    return f"{provider_label(gpus)} if it works here, else CPU (checked at Run)"


#: What a held-out correlation key means, in words.
_METRIC_WORDS = {
    "PCC-ALL": "all genes",
    "PCC-HEG50": "the 50 most expressed genes",
    "PCC-HVG50": "the 50 most variable genes",
}


def model_summary(info: ModelInfo) -> str:
    """A few plain lines about a model: genes, how much tissue one value sees, what a value
    means, what it learnt from and how well it did on a patient it never saw."""
    lines = [
        f"{len(info.genes)} genes, each from the {info.tile_um:g} µm square of tissue around a "
        f"spot; values are {target_unit(info.target)}."
    ]
    tissue = trained_on(info)
    if tissue:
        lines.append(f"Learnt from {tissue}.")
    metric = metric_summary(info.metadata.get("metrics"))
    if metric:
        lines.append(metric)
    if "variance" in info.outputs:
        lines.append("Gives an uncertainty for each value.")
    if info.context is not None:
        lines.append(f"Each spot's value also uses its neighbours ({info.context.describe()}).")
    if info.slide_statistics is not None:
        lines.append(
            "Its features are standardised per slide: the run first measures them on up to "
            f"{info.slide_statistics.spots} spots spread over the slide's tissue."
        )
    return " ".join(lines)


def metric_summary(metrics: Any) -> str:
    """The model's held-out correlations (``vst.metrics`` PCC-* entries) in words."""
    if not isinstance(metrics, dict):
        return ""
    raw = metrics.get("raw")
    source = raw if isinstance(raw, dict) else metrics
    pcc = [
        (str(key), float(value))
        for key, value in source.items()
        if str(key).upper().startswith("PCC") and isinstance(value, (int, float))
    ]
    if not pcc:
        return ""
    parts = [f"{value:.2f} over {_METRIC_WORDS.get(key.upper(), key)}" for key, value in pcc[:3]]
    return (
        "On a patient it never saw, predicted and measured values correlated at "
        + ", ".join(parts)
        + " (1 = perfect, 0 = none)."
    )
