"""``Predictor``: run one ONNX gene-expression model that follows the model contract.

This module owns the running side: execution providers (TensorRT/CUDA when available, else
CPU), the ONNX Runtime session, fixed batch sizes, and the per-spot values fed to declared extra
inputs. What a model must be (its ``vst.`` metadata and graph) is :mod:`napari_virtual_st.contract`;
a model that breaks it is refused when the ``Predictor`` is made, with a message naming the key
or tensor at fault, before any slide is read.

``Predictor(path).predict(tiles, spot_index)`` → :class:`Prediction`. ``ModelInfo``,
``CONTRACT_VERSION`` and ``read_model_info`` are re-exported from the contract.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from napari_virtual_st.contract import CONTRACT_VERSION, ModelInfo, read_model_info
from napari_virtual_st.errors import ModelError, ParameterError
from napari_virtual_st.slide_statistics import SlideStatistics, StatisticsSpec

__all__ = [
    "CONTRACT_VERSION",
    "GPU_PROVIDERS",
    "PREFERRED_PROVIDERS",
    "ModelInfo",
    "Prediction",
    "Predictor",
    "cache_dir",
    "extra_input_values",
    "probe_provider",
    "provider_options",
    "read_model_info",
    "resolve_providers",
]

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
#: The device ONNX Runtime's I/O binding places batches on, per first execution provider.
_BOUND_DEVICES = {
    "TensorrtExecutionProvider": "cuda",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}
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


@dataclass(frozen=True)
class Prediction:
    """One batch of model output: ``expression`` ``(N, G)`` and optional ``variance``."""

    expression: NDArray[np.float32]
    variance: NDArray[np.float32] | None = None


def _probe_model() -> bytes:
    """A one-operator float model (Relu over (1, 8)) to try an execution provider on."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


_PROBED: dict[str, str | None] = {}


def probe_provider(name: str) -> str | None:
    """Whether execution provider ``name`` really runs here, tried quietly once per process.

    ``onnxruntime-gpu`` lists CUDA and TensorRT as available even where their libraries
    (CUDA, cuDNN, TensorRT) are missing; using them then prints an error banner and falls
    back to the CPU. This builds a one-operator session on ``name`` alone with ONNX
    Runtime's logging silenced and its fallback off.

    Returns
    -------
    str or None
        ``None`` when it runs, else why not (one line).
    """
    if name == "CPUExecutionProvider":
        return None
    if name in _PROBED:
        return _PROBED[name]
    if name not in ort.get_available_providers():
        _PROBED[name] = "not in this onnxruntime build"
        return _PROBED[name]
    if name in GPU_PROVIDERS:
        from napari_virtual_st.onnxruntime_build import preload_nvidia_libraries

        preload_nvidia_libraries()  # CUDA/cuDNN from NVIDIA's pip wheels, where installed
    options = ort.SessionOptions()
    options.log_severity_level = 4
    problem: str | None = None
    ort.set_default_logger_severity(4)  # the provider bridge logs load failures globally
    try:
        session = ort.InferenceSession(
            _probe_model(),
            sess_options=options,
            providers=[name],
            enable_fallback=0,
        )
        if session.get_providers()[0] != name:
            problem = "its libraries did not load"
        else:
            session.run(None, {"x": np.zeros((1, 8), np.float32)})
    except Exception as exc:  # onnxruntime raises several private exception types
        text = str(exc).strip().splitlines()
        problem = text[0][:200] if text else type(exc).__name__
    finally:
        ort.set_default_logger_severity(2)
    _PROBED[name] = problem
    return problem


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use, most preferred first.

    GPU providers are probed quietly (:func:`probe_provider`): one that is listed but cannot
    load its libraries is skipped by default, and refused with the reason when asked for.
    TensorRT is always followed by CUDA (where it runs) and the CPU, CUDA by the CPU: an
    operator a GPU provider cannot take runs on the next one.

    Parameters
    ----------
    requested
        Provider names (``"CUDAExecutionProvider"`` or short aliases ``cuda``, ``cpu``,
        ``tensorrt``...). ``None`` picks TensorRT/CUDA when they run here, then CPU.

    Raises
    ------
    ModelError
        If a requested provider is not available, or does not run, in this installation.
    """
    available = ort.get_available_providers()
    if not requested:
        chosen = [p for p in PREFERRED_PROVIDERS if p in available and probe_provider(p) is None]
        return chosen or ["CPUExecutionProvider"]
    chosen = []
    for name in requested:
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        gpu_hint = "CUDA" in full or "Tensorrt" in full
        if full not in available:
            hint = " (install the 'gpu' extra: onnxruntime-gpu)" if gpu_hint else ""
            raise ModelError(
                f"execution provider {name!r} is not available here{hint}; available: {', '.join(available)}"
            )
        problem = probe_provider(full)
        if problem is not None:
            raise ModelError(f"execution provider {name!r} does not run here: {problem}")
        if full not in chosen:
            chosen.append(full)
    fallbacks = {"TensorrtExecutionProvider": "CUDAExecutionProvider"}
    for gpu, fallback in fallbacks.items():
        if (
            gpu in chosen
            and fallback not in chosen
            and fallback in available
            and probe_provider(fallback) is None
        ):
            chosen.insert(chosen.index(gpu) + 1, fallback)
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    return chosen


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
    io_binding
        Bind each batch to the provider's device (ONNX Runtime's I/O binding) instead of
        ``session.run``: the uint8 tiles are copied to the GPU once per batch (4× less than
        float pixels) and the outputs are allocated there and copied back in one step, with
        no per-run input/output allocation on the host. ``None`` (default): on for CUDA and
        TensorRT, off on the CPU (where it changes nothing); ``True`` forces it (on the CPU
        it binds host memory, which tests use to check it gives the same values).

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
        io_binding: bool | None = None,
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
        self._intra_op_threads = intra_op_threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        model_bytes = self.path.read_bytes()
        try:
            self._session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=provider_options(wanted)
            )
        except Exception as exc:  # onnxruntime raises several private exception types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path.name} is not a loadable ONNX model: {message}") from exc
        self.info = read_model_info(self._session, hashlib.sha256(model_bytes).hexdigest())
        self.providers: list[str] = list(self._session.get_providers())
        batch_dim = next(n.shape[0] for n in self._session.get_inputs() if n.name == "image")
        self.fixed_batch_size: int | None = batch_dim if isinstance(batch_dim, int) else None
        device = _BOUND_DEVICES.get(self.providers[0])
        if io_binding is None:
            io_binding = device not in (None, "cpu")  # on by default where it saves copies
        #: Where batches are bound (``"cuda"``, ``"cpu"``), or ``None``: plain ``session.run``.
        self.bound_device: str | None = (device or "cpu") if io_binding else None
        self._statistics: SlideStatistics | None = None

    @property
    def genes(self) -> tuple[str, ...]:
        """Gene names in output order."""
        return self.info.genes

    @property
    def precision(self) -> str:
        """``"int8"`` for an int8 variant (``vst.precision``), else ``"fp32"``."""
        return "int8" if self.info.metadata.get("precision") == "int8" else "fp32"

    @property
    def runs_on(self) -> str:
        """One line saying what runs: provider, CPU threads, precision."""
        first = self.providers[0].removesuffix("ExecutionProvider")
        threads = self._intra_op_threads
        where = f"{first} ({threads} threads)" if first == "CPU" and threads else first
        return f"{where}, {self.precision}"

    @property
    def on_gpu(self) -> bool:
        """Whether a GPU execution provider (TensorRT, CUDA, ROCm, MIGraphX, DirectML) is in use."""
        return self.providers[0] in GPU_PROVIDERS

    @property
    def slide_statistics(self) -> SlideStatistics | None:
        """The slide statistics this predictor feeds (:meth:`with_slide_statistics`), if any."""
        return self._statistics

    def with_slide_statistics(self, statistics: SlideStatistics) -> Predictor:
        """A copy that feeds ``statistics`` to a model declaring ``vst.slide_statistics``.

        The copy shares the ONNX Runtime session (no second load); each copy keeps its own
        statistics, so runs of several slides may use copies side by side.

        Raises
        ------
        ModelError
            When the model takes no slide statistics, or their width is not its feature count.
        """
        spec = self._declared_statistics()
        width = next(o.shape[1] for o in self._session.get_outputs() if o.name == spec.features)
        if isinstance(width, int) and statistics.n_features != width:
            raise ModelError(
                f"slide statistics of {statistics.n_features} features do not fit "
                f"{self.path.name}, which has {width}"
            )
        bound = copy.copy(self)
        bound._statistics = statistics
        return bound

    def slide_features(
        self, tiles: ArrayLike, spot_index: ArrayLike | None = None
    ) -> NDArray[np.float32]:
        """The raw features ``(N, F)`` of a model declaring ``vst.slide_statistics``: what
        its slide statistics are measured on (:meth:`SlideStatistics.of`).

        Raises
        ------
        ModelError
            When the model takes no slide statistics.
        """
        spec = self._declared_statistics()
        batch, ids = self._checked(tiles, spot_index)
        return np.asarray(self._outputs(batch, ids, [spec.features])[0], dtype=np.float32)

    def _declared_statistics(self) -> StatisticsSpec:
        """The model's ``vst.slide_statistics``, or a :class:`ModelError` when it has none."""
        spec = self.info.slide_statistics
        if spec is None:
            raise ModelError(f"{self.path.name} does not standardise its features per slide")
        return spec

    def standardised_on(self, tiles: ArrayLike) -> Predictor:
        """A copy fed the statistics of ``tiles`` themselves (e.g. every spot of a section)."""
        return self.with_slide_statistics(SlideStatistics.of(self.slide_features(tiles)))

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
        ModelError
            If the model needs slide statistics and none are bound
            (:meth:`with_slide_statistics`), or it fails on the batch.
        """
        batch, ids = self._checked(tiles, spot_index)
        if self.info.slide_statistics is not None and self._statistics is None:
            raise ModelError(
                f"{self.path.name} standardises its features per slide: it needs the slide's "
                "statistics first (a run measures them on a sample of the slide's tissue)"
            )
        n = len(batch)
        if n == 0:
            empty = np.empty((0, len(self.info.genes)), np.float32)
            return Prediction(empty, empty.copy() if "variance" in self.info.outputs else None)
        wanted = list(self.info.outputs)
        out = dict(zip(wanted, self._outputs(batch, ids, wanted), strict=True))
        expression = np.asarray(out["expression"], dtype=np.float32)
        if expression.shape != (n, len(self.info.genes)):
            raise ModelError(
                f"the model returned expression of shape {expression.shape}; expected "
                f"({n}, {len(self.info.genes)})"
            )
        variance = out.get("variance")
        return Prediction(
            expression, None if variance is None else np.asarray(variance, dtype=np.float32)
        )

    def _checked(
        self, tiles: ArrayLike, spot_index: ArrayLike | None
    ) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """``tiles`` and their spot ids as arrays, or a :class:`ParameterError`."""
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
        return batch, ids

    def _outputs(
        self, batch: NDArray[np.uint8], ids: NDArray[np.int64], wanted: list[str]
    ) -> list[NDArray[Any]]:
        """The ``wanted`` outputs for a batch, in model calls of the model's fixed batch size
        when it has one (the last padded with copies of its last tile)."""
        step = self.fixed_batch_size
        if step is None or len(batch) == step:
            return self._run(batch, ids, wanted)
        parts = []
        for i in range(0, len(batch), step):
            part, part_ids = batch[i : i + step], ids[i : i + step]
            pad = step - len(part)
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
                part_ids = np.concatenate([part_ids, np.repeat(part_ids[-1:], pad)])
            parts.append([o[: step - pad] for o in self._run(part, part_ids, wanted)])
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def _run(
        self, batch: NDArray[np.uint8], ids: NDArray[np.int64], wanted: list[str]
    ) -> list[NDArray[Any]]:
        feeds: dict[str, np.ndarray] = {"image": batch}
        for name, spec in self.info.extra_inputs.items():
            feeds[name] = extra_input_values(spec, ids)
        statistics = self.info.slide_statistics
        if statistics is not None:  # raw features (slide_features): standardised by 0 and 1
            width = self._statistics_width()
            bound = self._statistics
            feeds[statistics.mean] = bound.mean if bound else np.zeros(width, np.float32)
            feeds[statistics.std] = bound.std if bound else np.ones(width, np.float32)
        try:
            return [np.asarray(r) for r in self._session_run(wanted, feeds)]
        except _ORT_RUN_ERRORS as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{self.path.name} failed on a batch of {len(batch)} tiles: {message}"
            ) from exc

    def _statistics_width(self) -> int:
        """The model's feature count (its statistics inputs' fixed length)."""
        if self._statistics is not None:
            return self._statistics.n_features
        spec = self._declared_statistics()
        shape = next(i.shape for i in self._session.get_inputs() if i.name == spec.mean)
        return int(shape[0])  # (fixed: the contract checks it)

    def _session_run(self, wanted: list[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        device = self.bound_device
        if device is None:
            return list(self._session.run(wanted, feeds))
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
        for name in wanted:
            binding.bind_output(name, device, 0)
        binding.synchronize_inputs()
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return list(binding.copy_outputs_to_cpu())

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


def cache_dir(kind: str) -> Path:
    """A folder for files this package makes once and reuses (``tensorrt`` engines, ``int8``
    models): ``$VST_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/napari-virtual-st/<kind>``,
    else ``~/.cache/napari-virtual-st/<kind>`` (not created here)."""
    root = os.environ.get("VST_CACHE_DIR")
    if root:
        return Path(root) / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "napari-virtual-st" / kind


def provider_options(
    providers: Sequence[str], *, fp16: bool = True, engine_cache: Path | None = None
) -> list[Any]:
    """ONNX Runtime's ``providers`` argument for these execution providers, in order.

    TensorRT gets an engine cache (built engines are reused across runs and processes; the
    first run of a model and batch size builds one, which takes minutes), fp16 kernels
    where ``fp16`` (the GPU's tensor cores; outputs then differ from fp32 in the third
    digit), and timing-cache reuse; CUDA gets its default arena and exhaustive cuDNN search
    once per shape; other providers their defaults. The fallbacks after a GPU provider are
    :func:`resolve_providers`'s choice.
    """
    names = list(dict.fromkeys(providers))
    cache = engine_cache if engine_cache is not None else cache_dir("tensorrt")
    options: list[Any] = []
    for name in names:
        if name == "TensorrtExecutionProvider":
            options.append(
                (
                    name,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache),
                        "trt_fp16_enable": fp16,
                    },
                )
            )
        elif name == "CUDAExecutionProvider":
            options.append((name, {"cudnn_conv_algo_search": "EXHAUSTIVE"}))
        else:
            options.append(name)
    return options
