"""``Predictor``: one ONNX gene-expression model that follows the model contract.

The contract (see DESIGN.md): input ``image`` uint8 ``(N, H, W, 3)`` RGB with
``H = W = vst.tile_px``; output ``expression`` float32 ``(N, G)``; optional ``variance``;
metadata keys prefixed ``vst.``. A model that breaks the contract is refused with a message
naming the key or tensor at fault, before any slide is read.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from napari_virtual_st.errors import ModelError, ParameterError

CONTRACT_VERSION = "1"
REQUIRED_KEYS = ("format_version", "family", "genes", "tile_px", "tile_um", "target", "outputs")
KNOWN_OUTPUTS = ("expression", "variance")

#: Execution providers in order of preference; the first available ones are used.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
GPU_PROVIDERS = frozenset(
    {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)
_PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
#: What ``InferenceSession.run`` raises when a model fails on its input (private classes).
_ORT_RUN_ERRORS: tuple[type[Exception], ...] = tuple(
    cls
    for cls in (
        getattr(_ort_state, name, None)
        for name in ("Fail", "InvalidArgument", "RuntimeException", "EPFail")
    )
    if isinstance(cls, type) and issubclass(cls, Exception)
)
_NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
}
_ORT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
}


@dataclass(frozen=True)
class ModelInfo:
    """The validated ``vst.`` metadata of a model.

    Attributes
    ----------
    genes
        Gene names in output order.
    tile_px, tile_um
        Tile side in pixels and in micrometres (the model reads ``tile_um / tile_px`` µm/px).
    family, target, outputs
        Model family, meaning of the values, and the output tensors it provides.
    extra_inputs
        Declared inputs besides ``image`` (e.g. diffusion noise), name → spec.
    metadata
        All ``vst.`` keys, parsed where they are JSON.
    sha256
        Hash of the model file.
    """

    genes: tuple[str, ...]
    tile_px: int
    tile_um: float
    family: str
    target: str
    outputs: tuple[str, ...]
    extra_inputs: Mapping[str, Mapping[str, Any]]
    metadata: Mapping[str, Any]
    sha256: str

    @property
    def mpp(self) -> float:
        """µm per pixel of the tiles the model expects."""
        return self.tile_um / self.tile_px

    @property
    def name(self) -> str:
        """Display name: ``vst.name`` if given, else the family."""
        return str(self.metadata.get("name", self.family))


@dataclass(frozen=True)
class Prediction:
    """One batch of model output: ``expression`` ``(N, G)`` and optional ``variance``."""

    expression: NDArray[np.float32]
    variance: NDArray[np.float32] | None = None


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use, most preferred first.

    Parameters
    ----------
    requested
        Provider names (``"CUDAExecutionProvider"`` or short aliases ``cuda``, ``cpu``,
        ``tensorrt``...). ``None`` picks TensorRT/CUDA when available, then CPU.

    Raises
    ------
    ModelError
        If a requested provider is not available in this installation.
    """
    available = ort.get_available_providers()
    if not requested:
        chosen = [p for p in PREFERRED_PROVIDERS if p in available]
        return chosen or list(available)
    chosen = []
    for name in requested:
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            hint = (
                " (install the 'gpu' extra: onnxruntime-gpu)"
                if "CUDA" in full or "Tensorrt" in full
                else ""
            )
            raise ModelError(
                f"execution provider {name!r} is not available here{hint}; available: {', '.join(available)}"
            )
        if full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    return chosen


def read_model_info(session: ort.InferenceSession, sha256: str = "") -> ModelInfo:
    """Validate a session's metadata and graph against the contract.

    Raises
    ------
    ModelError
        Naming the first missing or inconsistent ``vst.`` key or tensor.
    """
    raw = session.get_modelmeta().custom_metadata_map
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("vst."):
            meta[key[4:]] = value
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(
            f"the model lacks required metadata key 'vst.{missing[0]}' "
            f"(a virtual-st model needs {', '.join('vst.' + k for k in REQUIRED_KEYS)})"
        )
    if str(meta["format_version"]) != CONTRACT_VERSION:
        raise ModelError(
            f"metadata 'vst.format_version' is {meta['format_version']!r}; this version of "
            f"napari-virtual-st reads contract version {CONTRACT_VERSION}"
        )
    for key in ("genes", "outputs", "training", "metrics", "extra_inputs"):
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError as exc:
                raise ModelError(f"metadata 'vst.{key}' is not valid JSON ({exc.msg})") from exc
    genes = meta["genes"]
    if (
        not isinstance(genes, list)
        or not genes
        or not all(isinstance(g, str) and g for g in genes)
    ):
        raise ModelError("metadata 'vst.genes' must be a non-empty JSON list of gene names")
    if len(set(genes)) != len(genes):
        dup = next(g for g in genes if genes.count(g) > 1)
        raise ModelError(f"metadata 'vst.genes' lists gene {dup!r} more than once")
    try:
        tile_px = int(meta["tile_px"])
    except ValueError:
        raise ModelError(
            f"metadata 'vst.tile_px' must be an integer; got {meta['tile_px']!r}"
        ) from None
    if tile_px <= 0 or str(tile_px) != str(meta["tile_px"]).strip():
        raise ModelError(
            f"metadata 'vst.tile_px' must be a positive integer; got {meta['tile_px']!r}"
        )
    try:
        tile_um = float(meta["tile_um"])
    except ValueError:
        raise ModelError(
            f"metadata 'vst.tile_um' must be a number; got {meta['tile_um']!r}"
        ) from None
    if not (math.isfinite(tile_um) and tile_um > 0):
        raise ModelError(
            f"metadata 'vst.tile_um' must be a positive number; got {meta['tile_um']!r}"
        )
    meta["tile_px"], meta["tile_um"] = tile_px, tile_um
    outputs = meta["outputs"]
    if not isinstance(outputs, list) or "expression" not in outputs:
        raise ModelError("metadata 'vst.outputs' must be a JSON list that includes \"expression\"")
    unknown = [o for o in outputs if o not in KNOWN_OUTPUTS]
    if unknown:
        raise ModelError(
            f"metadata 'vst.outputs' names unknown output {unknown[0]!r} (known: expression, variance)"
        )
    extra = meta.get("extra_inputs", {})
    if not isinstance(extra, dict):
        raise ModelError("metadata 'vst.extra_inputs' must be a JSON object: input name → spec")

    # -- the graph must agree with the metadata ----------------------------------------------
    inputs = {i.name: i for i in session.get_inputs()}
    if "image" not in inputs:
        raise ModelError(f"the model has no input named 'image' (its inputs: {', '.join(inputs)})")
    image = inputs["image"]
    if image.type != "tensor(uint8)":
        raise ModelError(
            f"input 'image' must be uint8 (normalisation belongs inside the graph); it is {image.type}"
        )
    if len(image.shape) != 4:
        raise ModelError(
            f"input 'image' must have 4 dimensions (N, H, W, 3); it has shape {image.shape}"
        )
    _, h, w, c = image.shape
    if isinstance(c, int) and c != 3:
        raise ModelError(
            f"input 'image' must have 3 channels last (N, H, W, 3); its shape is {image.shape}"
        )
    for dim in (h, w):
        if isinstance(dim, int) and dim != tile_px:
            raise ModelError(
                f"metadata 'vst.tile_px' is {tile_px} but input 'image' has shape {image.shape}"
            )
    for name, node in inputs.items():
        if name == "image":
            continue
        if name not in extra:
            raise ModelError(
                f"the model has input {name!r} that metadata 'vst.extra_inputs' does not declare"
            )
        _validate_extra_input(name, extra[name], node)
    for name in extra:
        if name not in inputs:
            raise ModelError(
                f"metadata 'vst.extra_inputs' declares {name!r}, which the model has no input for"
            )
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for name in outputs:
        if name not in graph_outputs:
            raise ModelError(
                f"metadata 'vst.outputs' lists {name!r}, but the model has no such output "
                f"(its outputs: {', '.join(graph_outputs)})"
            )
        node = graph_outputs[name]
        if node.type != "tensor(float)":
            raise ModelError(f"output {name!r} must be float32; it is {node.type}")
        if len(node.shape) != 2:
            raise ModelError(f"output {name!r} must have shape (N, genes); it has {node.shape}")
        if isinstance(node.shape[1], int) and node.shape[1] != len(genes):
            raise ModelError(
                f"metadata 'vst.genes' lists {len(genes)} genes but output {name!r} has "
                f"{node.shape[1]} values per tile"
            )
    return ModelInfo(
        genes=tuple(genes),
        tile_px=tile_px,
        tile_um=tile_um,
        family=str(meta["family"]),
        target=str(meta["target"]),
        outputs=tuple(outputs),
        extra_inputs=extra,
        metadata=meta,
        sha256=sha256,
    )


def _validate_extra_input(name: str, spec: Any, node: Any) -> None:
    where = f"metadata 'vst.extra_inputs' entry {name!r}"
    if not isinstance(spec, dict):
        raise ModelError(f"{where} must be an object with dtype, shape and distribution")
    dtype = spec.get("dtype")
    if dtype not in _NUMPY_DTYPES:
        raise ModelError(
            f"{where}: dtype must be one of {', '.join(_NUMPY_DTYPES)}; got {dtype!r}"
        )
    if node.type != _ORT_TYPES[dtype]:
        raise ModelError(f"{where}: declares {dtype} but the model's input is {node.type}")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or shape[0] != "N"
        or not all(isinstance(d, int) and d > 0 for d in shape[1:])
    ):
        raise ModelError(
            f'{where}: shape must be a list starting with "N" followed by positive integers'
        )
    if len(shape) != len(node.shape):
        raise ModelError(
            f"{where}: shape {shape} does not match the model's input rank ({node.shape})"
        )
    for declared, actual in zip(shape[1:], node.shape[1:], strict=True):
        if isinstance(actual, int) and actual != declared:
            raise ModelError(
                f"{where}: shape {shape} does not match the model's input shape {node.shape}"
            )
    if spec.get("distribution", "normal") not in ("normal", "uniform", "zeros"):
        raise ModelError(f"{where}: distribution must be normal, uniform or zeros")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # seeds the per-spot generators, default_rng([seed, spot]): a non-negative integer
        raise ModelError(f"{where}: seed must be a non-negative integer; got {seed!r}")


class Predictor:
    """An ONNX gene-expression model, validated and ready to run on batches of tiles.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    providers
        Execution providers to use (names or aliases such as ``cuda``, ``cpu``); by default
        TensorRT/CUDA when available, else CPU.
    intra_op_threads
        CPU threads ONNX Runtime may use per batch (``None``: all cores).
    spin
        Let ONNX Runtime's CPU threads busy-wait between operators (its default: a little
        faster alone, but it takes CPU time from anything else, e.g. a viewer's GUI thread).

    Raises
    ------
    ModelError
        If the file is missing, is not ONNX, or breaks the model contract.

    Attributes
    ----------
    info : ModelInfo
        The validated metadata.
    providers : list of str
        The execution providers ONNX Runtime actually uses.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        *,
        intra_op_threads: int | None = None,
        spin: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        wanted = resolve_providers(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ParameterError(f"thread count must be at least 1; got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        model_bytes = self.path.read_bytes()
        try:
            self._session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=_provider_options(wanted)
            )
        except Exception as exc:  # onnxruntime raises several private exception types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path.name} is not a loadable ONNX model: {message}") from exc
        self.info = read_model_info(self._session, hashlib.sha256(model_bytes).hexdigest())
        self.providers: list[str] = list(self._session.get_providers())
        batch_dim = next(n.shape[0] for n in self._session.get_inputs() if n.name == "image")
        self.fixed_batch_size: int | None = batch_dim if isinstance(batch_dim, int) else None

    @property
    def genes(self) -> tuple[str, ...]:
        """Gene names in output order."""
        return self.info.genes

    @property
    def on_gpu(self) -> bool:
        """Whether a GPU execution provider (TensorRT, CUDA, ROCm, MIGraphX, DirectML) is in use."""
        return self.providers[0] in GPU_PROVIDERS

    def predict(self, tiles: ArrayLike, spot_index: ArrayLike | None = None) -> Prediction:
        """Run the model on a batch of tiles.

        Parameters
        ----------
        tiles
            ``(N, tile_px, tile_px, 3)`` uint8 RGB.
        spot_index
            ``(N,)`` integer ids of the spots; seeds any declared random inputs per spot, so
            results do not depend on batching. Defaults to ``0..N-1``.

        Returns
        -------
        Prediction

        Raises
        ------
        ParameterError
            If ``tiles`` or ``spot_index`` have the wrong shape or dtype.
        """
        batch = np.ascontiguousarray(tiles)
        t = self.info.tile_px
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (t, t, 3):
            raise ParameterError(
                f"tiles must be uint8 of shape (N, {t}, {t}, 3); got {batch.dtype} {batch.shape}"
            )
        n = len(batch)
        ids = (
            np.arange(n, dtype=np.int64)
            if spot_index is None
            else np.asarray(spot_index, dtype=np.int64)
        )
        if ids.shape != (n,):
            raise ParameterError(
                f"spot_index must hold one id per tile, shape ({n},); got shape {ids.shape}"
            )
        if n == 0:
            empty = np.empty((0, len(self.info.genes)), np.float32)
            return Prediction(empty, empty.copy() if "variance" in self.info.outputs else None)
        if self.fixed_batch_size is not None and self.fixed_batch_size != n:
            step = self.fixed_batch_size
            parts = [self._run(batch[i : i + step], ids[i : i + step]) for i in range(0, n, step)]
            var = (
                None if parts[0].variance is None else np.concatenate([p.variance for p in parts])
            )
            return Prediction(np.concatenate([p.expression for p in parts]), var)
        return self._run(batch, ids)

    def _run(self, batch: NDArray[np.uint8], ids: NDArray[np.int64]) -> Prediction:
        if self.fixed_batch_size is not None and len(batch) < self.fixed_batch_size:
            pad = self.fixed_batch_size - len(batch)
            out = self._run(
                np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)]),
                np.concatenate([ids, np.repeat(ids[-1:], pad)]),
            )
            var = None if out.variance is None else out.variance[: len(batch)]
            return Prediction(out.expression[: len(batch)], var)
        feeds: dict[str, np.ndarray] = {"image": batch}
        for name, spec in self.info.extra_inputs.items():
            feeds[name] = extra_input_values(spec, ids)
        wanted = list(self.info.outputs)
        try:
            results = self._session.run(wanted, feeds)
        except _ORT_RUN_ERRORS as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{self.path.name} failed on a batch of {len(batch)} tiles: {message}"
            ) from exc
        out = dict(zip(wanted, results, strict=True))
        expression = np.asarray(out["expression"], dtype=np.float32)
        if expression.shape != (len(batch), len(self.info.genes)):
            raise ModelError(
                f"the model returned expression of shape {expression.shape}; expected "
                f"({len(batch)}, {len(self.info.genes)})"
            )
        variance = out.get("variance")
        return Prediction(
            expression, None if variance is None else np.asarray(variance, dtype=np.float32)
        )

    def __repr__(self) -> str:
        return (
            f"Predictor({self.path.name!r}, family={self.info.family}, genes={len(self.genes)}, "
            f"tile={self.info.tile_px}px/{self.info.tile_um}µm, providers={self.providers})"
        )


def extra_input_values(spec: Mapping[str, Any], spot_ids: ArrayLike) -> np.ndarray:
    """The values the Predictor feeds a declared extra input for these spots.

    Each spot's values come from ``numpy.random.default_rng([seed, spot_id])`` with the
    declared non-batch shape, so they do not depend on batching; a torch module exported
    with extra inputs is checked against ONNX Runtime on exactly these values.

    Parameters
    ----------
    spec
        The input's ``vst.extra_inputs`` entry (``dtype``, ``shape`` ``["N", ...]``,
        ``distribution`` ``normal|uniform|zeros``, ``seed``).
    spot_ids
        ``(n,)`` spot ids.

    Returns
    -------
    numpy.ndarray
        ``(n, *shape[1:])`` of the declared dtype.
    """
    ids = np.asarray(spot_ids, dtype=np.int64).reshape(-1)
    dtype = _NUMPY_DTYPES[spec["dtype"]]
    shape = tuple(spec["shape"][1:])
    distribution = spec.get("distribution", "normal")
    seed = int(spec.get("seed", 0))
    out = np.zeros((len(ids), *shape), dtype=dtype)
    if distribution == "zeros":
        return out
    for row, spot in enumerate(ids):
        rng = np.random.default_rng([seed, int(spot)])
        values = rng.standard_normal(shape) if distribution == "normal" else rng.random(shape)
        out[row] = values.astype(dtype)
    return out


def _provider_options(providers: list[str]) -> list[Any]:
    options: list[Any] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = Path.home() / ".cache" / "napari-virtual-st" / "tensorrt"
            options.append(
                (
                    name,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_fp16_enable": True,
                    },
                )
            )
        else:
            options.append(name)
    return options
