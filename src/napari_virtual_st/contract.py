"""The ONNX model contract, both ways: the ``vst.`` metadata a model carries, and its graph.

A model is one ``.onnx`` file: input ``image`` uint8 ``(N, tile_px, tile_px, 3)``, output
``expression`` float32 ``(N, G)`` (optionally ``variance``), and ``vst.``-prefixed string
``metadata_props`` (JSON where structured). :class:`ModelMetadata` is those keys as one object:

- writing a model (the model workshop, :func:`~napari_virtual_st.onnx_export.export_torch_model`,
  a user bringing their own graph): ``attach_metadata(model, ModelMetadata(...).to_props())``
  then :func:`save_model`;
- reading one (:class:`~napari_virtual_st.predictor.Predictor`): :func:`read_model_info`, which
  parses each key with :meth:`ModelMetadata.from_props`, checks the graph against it with
  :func:`check_graph` and returns the :class:`ModelInfo` the engine uses.

A model may declare spot context (``vst.context``, a fixed or learnt kernel: see
:mod:`napari_virtual_st.context`): its spot values are then its per-tile outputs averaged over
each spot's neighbours, which the engine does on reading (the graph itself stays per-tile).
A model may also standardise its features per slide (``vst.slide_statistics``: see
:mod:`napari_virtual_st.slide_statistics`): the engine then feeds it the slide's statistics.

Every refusal is a :class:`~napari_virtual_st.errors.ModelError` naming the key or tensor at
fault. This module knows nothing of providers, sessions or batching (``predictor.py`` does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import onnx

from napari_virtual_st.context import SpotContext, describe_values
from napari_virtual_st.errors import ModelError
from napari_virtual_st.slide_statistics import StatisticsSpec

if TYPE_CHECKING:
    import onnxruntime as ort

CONTRACT_VERSION = "1"
PREFIX = "vst."
REQUIRED_KEYS = ("format_version", "family", "genes", "tile_px", "tile_um", "target", "outputs")
KNOWN_OUTPUTS = ("expression", "variance")
#: dtypes an extra input may declare, and the ONNX Runtime type of each.
EXTRA_INPUT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
}
EXTRA_INPUT_DISTRIBUTIONS = ("normal", "uniform", "zeros")
#: Keys whose string is JSON.
_JSON_KEYS = frozenset({"genes", "outputs", "training", "metrics", "extra_inputs"})


# -- the metadata ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelMetadata:
    """The ``vst.`` metadata of a model, as values.

    Parameters
    ----------
    genes
        Gene names in output order.
    tile_px, tile_um
        Tile side in pixels and in micrometres (the model reads ``tile_um / tile_px`` µm/px).
    family
        ``nsl``, ``dkan``, ``stem``, ``baseline`` or any other family name.
    target
        What a value means, e.g. ``log1p_cp10k``.
    outputs
        Output tensors provided: ``expression`` and optionally ``variance``.
    name, license, description
        Optional text.
    training, metrics
        Optional JSON values: the training data, split and code revision; held-out scores
        with their protocol.
    extra_inputs
        Inputs besides ``image`` that the engine feeds, name → ``{"dtype", "shape": ["N",
        ...], "distribution", "seed"}``; empty when there are none.
    context
        The spot context its values use (``vst.context``); ``None``: per-tile values.
    slide_statistics
        The per-slide standardisation it needs (``vst.slide_statistics``); ``None``: none.
    other_keys
        Any other ``vst.`` keys (without the prefix), kept as written.
    """

    genes: Sequence[str]
    tile_px: int
    tile_um: float
    family: str
    target: str
    outputs: Sequence[str] = ("expression",)
    name: str | None = None
    license: str | None = None
    description: str | None = None
    training: Any = None
    metrics: Any = None
    extra_inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    context: SpotContext | None = None
    slide_statistics: StatisticsSpec | None = None
    other_keys: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # equal whether built from lists or tuples, and independent of the caller's objects
        object.__setattr__(self, "genes", tuple(self.genes))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "extra_inputs", dict(self.extra_inputs or {}))
        object.__setattr__(self, "other_keys", dict(self.other_keys))
        if isinstance(self.context, (str, Mapping)):  # its JSON text or object
            object.__setattr__(self, "context", _context(self.context))
        if isinstance(self.slide_statistics, (str, Mapping)):
            object.__setattr__(
                self, "slide_statistics", StatisticsSpec.from_json(self.slide_statistics)
            )
        if self.context is not None and self.context.n_genes not in (None, len(self.genes)):
            raise ModelError(
                f"metadata 'vst.context': coefficients for {self.context.n_genes} genes, but "
                f"the model predicts {len(self.genes)} ('vst.genes'); a rings kernel needs one "
                "row per gene, in the model's gene order"
            )

    def to_props(self) -> dict[str, str]:
        """The ``vst.`` ``metadata_props`` strings; optional keys left out when not given."""
        return {PREFIX + key: _to_string(key, value) for key, value in self._items().items()}

    def as_dict(self) -> dict[str, Any]:
        """Every key without its prefix, as values (JSON keys parsed), as ``ModelInfo`` keeps them."""
        return {key: _as_value(v) for key, v in self._items().items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Parse and validate the ``vst.`` keys of ``props`` (other keys are ignored).

        Raises
        ------
        ModelError
            Naming the first missing or invalid key.
        """
        raw = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise ModelError(
                f"the model lacks required metadata key 'vst.{missing[0]}' "
                f"(a virtual-st model needs {', '.join(PREFIX + k for k in REQUIRED_KEYS)})"
            )
        values = {key: parse(raw[key]) for key, parse in _PARSERS.items() if key in raw}
        del values["format_version"]
        _check_geometry(values["tile_px"], values["tile_um"])
        others = {k: v for k, v in raw.items() if k not in _PARSERS}
        return cls(**values, other_keys=others)

    def _items(self) -> dict[str, Any]:
        items: dict[str, Any] = {
            "format_version": CONTRACT_VERSION,
            "family": self.family,
            "genes": self.genes,
            "tile_px": int(self.tile_px),
            "tile_um": float(self.tile_um),
            "target": self.target,
            "outputs": self.outputs,
        }
        optional = {
            "name": self.name,
            "license": self.license,
            "description": self.description,
            "training": self.training,
            "metrics": self.metrics,
            "extra_inputs": self.extra_inputs or None,
            "context": self.context,
            "slide_statistics": self.slide_statistics,
        }
        items.update((k, v) for k, v in optional.items() if v is not None)
        items.update(self.other_keys)
        return items


def _as_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, SpotContext):
        return value.as_dict()
    if isinstance(value, StatisticsSpec):
        return json.loads(value.to_json())
    return value


def _to_string(key: str, value: Any) -> str:
    if isinstance(value, (SpotContext, StatisticsSpec)):
        return value.to_json()
    if key in _JSON_KEYS:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    if key == "tile_um":
        return repr(value)  # exact: float(repr(x)) == x
    return str(value)


# -- one small validator per key: the key's string → its value, or a ModelError naming it -----
def _format_version(raw: str) -> str:
    if raw != CONTRACT_VERSION:
        raise ModelError(
            f"metadata 'vst.format_version' is {raw!r}; this version of "
            f"napari-virtual-st reads contract version {CONTRACT_VERSION}"
        )
    return raw


def _json(key: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"metadata 'vst.{key}' is not valid JSON ({exc.msg})") from exc


def _genes(raw: str) -> tuple[str, ...]:
    genes = _json("genes", raw)
    if (
        not isinstance(genes, list)
        or not genes
        or not all(isinstance(g, str) and g for g in genes)
    ):
        raise ModelError("metadata 'vst.genes' must be a non-empty JSON list of gene names")
    if len(set(genes)) != len(genes):
        dup = next(g for g in genes if genes.count(g) > 1)
        raise ModelError(f"metadata 'vst.genes' lists gene {dup!r} more than once")
    return tuple(genes)


#: Plausible tile geometry. A model outside it is refused when read: its tiles would be
#: microscopic or millimetres wide, and reading them could exhaust the machine's memory.
TILE_PX_RANGE = (4, 4096)
TILE_UM_MAX = 2000.0
MODEL_MPP_RANGE = (0.05, 25.0)


def _check_geometry(tile_px: int, tile_um: float) -> None:
    """Refuse implausible tiles, naming the key (tile side in px, in µm, and their ratio)."""
    low, high = TILE_PX_RANGE
    if not low <= tile_px <= high:
        raise ModelError(
            f"metadata 'vst.tile_px' is {tile_px}; a tile side must be {low}–{high} px"
        )
    if tile_um > TILE_UM_MAX:
        raise ModelError(
            f"metadata 'vst.tile_um' is {tile_um:g} µm; a tile wider than {TILE_UM_MAX:g} µm "
            "is not a spot-sized tile"
        )
    mpp = tile_um / tile_px
    low_mpp, high_mpp = MODEL_MPP_RANGE
    if not low_mpp <= mpp <= high_mpp:
        raise ModelError(
            f"metadata 'vst.tile_um' / 'vst.tile_px' = {tile_um:g} µm / {tile_px} px = "
            f"{mpp:.3g} µm per pixel; a model must read {low_mpp:g}–{high_mpp:g} µm per pixel"
        )


def _tile_px(raw: str) -> int:
    try:
        tile_px = int(raw)
    except ValueError:
        raise ModelError(f"metadata 'vst.tile_px' must be an integer; got {raw!r}") from None
    if tile_px <= 0 or str(tile_px) != raw.strip():
        raise ModelError(f"metadata 'vst.tile_px' must be a positive integer; got {raw!r}")
    return tile_px


def _tile_um(raw: str) -> float:
    try:
        tile_um = float(raw)
    except ValueError:
        raise ModelError(f"metadata 'vst.tile_um' must be a number; got {raw!r}") from None
    if not (math.isfinite(tile_um) and tile_um > 0):
        raise ModelError(f"metadata 'vst.tile_um' must be a positive number; got {raw!r}")
    return tile_um


def _outputs(raw: str) -> tuple[str, ...]:
    outputs = _json("outputs", raw)
    if not isinstance(outputs, list) or "expression" not in outputs:
        raise ModelError("metadata 'vst.outputs' must be a JSON list that includes \"expression\"")
    unknown = [o for o in outputs if o not in KNOWN_OUTPUTS]
    if unknown:
        raise ModelError(
            f"metadata 'vst.outputs' names unknown output {unknown[0]!r} (known: expression, variance)"
        )
    return tuple(outputs)


def _extra_inputs(raw: str) -> dict[str, Any]:
    extra = _json("extra_inputs", raw)
    if not isinstance(extra, dict):
        raise ModelError("metadata 'vst.extra_inputs' must be a JSON object: input name → spec")
    for name, spec in extra.items():
        _check_extra_spec(name, spec)
    return extra


def _check_extra_spec(name: str, spec: Any) -> None:
    where = f"metadata 'vst.extra_inputs' entry {name!r}"
    if not isinstance(spec, dict):
        raise ModelError(f"{where} must be an object with dtype, shape and distribution")
    dtype = spec.get("dtype")
    if dtype not in EXTRA_INPUT_TYPES:
        raise ModelError(
            f"{where}: dtype must be one of {', '.join(EXTRA_INPUT_TYPES)}; got {dtype!r}"
        )
    if not _is_batch_shape(spec.get("shape")):
        raise ModelError(
            f'{where}: shape must be a list starting with "N" followed by positive integers'
        )
    if spec.get("distribution", "normal") not in EXTRA_INPUT_DISTRIBUTIONS:
        raise ModelError(f"{where}: distribution must be normal, uniform or zeros")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # seeds the per-spot generators, default_rng([seed, spot]): a non-negative integer
        raise ModelError(f"{where}: seed must be a non-negative integer; got {seed!r}")


def _is_batch_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and bool(shape)
        and shape[0] == "N"
        and all(isinstance(d, int) and d > 0 for d in shape[1:])
    )


def _context(raw: str | Mapping[str, Any]) -> SpotContext:
    try:
        return SpotContext.from_json(raw if isinstance(raw, str) else dict(raw))
    except ModelError as exc:  # "vst.context: ..." → "metadata 'vst.context': ..."
        raise ModelError(f"metadata 'vst.context'{str(exc).removeprefix('vst.context')}") from None


def _text(raw: str) -> str:
    return raw


def _any_json(key: str) -> Callable[[str], Any]:
    return lambda raw: _json(key, raw)


#: Each key's validator, in the order keys are checked (the version first).
_PARSERS: dict[str, Callable[[str], Any]] = {
    "format_version": _format_version,
    "family": _text,
    "genes": _genes,
    "tile_px": _tile_px,
    "tile_um": _tile_um,
    "target": _text,
    "outputs": _outputs,
    "name": _text,
    "license": _text,
    "description": _text,
    "training": _any_json("training"),
    "metrics": _any_json("metrics"),
    "extra_inputs": _extra_inputs,
    "context": _context,
    "slide_statistics": StatisticsSpec.from_json,
}


# -- the graph must agree with the metadata ---------------------------------------------------
class TensorInfo(Protocol):
    """What ONNX Runtime says of a graph input or output (``session.get_inputs()[i]``)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def shape(self) -> Sequence[Any]: ...


def check_graph(
    metadata: ModelMetadata, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]
) -> None:
    """Check a graph's inputs and outputs (ONNX Runtime's descriptions) against ``metadata``.

    Raises
    ------
    ModelError
        Naming the first tensor, or the key it disagrees with, at fault.
    """
    by_name = {i.name: i for i in inputs}
    _check_image(by_name, metadata.tile_px)
    statistics = metadata.slide_statistics
    if statistics is not None:
        _check_slide_statistics(by_name, {o.name: o for o in outputs}, statistics)
        by_name = {k: v for k, v in by_name.items() if k not in statistics.inputs}
    _check_extra_inputs(by_name, metadata.extra_inputs)
    _check_outputs({o.name: o for o in outputs}, metadata)


def _check_slide_statistics(
    inputs: Mapping[str, TensorInfo], outputs: Mapping[str, TensorInfo], spec: StatisticsSpec
) -> None:
    where = "metadata 'vst.slide_statistics'"
    features = outputs.get(spec.features)
    if features is None:
        raise ModelError(
            f"{where} names output {spec.features!r}, which the model does not have "
            f"(its outputs: {', '.join(outputs)})"
        )
    if features.type != "tensor(float)" or len(features.shape) != 2:
        raise ModelError(
            f"{where}: output {spec.features!r} must be float32 (N, features); it is "
            f"{features.type} {features.shape}"
        )
    width = features.shape[1]
    for name in spec.inputs:
        node = inputs.get(name)
        if node is None:
            raise ModelError(f"{where} names input {name!r}, which the model does not have")
        if node.type != "tensor(float)" or len(node.shape) != 1:
            raise ModelError(
                f"{where}: input {name!r} must be float32 (features,); it is "
                f"{node.type} {node.shape}"
            )
        if not isinstance(node.shape[0], int):
            raise ModelError(f"{where}: input {name!r} must have a fixed number of features")
        if isinstance(width, int) and node.shape[0] != width:
            raise ModelError(
                f"{where}: input {name!r} has {node.shape[0]} values but output "
                f"{spec.features!r} has {width} features"
            )


def _check_image(inputs: Mapping[str, TensorInfo], tile_px: int) -> None:
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
    if any(isinstance(dim, int) and dim != tile_px for dim in (h, w)):
        raise ModelError(
            f"metadata 'vst.tile_px' is {tile_px} but input 'image' has shape {image.shape}"
        )


def _check_extra_inputs(
    inputs: Mapping[str, TensorInfo], declared: Mapping[str, Mapping[str, Any]]
) -> None:
    for name, node in inputs.items():
        if name == "image":
            continue
        if name not in declared:
            raise ModelError(
                f"the model has input {name!r} that metadata 'vst.extra_inputs' does not declare"
            )
        _check_extra_input_node(name, declared[name], node)
    for name in declared:
        if name not in inputs:
            raise ModelError(
                f"metadata 'vst.extra_inputs' declares {name!r}, which the model has no input for"
            )


def _check_extra_input_node(name: str, spec: Mapping[str, Any], node: TensorInfo) -> None:
    where = f"metadata 'vst.extra_inputs' entry {name!r}"
    dtype, shape = spec["dtype"], spec["shape"]
    if node.type != EXTRA_INPUT_TYPES[dtype]:
        raise ModelError(f"{where}: declares {dtype} but the model's input is {node.type}")
    if len(shape) != len(node.shape):
        raise ModelError(
            f"{where}: shape {shape} does not match the model's input rank ({node.shape})"
        )
    for declared, actual in zip(shape[1:], node.shape[1:], strict=True):
        if isinstance(actual, int) and actual != declared:
            raise ModelError(
                f"{where}: shape {shape} does not match the model's input shape {node.shape}"
            )


def _check_outputs(outputs: Mapping[str, TensorInfo], metadata: ModelMetadata) -> None:
    n_genes = len(metadata.genes)
    for name in metadata.outputs:
        if name not in outputs:
            raise ModelError(
                f"metadata 'vst.outputs' lists {name!r}, but the model has no such output "
                f"(its outputs: {', '.join(outputs)})"
            )
        node = outputs[name]
        if node.type != "tensor(float)":
            raise ModelError(f"output {name!r} must be float32; it is {node.type}")
        if len(node.shape) != 2:
            raise ModelError(f"output {name!r} must have shape (N, genes); it has {node.shape}")
        if isinstance(node.shape[1], int) and node.shape[1] != n_genes:
            raise ModelError(
                f"metadata 'vst.genes' lists {n_genes} genes but output {name!r} has "
                f"{node.shape[1]} values per tile"
            )


# -- what the engine uses -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """The validated ``vst.`` metadata of a model, as the engine uses it.

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
    context
        The spot context the model's values use, ``None`` for per-tile values.
    slide_statistics
        The per-slide standardisation the model needs, ``None`` for none.
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
    context: SpotContext | None = None
    slide_statistics: StatisticsSpec | None = None

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata, sha256: str = "") -> ModelInfo:
        """The engine's view of validated ``metadata`` for the file hashed ``sha256``."""
        return cls(
            genes=tuple(metadata.genes),
            tile_px=metadata.tile_px,
            tile_um=metadata.tile_um,
            family=metadata.family,
            target=metadata.target,
            outputs=tuple(metadata.outputs),
            extra_inputs=metadata.extra_inputs,
            metadata=metadata.as_dict(),
            sha256=sha256,
            context=metadata.context,
            slide_statistics=metadata.slide_statistics,
        )

    @property
    def mpp(self) -> float:
        """µm per pixel of the tiles the model expects."""
        return self.tile_um / self.tile_px

    @property
    def name(self) -> str:
        """Display name: ``vst.name`` if given, else the family."""
        return str(self.metadata.get("name", self.family))

    @property
    def values_description(self) -> str:
        """What a spot's value is, for people: ``per-tile`` or the context's line (and, for
        a model taking slide statistics, that its features are standardised per slide)."""
        per_slide = "; features standardised per slide" if self.slide_statistics else ""
        return describe_values(self.context) + per_slide


def read_model_info(session: ort.InferenceSession, sha256: str = "") -> ModelInfo:
    """Validate a session's metadata and graph against the contract.

    Raises
    ------
    ModelError
        Naming the first missing or inconsistent ``vst.`` key or tensor.
    """
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    check_graph(metadata, session.get_inputs(), session.get_outputs())
    return ModelInfo.from_metadata(metadata, sha256)


# -- ONNX files -----------------------------------------------------------------------------
def read_metadata(model: onnx.ModelProto) -> ModelMetadata:
    """The validated ``vst.`` metadata of an in-memory ONNX model (graph not checked)."""
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def attach_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """Set (replace) metadata properties on ``model`` in place and return it.

    ``metadata`` is strings, e.g. :meth:`ModelMetadata.to_props`; keys not in it are kept.
    """
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
