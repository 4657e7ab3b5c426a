"""Precision: run a model in float32 or int8, and the gate that says when int8 may be used.

A run asks for ``fp32``, ``int8`` or ``auto`` (:data:`PRECISIONS`). ``int8`` runs an int8
variant of the model: the one shipped beside a bundled model (``bundled_models/int8/``),
else one made here by :func:`quantize_int8` (static, per-channel QDQ calibrated on real
tissue tiles, the numerically sensitive layers kept in float, the calibration's activations
held within :data:`CALIBRATION_BUDGET_BYTES`) and cached on disk under the fp32 file's hash
(:func:`int8_cache_dir`). ``auto`` runs int8 only where a recorded
:class:`PrecisionGate` passed: per-gene agreement with fp32 on held-out real tiles (median
Pearson r ≥ :data:`MIN_MEDIAN_GENE_R`, every gene ≥ :data:`MIN_GENE_R`) and the held-out
metric of the int8 model inside the 95 % interval of the fp32 model's. The gate is recorded
in the int8 file's metadata (``vst.precision_gate``) for the fp32 file it was measured
against (its sha256), so a gate never outlives the model it judged. :func:`choose_model`
turns a model and a requested precision into the file to run and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from napari_virtual_st.contract import ModelInfo, attach_metadata, save_model
from napari_virtual_st.errors import ModelError, ParameterError
from napari_virtual_st.predictor import Predictor, extra_input_values

Precision = Literal["fp32", "int8", "auto"]
#: What a run may ask for.
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "auto")
#: The gate: the median over genes of the Pearson r between int8 and fp32 outputs on
#: held-out real tiles must reach this ...
MIN_MEDIAN_GENE_R = 0.99
#: ... and every gene's r this.
MIN_GENE_R = 0.95
#: The quantisation recipe (part of the cache key: a changed recipe makes new files).
RECIPE = "qdq-u8s8-perchannel-conv-gemm-percentile-v1"
#: Operators whose weights are quantised; everything else runs in float.
QUANTISED_OPS = ("Conv", "MatMul", "Gemm")

META_PRECISION = "vst.precision"
META_INT8_OF = "vst.int8_of_sha256"
META_GATE = "vst.precision_gate"
META_RECIPE = "vst.int8_recipe"
#: Optional key of an fp32 model: node names its int8 variants keep float.
META_FLOAT_NODES = "vst.int8_float_nodes"
#: Tiles per calibration batch (histogram calibrators need equal batches; a remainder of
#: fewer tiles is not fed).
CALIBRATION_BATCH = 16
#: Most bytes of intermediate activations the calibrator may hold at once. ONNX Runtime's
#: histogram calibrators keep every batch's activations of every calibrated tensor until
#: they are histogrammed: ResNet-18 at 224 px holds 23.7 MB per tile, so the sample slide's
#: 213 tiles peaked at 5.3 GB RSS. Beyond the budget, ranges are collected in chunks of
#: batches that fit and merged. 512 MiB: the rest of a quantising process (Python, ONNX
#: Runtime, the model, the tiles) takes about 0.45 GB, so a first ``--precision int8`` run
#: stays near 1 GB, the engine's RSS target, beside napari and an open slide on a laptop;
#: collecting in more, smaller chunks costs no more time than in a few (the merge re-bins each
#: chunk once either way; measured in benchmarks/README.md, Precision).
CALIBRATION_BUDGET_BYTES = 512 << 20


def check_precision(value: str) -> Precision:
    """``value`` if it is one of :data:`PRECISIONS`.

    Raises
    ------
    ParameterError
        Naming the choices.
    """
    if value not in PRECISIONS:
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return value


# -- the gate ---------------------------------------------------------------------------------
def gene_agreement(fp32: NDArray[np.floating], int8: NDArray[np.floating]) -> NDArray[np.float64]:
    """Pearson r per gene (column) between two models' outputs on the same tiles.

    A gene constant in both outputs agrees (r = 1) when the two constants are equal within
    float32 rounding, else it does not (r = 0); constant in one only: r = 0.
    """
    a = np.asarray(fp32, np.float64)
    b = np.asarray(int8, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ParameterError(
            f"outputs to compare must have one shape (N, G); got {a.shape}, {b.shape}"
        )
    da, db = a - a.mean(axis=0), b - b.mean(axis=0)
    va, vb = (da * da).sum(axis=0), (db * db).sum(axis=0)
    scale = np.maximum(np.abs(a).max(axis=0, initial=0.0), 1.0)
    flat_a = np.sqrt(va) <= 1e-6 * scale * np.sqrt(len(a))
    flat_b = np.sqrt(vb) <= 1e-6 * scale * np.sqrt(len(a))
    r = np.divide(
        (da * db).sum(axis=0), np.sqrt(va * vb), out=np.zeros(a.shape[1]), where=~flat_a & ~flat_b
    )
    both_flat = flat_a & flat_b
    same = np.isclose(a.mean(axis=0), b.mean(axis=0), rtol=1e-3, atol=1e-3)
    r[both_flat] = np.where(same[both_flat], 1.0, 0.0)
    return np.clip(r, -1.0, 1.0)


def pcc_all(pred: NDArray[np.floating], true: NDArray[np.floating]) -> float:
    """PCC-ALL: the mean over genes of the Pearson r between predicted and measured values
    (a gene constant in either counts as 0), as the models' held-out metrics report it."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    dp, dt = p - p.mean(axis=0), t - t.mean(axis=0)
    denom = np.sqrt((dp * dp).sum(axis=0) * (dt * dt).sum(axis=0))
    varying = (np.ptp(p, axis=0) > 0) & (np.ptp(t, axis=0) > 0) & (denom > 0)
    r = np.divide((dp * dt).sum(axis=0), denom, out=np.zeros(p.shape[1]), where=varying)
    return float(r.mean())


def pcc_all_interval(
    pred: NDArray[np.floating],
    true: NDArray[np.floating],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % bootstrap interval of :func:`pcc_all` (test spots resampled with replacement).

    Neighbouring spots are correlated, so the interval is if anything too narrow: a gate
    that asks an int8 model's metric to fall inside it is strict, not lenient.
    """
    rng = np.random.default_rng(seed)
    n = len(true)
    values = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        values[i] = pcc_all(pred[idx], true[idx])
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PrecisionGate:
    """Whether an int8 variant may stand in for its fp32 model, and the evidence.

    Attributes
    ----------
    fp32_sha256
        The fp32 model file the int8 variant was compared with.
    held_out
        What the held-out tiles were (e.g. "HER2ST A1, 346 spots, patient A (not trained on)").
    n_tiles
        Held-out tiles compared.
    median_gene_r, min_gene_r
        Median and least per-gene Pearson r between int8 and fp32 outputs on them.
    metric
        The held-out metric's name (``"PCC-ALL"``), or ``None`` when no measured values
        were available (the gate then cannot pass).
    metric_fp32, metric_int8
        Its value for each model.
    metric_ci95
        95 % bootstrap interval of the fp32 value.
    min_median_gene_r, min_gene_r_required
        The thresholds it was judged by.
    recipe
        How the int8 model was made.
    """

    fp32_sha256: str
    held_out: str
    n_tiles: int
    median_gene_r: float
    min_gene_r: float
    metric: str | None = None
    metric_fp32: float | None = None
    metric_int8: float | None = None
    metric_ci95: tuple[float, float] | None = None
    min_median_gene_r: float = MIN_MEDIAN_GENE_R
    min_gene_r_required: float = MIN_GENE_R
    recipe: str = RECIPE
    notes: str = field(default="", compare=False)

    @property
    def failures(self) -> list[str]:
        """Why the gate fails, one phrase per reason (empty: it passes)."""
        why = []
        if not self.median_gene_r >= self.min_median_gene_r:
            why.append(
                f"median per-gene r with fp32 is {self.median_gene_r:.4f}, "
                f"needs ≥ {self.min_median_gene_r}"
            )
        if not self.min_gene_r >= self.min_gene_r_required:
            why.append(
                f"the least-agreeing gene has r = {self.min_gene_r:.4f}, "
                f"needs ≥ {self.min_gene_r_required}"
            )
        if self.metric is None or self.metric_int8 is None or self.metric_ci95 is None:
            why.append("no held-out metric was measured")
        elif not self.metric_ci95[0] <= self.metric_int8 <= self.metric_ci95[1]:
            lo, hi = self.metric_ci95
            why.append(
                f"held-out {self.metric} is {self.metric_int8:.4f} with int8, outside fp32's "
                f"95 % interval [{lo:.4f}, {hi:.4f}]"
            )
        return why

    @property
    def passed(self) -> bool:
        """Whether int8 may be used for ``auto``."""
        return not self.failures

    def to_json(self) -> str:
        """The gate as JSON (for the int8 file's metadata)."""
        return json.dumps({**asdict(self), "passed": self.passed})

    @classmethod
    def from_json(cls, text: str) -> PrecisionGate:
        """The gate recorded by :meth:`to_json`.

        Raises
        ------
        ModelError
            When the record is unreadable.
        """
        try:
            raw = json.loads(text)
            raw.pop("passed", None)
            if raw.get("metric_ci95") is not None:
                raw["metric_ci95"] = tuple(raw["metric_ci95"])
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"the recorded int8 gate ({META_GATE}) is unreadable: {exc}") from exc


def judge_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    tiles: NDArray[np.uint8],
    *,
    held_out: str,
    measured: NDArray[np.floating] | None = None,
    metric_genes: Sequence[str] | None = None,
    n_boot: int = 1000,
) -> PrecisionGate:
    """Measure the gate of an int8 model against its fp32 original on held-out tiles.

    Parameters
    ----------
    fp32_path, int8_path
        The two model files.
    tiles
        ``(n, tile_px, tile_px, 3)`` uint8 real tissue tiles neither calibration nor
        training saw (spot ids ``0..n-1`` seed any extra inputs, the same for both).
    held_out
        What the tiles are, for the record.
    measured
        ``(n, G)`` measured values of the tiles' spots in the models' gene order (log1p
        CP10k), for the held-out metric; without them the gate cannot pass.
    metric_genes
        Unused unless given: the genes of ``measured`` (checked against the model's).
    n_boot
        Bootstrap resamples of the metric's interval.
    """
    fp32 = Predictor(fp32_path, providers=["cpu"])
    int8 = Predictor(int8_path, providers=["cpu"])
    if metric_genes is not None and tuple(metric_genes) != fp32.genes:
        raise ParameterError("the measured values must be in the model's gene order")
    ids = np.arange(len(tiles))
    a = fp32.predict(tiles, spot_index=ids).expression
    b = int8.predict(tiles, spot_index=ids).expression
    r = gene_agreement(a, b)
    metric: dict[str, Any] = {}
    if measured is not None:
        truth = np.asarray(measured, np.float64)
        if truth.shape != a.shape:
            raise ParameterError(f"measured values must be {a.shape}; got {truth.shape}")
        metric = {
            "metric": "PCC-ALL",
            "metric_fp32": pcc_all(a, truth),
            "metric_int8": pcc_all(b, truth),
            "metric_ci95": pcc_all_interval(a, truth, n_boot=n_boot),
        }
    return PrecisionGate(
        fp32_sha256=fp32.info.sha256,
        held_out=held_out,
        n_tiles=len(tiles),
        median_gene_r=float(np.median(r)),
        min_gene_r=float(np.min(r)),
        **metric,
    )


# -- quantisation -----------------------------------------------------------------------------
def fold_weight_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Cast(initializer)`` nodes (float16-stored weights) by float32 initializers, so
    the quantiser sees the weights as constants (it cannot quantise a weight behind a Cast)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    kept = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source in inits and to == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(inits[source]).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


def sensitive_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the weight-carrying nodes kept in float: the stem (the first one the image
    reaches) and the head (those after the last convolution, or the last one when there is
    no convolution); attention products (no constant weight) are never quantised."""
    heavy = [n for n in model.graph.node if n.op_type in QUANTISED_OPS]
    if not heavy:
        return []
    keep = {heavy[0].name}
    convs = [i for i, n in enumerate(heavy) if n.op_type == "Conv"]
    if convs and convs[-1] + 1 < len(heavy) and len(heavy) - convs[-1] - 1 <= 4:
        keep.update(n.name for n in heavy[convs[-1] + 1 :])
    else:
        keep.add(heavy[-1].name)
    return [n.name for n in heavy if n.name in keep]


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_tiles: NDArray[np.uint8],
    *,
    exclude: Sequence[str] | None = None,
    float_leading: int = 0,
    calibrate: str = "percentile",
    symmetric_activations: bool = False,
    per_channel: bool = True,
    unsigned_activations: bool = True,
    float_depthwise: bool = True,
    calibration_budget: float | None = None,
) -> Path:
    """Write an int8 variant of a contract model (static QDQ), calibrated on ``calibration_tiles``.

    Only :data:`QUANTISED_OPS` are quantised, per output channel, with int8 weights and uint8
    activations (ranges from the 99.999th percentile); :func:`sensitive_nodes` (stem, head),
    depthwise convolutions and every other operator (softmax, normalisation, stain
    deconvolution, samplers' arithmetic) stay float. Extra inputs
    (a sampler's noise) are fed as the engine feeds them. Metadata is copied and marked
    (``vst.precision`` = ``int8``, ``vst.int8_of_sha256``, ``vst.int8_recipe``).

    Parameters
    ----------
    fp32_path
        The contract model.
    out_path
        The int8 model to write (atomically).
    calibration_tiles
        ``(n, tile_px, tile_px, 3)`` uint8 real tissue tiles (a few hundred).
    exclude
        Node names to keep in float instead of :func:`sensitive_nodes`.
    float_leading
        Also keep the first this many weight-carrying nodes in float (the early,
        high-resolution layers of a convolutional encoder are the most sensitive to
        per-tensor activation ranges; see :func:`recipe`).
    calibrate
        ``"minmax"``, ``"percentile"`` or ``"entropy"``: how activation ranges are set.
    symmetric_activations, per_channel, unsigned_activations, float_depthwise
        Quantisation options (defaults: the recipe).
    calibration_budget
        Most bytes of calibration activations held at once (default
        :data:`CALIBRATION_BUDGET_BYTES`; ``math.inf``: every tile's at once, in one pass,
        as the shipped int8 variants were made). When the tiles' activations exceed it,
        ranges are collected in chunks of tiles and merged (histograms merged: the ranges
        can differ a little from one pass), recorded in the recipe as
        ``chunked_calibration``.

    Raises
    ------
    ParameterError
        If the tiles do not match the model.
    ModelError
        If the model has nothing worth quantising (no convolution or matrix product).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    info = Predictor(fp32_path, providers=["cpu"]).info
    tiles = _calibration_tiles(calibration_tiles, info.tile_px)
    source = _quantisable_source(fp32_path)
    heavy = [n.name for n in source.graph.node if n.op_type in QUANTISED_OPS]
    declared = declared_float_nodes(info, source)
    keep_float = _float_nodes(source, heavy, exclude, float_leading, float_depthwise)
    keep_float += declared
    recipe_used = {  # what the quantisation below applies, recorded in the int8 model
        "recipe": RECIPE,
        "float_nodes": len(set(keep_float)),
        "quantised_nodes": len(set(heavy) - set(keep_float)),
        "float_leading": float_leading,
        "calibrate": calibrate,
        "calibration_tiles": len(tiles),
        "symmetric_activations": symmetric_activations,
        "unsigned_activations": unsigned_activations,
        "per_channel": per_channel,
        "custom_exclude": exclude is not None,
        "declared_float_nodes": len(declared),
    }
    budget = CALIBRATION_BUDGET_BYTES if calibration_budget is None else calibration_budget
    return _write_int8(out_path, fp32_path, info, source, tiles, keep_float, recipe_used, budget)


def _write_int8(
    out_path: Path,
    fp32_path: Path,
    info: ModelInfo,
    source: onnx.ModelProto,
    tiles: NDArray[np.uint8],
    keep_float: list[str],
    recipe_used: dict[str, Any],
    budget: float,
) -> Path:
    """Quantise ``source`` (:func:`_quantise_qdq`) and write it, marked as the int8 variant
    of ``fp32_path``, to ``out_path`` atomically, once it loads as a contract model."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        model = _quantise_qdq(
            source, Path(tmp), tiles, info.extra_inputs, keep_float, recipe_used, budget
        )
        del model.metadata_props[:]
        attach_metadata(model, _int8_metadata(fp32_path, info.sha256, recipe_used))
        candidate = save_model(model, Path(tmp) / out_path.name)
        Predictor(candidate, providers=["cpu"])  # still a valid contract model
        os.replace(candidate, out_path)
    return out_path


def declared_float_nodes(info: ModelInfo, graph: onnx.ModelProto | None = None) -> list[str]:
    """Nodes the model itself says must stay float in int8 (``vst.int8_float_nodes``, a JSON
    list of node names; e.g. a branch whose own int8 failed its gate). Kept float whatever
    else the recipe chooses.

    Raises
    ------
    ModelError
        If the key is not a JSON list of node names, or names a node ``graph`` lacks.
    """
    raw = info.metadata.get(META_FLOAT_NODES[len("vst.") :])
    if raw is None:
        return []
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"metadata {META_FLOAT_NODES!r} must be a JSON list of node names")
    unknown = sorted(set(value) - {n.name for n in graph.graph.node}) if graph else []
    if unknown:
        raise ModelError(
            f"metadata {META_FLOAT_NODES!r} names {len(unknown)} node(s) the graph does not "
            f"have, e.g. {unknown[0]!r}: they could not be kept float"
        )
    return list(value)


def _float_nodes(
    source: onnx.ModelProto,
    heavy: list[str],
    exclude: Sequence[str] | None,
    float_leading: int,
    float_depthwise: bool,
) -> list[str]:
    """The weight-carrying nodes :func:`quantize_int8` keeps in float: ``exclude`` (else
    :func:`sensitive_nodes`), the first ``float_leading`` of ``heavy`` and, if
    ``float_depthwise``, the depthwise convolutions."""
    keep_float = list(sensitive_nodes(source) if exclude is None else exclude)
    keep_float += heavy[:float_leading]
    if float_depthwise:
        keep_float += [n.name for n in source.graph.node if _is_depthwise(n)]
    return keep_float


def _quantise_qdq(
    source: onnx.ModelProto,
    tmp: Path,
    tiles: NDArray[np.uint8],
    extras: Mapping[str, Any],
    keep_float: list[str],
    recipe_used: dict[str, Any],
    budget: float,
) -> onnx.ModelProto:
    """ONNX Runtime's static QDQ quantisation of ``source`` (its files in the folder
    ``tmp``): :data:`QUANTISED_OPS` but ``keep_float`` get int8 weights, activation ranges
    from ``tiles`` (with the ``extras`` inputs fed as the engine feeds them), the options as
    ``recipe_used`` records them (``calibrate``, ``per_channel``, ``unsigned_activations``,
    ``symmetric_activations``). When the calibration's activations would exceed
    ``budget`` bytes, ranges are collected in chunks and merged, and
    ``recipe_used`` gains a ``chunked_calibration`` record (absent: one pass, as before)."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    folded = tmp / "folded.onnx"
    onnx.save(source, str(folded))
    pre = tmp / "pre.onnx"
    quant_pre_process(str(folded), str(pre), skip_symbolic_shape=True)
    fused = _fused_float_nodes(source, onnx.load(str(pre)), keep_float)
    if fused:
        keep_float = [*keep_float, *fused]
        recipe_used["fused_float_nodes"] = len(fused)
    n_batches = len(tiles) // min(CALIBRATION_BATCH, len(tiles))
    per_batch = min(CALIBRATION_BATCH, len(tiles)) * calibration_bytes_per_tile(
        pre, tiles[:1], extras, recipe_used["calibrate"]
    )
    chunk = calibration_chunk_batches(n_batches, per_batch, budget)
    calibration = _calibration_reader(tiles, extras, chunk)
    if chunk < n_batches:
        recipe_used["chunked_calibration"] = {
            "chunks": len(calibration),
            "batches_per_chunk": chunk,
            "tiles_per_batch": min(CALIBRATION_BATCH, len(tiles)),
            "estimated_bytes_per_batch": per_batch,
            "budget_bytes": int(budget),
        }
    raw = tmp / "int8.onnx"
    # ONNX Runtime's calibrator print()s its progress ("Number of tensors : 39", …): that
    # would land in the CLI's output and a user's script between our own lines
    with contextlib.redirect_stdout(io.StringIO()):
        _quantize_static(
            quantize_static,
            pre,
            raw,
            calibration,
            keep_float,
            recipe_used,
            methods,
            chunked=chunk < n_batches,
        )
    return onnx.load(str(raw))


def _fused_float_nodes(
    source: onnx.ModelProto, pre: onnx.ModelProto, keep_float: Sequence[str]
) -> list[str]:
    """Nodes of ``pre`` (``source`` after ONNX Runtime's pre-processing) that must stay float
    although ``keep_float`` does not name them: its optimiser fuses some nodes under a new
    name (``MatMul`` + ``Add`` → ``Gemm`` named ``…/MatMulAddFusion``), which an exclusion
    by name misses, and the fused node was quantised, e.g. a ridge head's product and its
    output (``nsl_lite0_her2st``: median per-gene r with fp32 0.96 on C6 whatever else
    stayed float; 0.997 once the head stayed float). A node that carries a weight
    (initializer) of a node kept float stays float."""
    wanted = set(keep_float)
    inits = {i.name for i in source.graph.initializer}
    weights = {i for n in source.graph.node if n.name in wanted for i in n.input if i in inits}
    return [
        n.name
        for n in pre.graph.node
        if n.name not in wanted and n.op_type in QUANTISED_OPS and weights.intersection(n.input)
    ]


def calibration_chunk_batches(n_batches: int, bytes_per_batch: int, budget: float) -> int:
    """How many calibration batches one collection pass may take: all ``n_batches`` when
    they fit ``budget`` bytes together, else as many as fit (at least one).

    The passes are then made near-equal (``ceil(n / ceil(n / fit))`` batches), so the last
    is not a small remainder whose histogram would set little.

    Parameters
    ----------
    n_batches
        Calibration batches in all.
    bytes_per_batch
        What the calibrator holds per batch (:func:`calibration_bytes_per_tile`).
    budget
        Most bytes held at once (``math.inf``: no limit).
    """
    if bytes_per_batch * n_batches <= budget:
        return n_batches
    fit = max(1, int(budget // max(bytes_per_batch, 1)))
    passes = -(-n_batches // fit)
    return -(-n_batches // passes)


def calibration_bytes_per_tile(
    pre: str | Path,
    probe: NDArray[np.uint8],
    extras: Mapping[str, Any],
    calibrate: str,
) -> int:
    """Bytes ONNX Runtime's calibrator holds for the ``probe`` tiles (per tile: give one).

    The calibrated tensors are those ONNX Runtime picks (float inputs and outputs of
    :data:`QUANTISED_OPS` nodes with a known type in ``pre``, the shape-inferred model it
    augments); the model is run on ``probe`` (one tile) with them as outputs. Histogram
    calibrators (``percentile``, ``entropy``) keep every calibrated tensor and the model's
    outputs until a pass ends, then make a flat copy and its absolute value of one tensor at
    a time: their cost per tile is the sum of those tensors' bytes plus twice the largest.
    ``minmax`` keeps two reduced values per calibrated tensor per batch (counted per tile:
    an over-estimate that keeps it far below any budget).

    Parameters
    ----------
    pre
        The model as the quantiser calibrates it (after ``quant_pre_process``).
    probe
        ``(k, tile_px, tile_px, 3)`` uint8 tiles to run (one is enough: the bytes scale with
        the batch); the result is for all ``k``.
    extras
        The model's extra inputs (:attr:`ModelInfo.extra_inputs`), fed as the engine feeds them.
    calibrate
        The calibration method (``"minmax"``, ``"percentile"``, ``"entropy"``).
    """
    import onnxruntime as ort

    model = onnx.load(str(pre))
    graph = model.graph
    infos = {vi.name: vi for vi in graph.value_info}
    infos.update({o.name: o for o in graph.output})
    infos.update({i.name: i for i in graph.input})
    inits = {i.name for i in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    tensors = sorted(
        {
            name
            for node in graph.node
            if node.op_type in QUANTISED_OPS
            for name in (*node.input, *node.output)
            if name in infos
            and name not in inits
            and infos[name].type.HasField("tensor_type")
            and infos[name].type.tensor_type.elem_type in floats
        }
    )
    if calibrate == "minmax":
        outputs_bytes = 0
        for value in _probe_outputs(ort, model, [], probe, extras):
            outputs_bytes += value.nbytes
        return outputs_bytes + 8 * len(tensors)
    original = {o.name for o in graph.output}
    extra = [infos[name] for name in tensors if name not in original]
    values = _probe_outputs(ort, model, extra, probe, extras)
    sizes = [v.nbytes for v in values]
    return int(sum(sizes) + 2 * max(sizes, default=0))


def _probe_outputs(
    ort: Any,
    model: onnx.ModelProto,
    extra_outputs: Sequence[onnx.ValueInfoProto],
    probe: NDArray[np.uint8],
    extras: Mapping[str, Any],
) -> list[np.ndarray]:
    """The model's outputs, and ``extra_outputs`` made outputs, on the ``probe`` tiles."""
    graph = model.graph
    graph.output.extend(extra_outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    ids = np.arange(len(probe))
    feeds: dict[str, Any] = {"image": probe}
    feeds.update({k: extra_input_values(s, ids) for k, s in extras.items()})
    return [np.asarray(v) for v in session.run(None, feeds)]


def _quantize_static(
    quantize_static: Any,
    pre: Path,
    raw: Path,
    calibration: Any,
    keep_float: list[str],
    recipe_used: dict[str, Any],
    methods: Mapping[str, Any],
    *,
    chunked: bool = False,
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType

    extra_options: dict[str, Any] = {
        "ActivationSymmetric": recipe_used["symmetric_activations"],
        "WeightSymmetric": True,
        "MatMulConstBOnly": True,
    }
    if chunked:
        # one collection pass per chunk of the reader (its __len__ counts chunks, so a
        # stride of one always divides it), each pass's activations merged into the
        # ranges (histograms) and freed before the next
        extra_options["CalibStridedMinMax"] = 1

    quantize_static(
        str(pre),
        str(raw),
        calibration,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTISED_OPS),
        per_channel=recipe_used["per_channel"],
        activation_type=QuantType.QUInt8
        if recipe_used["unsigned_activations"]
        else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep_float,
        calibrate_method=methods[recipe_used["calibrate"]],
        extra_options=extra_options,
    )


def _calibration_tiles(calibration_tiles: NDArray[np.uint8], tile_px: int) -> NDArray[np.uint8]:
    """The calibration tiles, contiguous; raises unless ``(n, tile_px, tile_px, 3)`` uint8."""
    tiles = np.ascontiguousarray(calibration_tiles)
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (tile_px, tile_px, 3):
        raise ParameterError(
            f"calibration tiles must be uint8 (n, {tile_px}, {tile_px}, 3); got "
            f"{tiles.dtype} {tiles.shape}"
        )
    return tiles


def _quantisable_source(fp32_path: Path) -> onnx.ModelProto:
    """The float model as quantisation starts from it: weight casts folded, every node
    named (exclusions go by name); raises when nothing in it is worth quantising."""
    source = fold_weight_casts(onnx.load(str(fp32_path)))
    for index, node in enumerate(source.graph.node):
        if not node.name:
            node.name = f"vst_{node.op_type}_{index}"
    if not any(n.op_type in QUANTISED_OPS for n in source.graph.node):
        raise ModelError(
            f"{fp32_path.name} has no convolution or matrix product to quantise: int8 would "
            "not make it faster"
        )
    return source


def _calibration_reader(
    tiles: NDArray[np.uint8], extras: Mapping[str, Any], batches_per_chunk: int | None = None
) -> Any:
    """onnxruntime's calibration feed: the tiles in equal batches of
    :data:`CALIBRATION_BATCH` (histogram calibrators need them), with the extra inputs (a
    sampler's noise) fed as the engine feeds them.

    With ``batches_per_chunk``, the batches are also grouped in chunks of that many (the
    last may be smaller): ``len()`` counts chunks and ``set_range(i, j)`` feeds chunks
    ``i..j-1`` only, as onnxruntime's strided collection (``CalibStridedMinMax``) asks.
    The batches themselves are the same either way."""
    from onnxruntime.quantization import CalibrationDataReader

    step = min(CALIBRATION_BATCH, len(tiles))
    starts = list(range(0, len(tiles) - step + 1, step))
    per_chunk = batches_per_chunk or max(len(starts), 1)
    chunks = [starts[i : i + per_chunk] for i in range(0, len(starts), per_chunk)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._starts = iter(starts)

        def __len__(self) -> int:
            return len(chunks)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._starts = iter([s for chunk in chunks[start_index:end_index] for s in chunk])

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._starts, None)
            if start is None:
                return None
            batch = tiles[start : start + step]
            ids = np.arange(start, start + len(batch))
            feeds = {"image": batch}
            feeds.update({k: extra_input_values(s, ids) for k, s in extras.items()})
            return feeds

    return _Reader()


def _int8_metadata(
    fp32_path: Path, fp32_sha256: str, recipe_used: dict[str, Any]
) -> dict[str, str]:
    """The float model's metadata, marked as its int8 variant (its gate is not copied)."""
    meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    meta["vst.name"] = f"{meta.get('vst.name', fp32_path.stem)} (int8)"
    meta[META_PRECISION] = "int8"
    meta[META_INT8_OF] = fp32_sha256
    meta[META_RECIPE] = json.dumps(recipe_used)
    meta.pop(META_GATE, None)
    return meta


def record_gate(int8_path: str | Path, gate: PrecisionGate) -> Path:
    """Write ``gate`` into the int8 model's metadata (atomically); the graph is unchanged."""
    int8_path = Path(int8_path)
    model = onnx.load(str(int8_path))
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(META_INT8_OF) != gate.fp32_sha256:
        raise ModelError(
            f"{int8_path.name} was not made from the model the gate was measured against"
        )
    meta[META_GATE] = gate.to_json()
    del model.metadata_props[:]
    attach_metadata(model, meta)
    return save_model(model, int8_path)


def recorded_gate(metadata: Mapping[str, Any]) -> PrecisionGate | None:
    """The gate recorded in a model's ``vst.`` metadata (keys without the prefix), if any."""
    raw = metadata.get(META_GATE.removeprefix("vst."))
    if raw is None:
        return None
    return PrecisionGate.from_json(raw if isinstance(raw, str) else json.dumps(raw))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, as the engine records a model's."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_depthwise(node: onnx.NodeProto) -> bool:
    """A grouped (depthwise) convolution: few weights per output, poorly served by int8."""
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


# -- choosing the file to run -----------------------------------------------------------------
def precision_of(metadata: Mapping[str, Any]) -> Literal["fp32", "int8"]:
    """The precision a model file runs in, from its ``vst.`` metadata (keys without the
    prefix): ``int8`` for a variant made by :func:`quantize_int8`, else ``fp32``."""
    return "int8" if metadata.get(META_PRECISION.removeprefix("vst.")) == "int8" else "fp32"


def shipped_int8_dir() -> Path:
    """Folder of the int8 variants shipped with the bundled models (same file names)."""
    from napari_virtual_st.registry import bundled_models_dir

    return bundled_models_dir() / "int8"


#: Beside the shipped variants: every bundled model's gate, passed or not, by file name
#: (``{"nsl_her2st.onnx": {"gate": {...}, "cannot": "why"}}``), so a model whose int8 failed is
#: not quantised again on a user's machine only to fail the same way.
GATES_INDEX = "gates.json"


def _recorded_entry(path: Path, fp32_sha256: str) -> tuple[PrecisionGate, dict] | None:
    """The gate recorded in :data:`GATES_INDEX` for this exact bundled model file (its name
    and its sha256), with the whole entry; ``None`` where there is none or it is unreadable."""
    index = shipped_int8_dir() / GATES_INDEX
    try:
        entry = json.loads(index.read_text()).get(path.name) if index.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("gate"), dict):
        return None
    try:
        gate = PrecisionGate.from_json(json.dumps(entry["gate"]))
    except ModelError:
        return None
    return None if gate.fp32_sha256 != fp32_sha256 else (gate, entry)


def recorded_failure(path: Path, fp32_sha256: str) -> PrecisionGate | None:
    """The failed gate recorded for this exact bundled model file, if any."""
    found = _recorded_entry(path, fp32_sha256)
    return None if found is None or found[0].passed else found[0]


def recorded_not_shipped(path: Path, fp32_sha256: str) -> tuple[PrecisionGate, str] | None:
    """For a bundled model whose int8 variant passed its gate but was not shipped (it ran
    no faster than fp32): the gate and the recorded reason; else ``None``."""
    found = _recorded_entry(path, fp32_sha256)
    if found is None or not found[0].passed or not isinstance(found[1].get("not_shipped"), str):
        return None
    return found[0], found[1]["not_shipped"]


def int8_cache_dir() -> Path:
    """Where int8 variants made on this machine are kept: ``$VST_CACHE_DIR/int8``, else
    ``$XDG_CACHE_HOME/napari-virtual-st/int8``, else ``~/.cache/napari-virtual-st/int8``."""
    from napari_virtual_st.predictor import cache_dir

    return cache_dir("int8")


def _recipe_key() -> str:
    import onnxruntime as ort

    return hashlib.sha256(f"{RECIPE}|{ort.__version__}".encode()).hexdigest()[:8]


def cached_int8_path(fp32_sha256: str) -> Path:
    """The cache file of the int8 variant of the fp32 model hashed ``fp32_sha256``."""
    return int8_cache_dir() / f"{fp32_sha256[:24]}-{_recipe_key()}.onnx"


def sample_calibration_tiles(tile_px: int, tile_um: float, limit: int = 256) -> NDArray[np.uint8]:
    """Real tissue tiles for calibration, at the model's geometry, from the sample slide
    shipped with the package (Aperio CMU-1-Small-Region.svs, H&E), overlapping by half.

    Raises
    ------
    ModelError
        When the slide gives too few tissue tiles at this tile size.
    """
    from napari_virtual_st.registry import sample_slide_path
    from napari_virtual_st.slide import Slide

    with Slide(sample_slide_path()) as slide:
        width, height = slide.dimensions
        step = tile_um / slide.mpp / 2
        half = tile_um / slide.mpp / 2
        xs = np.arange(half, width - half + 1, step)
        ys = np.arange(half, height - half + 1, step)
        tiles = [slide.read_tile((x, y), tile_px, tile_um) for y in ys for x in xs]
    stack = np.stack(tiles) if tiles else np.zeros((0, tile_px, tile_px, 3), np.uint8)
    tissue = stack[stack.reshape(len(stack), -1).mean(axis=1) < 215]
    if len(tissue) < 16:
        raise ModelError(
            f"the sample slide gives only {len(tissue)} tissue tiles of {tile_um:g} µm to "
            "calibrate int8 on; quantise with your own tiles (napari_virtual_st.precision.quantize_int8)"
        )
    pick = np.linspace(0, len(tissue) - 1, min(limit, len(tissue))).round().astype(int)
    return np.ascontiguousarray(tissue[pick])


@dataclass(frozen=True)
class ModelChoice:
    """The model file a run uses for a requested precision, and why.

    Attributes
    ----------
    path
        The file to run (the model itself, or its int8 variant).
    precision
        What it runs in: ``"fp32"`` or ``"int8"``.
    requested
        What was asked for.
    reason
        One line for the user.
    gate
        The recorded gate consulted, if any.
    """

    path: Path
    precision: Literal["fp32", "int8"]
    requested: Precision
    reason: str
    gate: PrecisionGate | None = None


def _variant_for(path: Path, fp32_sha256: str) -> tuple[Path, PrecisionGate | None] | None:
    """A shipped or cached int8 variant made from this exact fp32 file, and its gate."""
    from napari_virtual_st.contract import read_metadata

    for candidate in (shipped_int8_dir() / path.name, cached_int8_path(fp32_sha256)):
        if not candidate.is_file():
            continue
        try:
            meta = read_metadata(onnx.load(str(candidate), load_external_data=False)).as_dict()
        except Exception:  # a damaged cache file is passed over (and made again)
            continue
        if meta.get(META_INT8_OF.removeprefix("vst.")) != fp32_sha256:
            continue
        try:
            return candidate, recorded_gate(meta)
        except ModelError:
            return candidate, None
    return None


def choose_model(
    model_path: str | Path,
    requested: str = "fp32",
    *,
    calibration_tiles: NDArray[np.uint8] | None = None,
) -> ModelChoice:
    """The file to run for ``model_path`` at the ``requested`` precision.

    ``fp32``: the model as it is. ``int8``: its shipped int8 variant, else a cached one,
    else one quantised now (calibrated on ``calibration_tiles``, by default tiles of the
    sample slide) and cached under the model file's hash, unless a failed gate is recorded
    for this very file (:data:`GATES_INDEX`: refused). ``auto``: the int8 variant only
    when its recorded gate passed for this very file, else fp32 (the reason says why).
    A model file that is itself int8 runs as it is.

    Raises
    ------
    ParameterError
        For an unknown precision.
    ModelError
        When ``int8`` is asked for a model that cannot be quantised (one taking slide
        statistics: its calibration would need them), or whose int8 variant is recorded to
        have failed its gate.
    """
    wanted = check_precision(requested)
    path = Path(model_path)
    if wanted == "fp32":  # the file as it is (the Predictor refuses a broken one)
        return ModelChoice(path, "fp32", wanted, "fp32 as asked")
    info = Predictor(path, providers=["cpu"]).info  # a broken model: its ModelError
    if precision_of(info.metadata) == "int8":
        return ModelChoice(
            path, "int8", wanted, f"{path.name} is an int8 model", recorded_gate(info.metadata)
        )
    if info.slide_statistics is not None:  # calibration would need each slide's statistics
        why = (
            f"{path.name} standardises its features per slide, and int8 calibration does not "
            "measure slide statistics yet"
        )
        if wanted == "auto":
            return ModelChoice(path, "fp32", wanted, f"fp32: {why}")
        raise ModelError(f"{why}: use --precision fp32 or auto")
    sha = info.sha256
    found = _variant_for(path, sha)
    # only a variant whose own gate passed overrides a failure recorded for this file: a
    # cached one made on first use, before the failure was recorded, must not
    vouched = found is not None and found[1] is not None and found[1].passed
    failed = None if vouched else recorded_failure(path, sha)
    if failed is not None:
        why = "; ".join(failed.failures)
        if wanted == "auto":
            return ModelChoice(
                path, "fp32", wanted, f"fp32: int8 failed its accuracy gate ({why})", failed
            )
        raise ModelError(
            f"{path.name} cannot run in int8: its int8 variant failed the accuracy gate on "
            f"held-out tiles ({why}); use --precision fp32 or auto"
        )
    if wanted == "auto":
        return _auto_choice(path, found, sha)
    return _int8_choice(path, info, found, calibration_tiles)


def _auto_choice(
    path: Path, found: tuple[Path, PrecisionGate | None] | None, sha: str
) -> ModelChoice:
    """``auto`` for an fp32 model with no recorded failure: its int8 variant (``found``)
    when its recorded gate passed, else fp32 (the reason says why)."""
    if found is None:
        unshipped = recorded_not_shipped(path, sha)
        if unshipped is not None:
            return ModelChoice(
                path,
                "fp32",
                "auto",
                f"fp32: int8 passed its accuracy gate, but {unshipped[1]}",
                unshipped[0],
            )
        return ModelChoice(
            path,
            "fp32",
            "auto",
            "fp32: no int8 variant with a recorded accuracy gate for this model",
        )
    variant, gate = found
    if gate is None:
        return ModelChoice(
            path, "fp32", "auto", "fp32: its int8 variant has no recorded accuracy gate"
        )
    if not gate.passed:
        return ModelChoice(
            path,
            "fp32",
            "auto",
            "fp32: int8 failed its accuracy gate (" + "; ".join(gate.failures) + ")",
            gate,
        )
    return ModelChoice(
        variant,
        "int8",
        "auto",
        f"int8: passed its accuracy gate (median gene r {gate.median_gene_r:.3f}, "
        f"least {gate.min_gene_r:.3f}; held-out {gate.metric} {gate.metric_int8:.3f})",
        gate,
    )


def _int8_choice(
    path: Path,
    info: ModelInfo,
    found: tuple[Path, PrecisionGate | None] | None,
    calibration_tiles: NDArray[np.uint8] | None,
) -> ModelChoice:
    """``int8`` for an fp32 model with no recorded failure: its variant (``found``), else
    one quantised now and cached under the model's hash."""
    if found is not None:
        variant, gate = found
        where = "shipped" if variant.parent == shipped_int8_dir() else "cached"
        return ModelChoice(variant, "int8", "int8", f"int8 as asked ({where} variant)", gate)
    target = cached_int8_path(info.sha256)
    tiles = (
        sample_calibration_tiles(info.tile_px, info.tile_um)
        if calibration_tiles is None
        else calibration_tiles
    )
    quantize_int8(path, target, tiles)
    return ModelChoice(
        target,
        "int8",
        "int8",
        f"int8 as asked (quantised now, {len(tiles)} calibration tiles; no accuracy gate recorded)",
    )
