"""Bring your own model: export a torch module to the ONNX model contract, and quantise it.

``export_torch_model(module, path, ModelMetadata(...))`` takes any ``torch.nn.Module`` whose
``forward`` maps a uint8 NHWC RGB batch to expression (and optionally variance) —
normalisation belongs inside ``forward`` — and writes one self-contained ``.onnx`` file with
that :class:`~napari_virtual_st.contract.ModelMetadata`, validated by
:class:`~napari_virtual_st.predictor.Predictor` and checked against torch on random tiles.
``record_metrics`` and ``store_weights_fp16`` rewrite a finished contract model.

``clamp_non_negative`` appends ``Relu`` to the expression output of a model whose target cannot
be negative (``log1p_cp10k``, counts); ``export_torch_model`` applies it to such targets.

``quantize_int8`` writes an int8 variant calibrated on real tissue tiles (ONNX Runtime static
quantisation, QDQ format) and reports its agreement with fp32 and the speed of both.

torch is only needed for :func:`export_torch_model` (the ``train`` extra).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from napari_virtual_st.contract import (
    ModelMetadata,
    attach_metadata,
    read_metadata,
    save_model,
)
from napari_virtual_st.errors import ModelError, ParameterError
from napari_virtual_st.predictor import Predictor, extra_input_values


@dataclass(frozen=True)
class ExportReport:
    """Outcome of an export: where, and how closely ONNX Runtime reproduces torch."""

    path: Path
    max_abs_diff: float
    providers: list[str]


def export_torch_model(
    module: Any,
    path: str | Path,
    metadata: ModelMetadata,
    *,
    opset: int = 18,
    check_tiles: NDArray[np.uint8] | None = None,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``module`` (uint8 ``(N, tile_px, tile_px, 3)`` → expression [, variance]) to the contract.

    Parameters
    ----------
    module
        A ``torch.nn.Module``; ``forward(image, *extra)`` returns a tensor ``(N, G)`` or a
        tuple ordered as ``outputs``; ``extra`` are the ``extra_inputs`` in their order.
    path
        The ``.onnx`` file to write (atomically).
    metadata
        The model's contract metadata. Its ``outputs`` name the graph's outputs, its
        ``extra_inputs`` the inputs beside ``image`` that the engine feeds (e.g. a sampler's
        noise), in ``forward``'s order; the torch/ONNX Runtime check feeds torch exactly what
        the Predictor feeds (:func:`~napari_virtual_st.predictor.extra_input_values`).
    opset
        ONNX opset.
    check_tiles
        Tiles on which torch and ONNX Runtime must agree (default: 4 random tiles).
    tolerance
        Largest absolute difference accepted between torch and ONNX Runtime.

    Returns
    -------
    ExportReport

    Raises
    ------
    ParameterError
        If the tile size is not positive.
    ModelError
        If the metadata is invalid, or the exported graph breaks the contract or disagrees
        with torch.
    """
    path = Path(path)
    if metadata.tile_px < 1 or metadata.tile_um <= 0:
        raise ParameterError("tile_px and tile_um must be positive")
    props = metadata.to_props()
    ModelMetadata.from_props(props)  # refuse bad metadata before the (slow) export
    module = module.eval()
    model = _torch_to_onnx(module, metadata, opset)
    strip_build_paths(model)
    clamped = metadata.target in NON_NEGATIVE_TARGETS
    if clamped:
        clamp_non_negative(model)
    attach_metadata(model, props)
    save_model(model, path)
    predictor = Predictor(path, providers=["cpu"])  # validates the contract
    tiles = (
        check_tiles
        if check_tiles is not None
        else np.random.default_rng(0).integers(
            0, 256, (4, metadata.tile_px, metadata.tile_px, 3), dtype=np.uint8
        )
    )
    diff = _torch_difference(module, predictor, tiles, clamp_expression=clamped)
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise ModelError(
            f"the exported model differs from torch by {diff:.3g} (tolerance {tolerance:g})"
        )
    return ExportReport(path, diff, predictor.providers)


def _torch_to_onnx(module: Any, metadata: ModelMetadata, opset: int) -> onnx.ModelProto:
    """torch's dynamo export of ``module`` with a dynamic batch axis on every input."""
    import torch

    extras = metadata.extra_inputs
    batch = torch.export.Dim("N", min=1, max=1 << 16)
    example = (
        torch.zeros((2, metadata.tile_px, metadata.tile_px, 3), dtype=torch.uint8),
        *(
            torch.from_numpy(extra_input_values({**spec, "distribution": "zeros"}, [0, 1]))
            for spec in extras.values()
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # torch's exporter warns about its own internals; they are not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                module,
                example,
                str(raw),
                input_names=["image", *extras],
                output_names=list(metadata.outputs),
                dynamic_shapes=tuple({0: batch} for _ in example),
                opset_version=opset,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        return onnx.load(str(raw))


def _torch_difference(
    module: Any, predictor: Predictor, tiles: NDArray[np.uint8], *, clamp_expression: bool = False
) -> float:
    """Largest absolute difference between torch and the Predictor on ``tiles``, both fed
    the same per-spot extra inputs (spot ids ``0..n-1``); torch's expression clamped at 0 when
    the graph's is (:func:`clamp_non_negative`)."""
    import torch

    ids = np.arange(len(tiles))
    extras = predictor.info.extra_inputs
    with torch.no_grad():
        expected = module(
            torch.from_numpy(np.ascontiguousarray(tiles)),
            *(torch.from_numpy(extra_input_values(spec, ids)) for spec in extras.values()),
        )
    expected_list = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    if clamp_expression:
        expected_list[0] = torch.clamp(expected_list[0], min=0.0)
    got = predictor.predict(tiles, spot_index=ids)
    got_list = [got.expression] + ([got.variance] if got.variance is not None else [])
    return max(
        float(np.max(np.abs(e.numpy() - g))) for e, g in zip(expected_list, got_list, strict=True)
    )


#: Targets whose values cannot be negative: their expression output is clamped at 0.
NON_NEGATIVE_TARGETS = ("log1p_cp10k", "counts")
#: Name of the node :func:`clamp_non_negative` appends (so a second call does nothing).
CLAMP_NODE = "vst_clamp_expression_non_negative"


def clamp_non_negative(model: onnx.ModelProto, output: str = "expression") -> onnx.ModelProto:
    """Clamp a graph output at 0 in place (``Relu`` appended; other outputs unchanged).

    The tensor ``output`` is renamed ``<output>__unclamped`` wherever the graph (and any
    subgraph) produces or reads it, so nodes that read it — e.g. a variance computed around
    the mean — see the same values as before; only the graph output is clamped. Calling it on
    an already clamped model does nothing.

    Raises
    ------
    ModelError
        If the graph has no output ``output``.
    """
    graph = model.graph
    if any(node.name == CLAMP_NODE for node in graph.node):
        return model
    if output not in [o.name for o in graph.output]:
        raise ModelError(f"the graph has no output {output!r} to clamp")
    inner = f"{output}__unclamped"
    _rename_tensor(graph, output, inner)
    graph.node.append(helper.make_node("Relu", [inner], [output], name=CLAMP_NODE))
    return model


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the tensor ``old`` to ``new`` wherever ``graph`` (or a subgraph of one of its
    nodes) produces or reads it, and in its value infos."""
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
        for sub in _subgraphs(node):
            _rename_tensor(sub, old, new)
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node's attributes hold (an ``If``'s branches, a ``Loop``'s body), in
    attribute order."""
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def strip_build_paths(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the exporter's per-node Python stack traces (they hold the builder's file paths)."""
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            kept = [p for p in node.metadata_props if "stack_trace" not in p.key]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    return model


def record_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Store held-out ``metrics`` in a contract model's ``vst.metrics`` (atomically), e.g.
    after scoring the very file that ships; the graph and other metadata are unchanged."""
    path = Path(path)
    model = onnx.load(str(path))
    attach_metadata(model, replace(read_metadata(model), metrics=metrics).to_props())
    save_model(model, path)
    Predictor(path, providers=["cpu"])  # still a valid contract model
    return path


@dataclass(frozen=True)
class HalfWeightsReport:
    """Outcome of :func:`store_weights_fp16`: file sizes and agreement with the fp32 model."""

    path: Path
    bytes_before: int
    bytes_after: int
    max_abs_diff: float
    #: Per-gene Pearson correlation of the two models' outputs on the check tiles.
    min_gene_pcc: float


def store_weights_fp16(
    source: str | Path,
    path: str | Path,
    *,
    check_tiles: NDArray[np.uint8],
    min_elements: int = 1024,
    tolerance: float = 0.05,
) -> HalfWeightsReport:
    """Write a copy of a contract model whose large weights are stored as float16.

    Each float32 initializer with at least ``min_elements`` values is stored as float16 and
    cast back to float32 where the graph reads it, so the file is about half the size while
    every computation stays float32 (ONNX Runtime folds the casts when the session starts).
    Metadata is kept. The copy is checked against the original on ``check_tiles`` (use real
    tissue tiles) and refused if any output differs by more than ``tolerance``.

    Parameters
    ----------
    source
        The float32 contract model.
    path
        Where to write the copy (atomically; may be ``source`` itself).
    check_tiles
        ``(n, tile_px, tile_px, 3)`` uint8 tiles for the agreement check.
    min_elements
        Smaller initializers (biases, scalars) stay float32.
    tolerance
        Largest absolute difference accepted between the two models' outputs.

    Raises
    ------
    ModelError
        If the copy breaks the contract or disagrees with the original beyond ``tolerance``.
    """
    source, path = Path(source), Path(path)
    original = Predictor(source, providers=["cpu"])
    if original.info.slide_statistics is not None:  # both fed the check tiles' statistics
        original = original.standardised_on(check_tiles)
    reference = original.predict(check_tiles, spot_index=np.arange(len(check_tiles)))
    model = onnx.load(str(source))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        values = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values, f"{name}__fp16"))
        casts.append(
            helper.make_node(
                "Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}__cast"
            )
        )
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        candidate = save_model(model, Path(tmp) / path.name)
        half = Predictor(candidate, providers=["cpu"])  # validates the contract
        if original.slide_statistics is not None:
            half = half.with_slide_statistics(original.slide_statistics)
        got = half.predict(check_tiles, spot_index=np.arange(len(check_tiles)))
        pairs = [(reference.expression, got.expression)]
        if reference.variance is not None and got.variance is not None:
            pairs.append((reference.variance, got.variance))
        diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
        if not diff <= tolerance:
            raise ModelError(
                f"float16 weights change the outputs by {diff:.3g} (tolerance {tolerance:g})"
            )
        pcc = _column_pcc(reference.expression, got.expression)
        bytes_before = source.stat().st_size
        bytes_after = candidate.stat().st_size
        candidate.replace(path)
    return HalfWeightsReport(path, bytes_before, bytes_after, diff, float(np.nanmin(pcc)))


@dataclass(frozen=True)
class QuantizationReport:
    """How an int8 model compares with its fp32 original on the same tiles."""

    path: Path
    median_gene_pcc: float
    min_gene_pcc: float
    max_abs_diff: float
    fp32_tiles_per_s: float
    int8_tiles_per_s: float

    @property
    def speedup(self) -> float:
        """int8 throughput over fp32 throughput."""
        return self.int8_tiles_per_s / self.fp32_tiles_per_s


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_tiles: NDArray[np.uint8],
    *,
    check_tiles: NDArray[np.uint8] | None = None,
    batch_size: int = 32,
) -> QuantizationReport:
    """Write an int8 (QDQ, per-channel) variant of a contract model, calibrated on real tiles,
    with :func:`napari_virtual_st.precision.quantize_int8`, and compare it with fp32.

    Parameters
    ----------
    fp32_path
        The contract model to quantise.
    out_path
        Where to write the int8 model (its metadata is copied, ``vst.name`` gains "int8").
    calibration_tiles
        ``(n, tile_px, tile_px, 3)`` uint8 tissue tiles for activation ranges.
    check_tiles
        Tiles to compare fp32 and int8 on (default: the calibration tiles).
    batch_size
        Batch size of the speed measurement.
    """
    from napari_virtual_st.precision import quantize_int8 as quantise

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    reference = Predictor(fp32_path, providers=["cpu"])
    tiles = np.ascontiguousarray(calibration_tiles)
    if tiles.ndim != 4 or tiles.shape[1:] != (reference.info.tile_px, reference.info.tile_px, 3):
        raise ParameterError("calibration tiles must match the model's tile size")
    quantise(fp32_path, out_path, tiles)  # the engine's recipe (stem, head, depthwise float)
    quantised = Predictor(out_path, providers=["cpu"])
    check = tiles if check_tiles is None else np.ascontiguousarray(check_tiles)
    a = reference.predict(check).expression
    b = quantised.predict(check).expression
    pcc = _column_pcc(a, b)
    return QuantizationReport(
        path=out_path,
        median_gene_pcc=float(np.median(pcc)),
        min_gene_pcc=float(np.min(pcc)),
        max_abs_diff=float(np.max(np.abs(a - b))),
        fp32_tiles_per_s=_throughput(reference, check, batch_size),
        int8_tiles_per_s=_throughput(quantised, check, batch_size),
    )


def _column_pcc(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    return np.divide((a * b).sum(axis=0), denom, out=np.ones(a.shape[1]), where=denom > 1e-12)


def _throughput(
    predictor: Predictor, tiles: NDArray[np.uint8], batch_size: int, min_seconds: float = 1.0
) -> float:
    reps = max(1, -(-batch_size // len(tiles)))
    batch = np.concatenate([tiles] * reps)[:batch_size]
    predictor.predict(batch)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        predictor.predict(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)
