"""Synthetic ONNX models for tests (not trained on anything; named ``synthetic``).

``mean_colour_model`` predicts each gene as a fixed linear function of a tile's mean R, G,
B (scaled to 0..1), so expected outputs can be computed independently in NumPy. An optional
``noise`` input (declared as a ``vst.extra_inputs`` entry) adds the mean of each spot's noise
vector to all of its genes, which :func:`expected_noise` reproduces. With slide statistics
(``vst.slide_statistics``, :data:`STATISTICS_SPEC`) its features are the mean R, G, B, output
as ``features`` and standardised by the ``feature_mean`` / ``feature_std`` inputs before the
linear map (:func:`expected_standardised`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from napari_virtual_st.contract import ModelMetadata, attach_metadata, save_model

#: The ``vst.extra_inputs`` entry of the synthetic ``noise`` input (8 normal values a spot).
NOISE_SPEC: dict[str, Any] = {
    "dtype": "float32",
    "shape": ["N", 8],
    "distribution": "normal",
    "seed": 7,
}


#: The ``vst.slide_statistics`` of the synthetic model's standardised variant.
STATISTICS_SPEC: dict[str, Any] = {
    "features": "features",
    "mean": "feature_mean",
    "std": "feature_std",
    "spots": 16,
}


def mean_colour_weights(
    n_genes: int, seed: int = 0, channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The (C, G) weights and (G,) bias of the synthetic mean-colour model."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, n_genes)).astype(np.float32)
    bias = rng.normal(size=n_genes).astype(np.float32)
    if channels != 3:
        weights = np.resize(weights, (channels, n_genes))
    return weights, bias


def mean_colour_graph(
    n_genes: int = 5,
    tile_px: int = 32,
    *,
    seed: int = 0,
    with_variance: bool = False,
    image_dtype: int = TensorProto.UINT8,
    image_shape: list[Any] | None = None,
    image_name: str = "image",
    expression_dtype: int = TensorProto.FLOAT,
    noise_input: tuple[int, ...] | None = None,
    noise_dtype: int = TensorProto.FLOAT,
    slide_statistics: bool = False,
) -> onnx.ModelProto:
    """A graph ``image (N,H,W,3) uint8 → expression (N,G)`` (+ ``variance``) without metadata.

    ``image_shape`` may have any rank: the mean runs over every axis between the first and
    the last (channel) axis, and the weights have one row per channel. ``noise_input`` adds an
    input ``noise`` of shape ``(N, *noise_input)`` whose per-spot mean is added to every gene.
    ``slide_statistics`` adds the ``features`` output and the ``feature_mean`` /
    ``feature_std`` inputs (:data:`STATISTICS_SPEC`).
    """
    shape = image_shape if image_shape is not None else ["N", tile_px, tile_px, 3]
    channels = shape[-1] if isinstance(shape[-1], int) else 3
    weights, bias = mean_colour_weights(n_genes, seed, channels)
    inputs = [helper.make_tensor_value_info(image_name, image_dtype, shape)]
    nodes = [
        helper.make_node("Cast", [image_name], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["image_f", "axes_hw"], ["mean_rgb"], keepdims=0),
        helper.make_node("Div", ["mean_rgb", "c255"], ["mean01"]),
        helper.make_node(
            "MatMul", ["standardised" if slide_statistics else "mean01", "W"], ["lin"]
        ),
        helper.make_node("Add", ["lin", "b"], ["expression_f"]),
    ]
    inits = [
        numpy_helper.from_array(np.arange(1, len(shape) - 1, dtype=np.int64), "axes_hw"),
        numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(bias, "b"),
    ]
    if noise_input is not None:
        inputs.append(helper.make_tensor_value_info("noise", noise_dtype, ["N", *noise_input]))
        nodes.append(helper.make_node("Cast", ["noise"], ["noise_f"], to=TensorProto.FLOAT))
        nodes.append(
            helper.make_node("ReduceMean", ["noise_f", "axes_noise"], ["noise_mean"], keepdims=0)
        )
        nodes.append(helper.make_node("Unsqueeze", ["noise_mean", "axes_last"], ["noise_col"]))
        nodes.append(helper.make_node("Add", ["expression_f", "noise_col"], ["expression_n"]))
        inits.append(
            numpy_helper.from_array(
                np.arange(1, len(noise_input) + 1, dtype=np.int64), "axes_noise"
            )
        )
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes_last"))
        last = "expression_n"
    else:
        last = "expression_f"
    nodes.append(helper.make_node("Cast", [last], ["expression"], to=expression_dtype))
    outputs = [helper.make_tensor_value_info("expression", expression_dtype, ["N", n_genes])]
    if slide_statistics:
        for name in ("feature_mean", "feature_std"):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [channels]))
        nodes[3:3] = [
            helper.make_node("Sub", ["mean01", "feature_mean"], ["centred"]),
            helper.make_node("Div", ["centred", "feature_std"], ["standardised"]),
        ]
        nodes.append(helper.make_node("Identity", ["mean01"], ["features"]))
        outputs.append(
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels])
        )
    if with_variance:
        nodes.append(helper.make_node("Mul", ["expression_f", "expression_f"], ["variance"]))
        outputs.append(
            helper.make_tensor_value_info("variance", TensorProto.FLOAT, ["N", n_genes])
        )
    graph = helper.make_graph(nodes, "synthetic_mean_colour", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_mean_colour_model(
    path: Path,
    *,
    n_genes: int = 5,
    tile_px: int = 32,
    tile_um: float = 55.0,
    with_variance: bool = False,
    with_noise: bool = False,
    with_slide_statistics: bool = False,
    seed: int = 0,
    metadata_overrides: dict[str, str | None] | None = None,
    **graph_kwargs: Any,
) -> Path:
    """Write a synthetic contract model to ``path``; overrides replace (or with None, drop) keys.

    ``with_noise`` adds the ``noise`` input and declares it with :data:`NOISE_SPEC`;
    ``with_slide_statistics`` standardises the features per slide (:data:`STATISTICS_SPEC`).
    """
    if with_noise:
        graph_kwargs.setdefault("noise_input", tuple(NOISE_SPEC["shape"][1:]))
    model = mean_colour_graph(
        n_genes,
        tile_px,
        seed=seed,
        with_variance=with_variance,
        slide_statistics=with_slide_statistics,
        **graph_kwargs,
    )
    meta = ModelMetadata(
        genes=[f"SYNTH{i}" for i in range(n_genes)],
        tile_px=tile_px,
        tile_um=tile_um,
        family="baseline",
        target="synthetic",
        outputs=("expression", "variance") if with_variance else ("expression",),
        name="synthetic mean-colour model",
        license="CC0 (synthetic, for tests)",
        extra_inputs={"noise": NOISE_SPEC} if with_noise else {},
        slide_statistics=STATISTICS_SPEC if with_slide_statistics else None,
    ).to_props()
    for key, value in (metadata_overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    attach_metadata(model, meta)
    return save_model(model, path)


def expected_mean_colour(tiles: np.ndarray, n_genes: int, seed: int = 0) -> np.ndarray:
    """What the synthetic model must output for ``tiles``, computed in NumPy."""
    weights, bias = mean_colour_weights(n_genes, seed)
    mean01 = tiles.astype(np.float32).mean(axis=(1, 2)) / np.float32(255.0)
    return mean01 @ weights + bias


def expected_standardised(
    tiles: np.ndarray, mean: np.ndarray, std: np.ndarray, n_genes: int, seed: int = 0
) -> np.ndarray:
    """What the standardised variant must output for ``tiles`` given slide statistics."""
    weights, bias = mean_colour_weights(n_genes, seed)
    mean01 = tiles.astype(np.float32).mean(axis=(1, 2)) / np.float32(255.0)
    return ((mean01 - mean) / std) @ weights + bias


def expected_noise(spot_index: np.ndarray, spec: dict[str, Any] = NOISE_SPEC) -> np.ndarray:
    """``(N, 1)`` what the ``noise`` input adds for these spots, written out independently.

    The contract: a declared normal input is drawn per spot from
    ``numpy.random.default_rng([seed, spot])``, so it depends on the spot alone.
    """
    shape = tuple(spec["shape"][1:])
    rows = [
        np.random.default_rng([int(spec.get("seed", 0)), int(s)])
        .standard_normal(shape)
        .astype(np.float32)
        .mean()
        for s in spot_index
    ]
    return np.asarray(rows, np.float32)[:, None]
