"""The models that ship with the package, and turning a name or a path into a model file."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from napari_virtual_st.contract import ModelInfo
from napari_virtual_st.errors import ModelError, VirtualSTError
from napari_virtual_st.predictor import Predictor


@dataclass(frozen=True)
class BundledModel:
    """A model file shipped in ``napari_virtual_st/bundled_models``.

    Attributes
    ----------
    name
        File stem, used on the command line (``--model NAME``).
    path
        The ``.onnx`` file.
    info
        Its validated contract metadata, or ``None`` if it failed validation.
    problem
        Why it failed validation, if it did.
    """

    name: str
    path: Path
    info: ModelInfo | None
    problem: str | None = None


def bundled_models_dir() -> Path:
    """Folder holding the bundled ``.onnx`` files."""
    return Path(str(resources.files("napari_virtual_st") / "bundled_models"))


def bundled_models() -> list[BundledModel]:
    """Every bundled model, validated, sorted by name."""
    found = []
    for path in sorted(bundled_models_dir().glob("*.onnx")):
        try:
            info = Predictor(path, providers=["cpu"]).info
            found.append(BundledModel(path.stem, path, info))
        except VirtualSTError as exc:
            found.append(BundledModel(path.stem, path, None, str(exc)))
    return found


def resolve_model(name_or_path: str | Path) -> Path:
    """The model file for a bundled model name or a path to an ``.onnx`` file.

    Raises
    ------
    ModelError
        If it is neither an existing file nor a bundled model's name.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = bundled_models_dir() / f"{name_or_path}.onnx"
    if candidate.is_file():
        return candidate
    names = [m.name for m in bundled_models()]
    known = f"bundled models: {', '.join(names)}" if names else "no models are bundled yet"
    raise ModelError(
        f"model {str(name_or_path)!r} is neither an ONNX file nor a bundled model ({known})"
    )


def sample_slide_path() -> Path:
    """The real sample slide shipped with the package (Aperio CMU-1-Small-Region.svs)."""
    return Path(
        str(resources.files("napari_virtual_st") / "sample_data" / "CMU-1-Small-Region.svs")
    )


#: The bundled model used when none is named: the small, fast NSL model, so the demo and the
#: plugin's first run take seconds on any CPU. Other bundled models are chosen by name.
DEFAULT_MODEL_NAME = "nsl_her2st"


def default_model() -> BundledModel:
    """The bundled model used when none is named.

    ``DEFAULT_MODEL_NAME`` when it is bundled and valid, else the first valid one by name.

    Raises
    ------
    ModelError
        If no valid model is bundled.
    """
    usable = [m for m in bundled_models() if m.info is not None]
    for model in usable:
        if model.name == DEFAULT_MODEL_NAME:
            return model
    if usable:
        return usable[0]
    raise ModelError("no usable model is bundled with this installation; pass --model FILE.onnx")
