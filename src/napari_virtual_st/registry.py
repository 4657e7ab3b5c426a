"""The models that ship with the package: which is the default and why, their model cards,
the terms they may be used under, and turning a name or a path into a model file."""

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

    @property
    def is_default(self) -> bool:
        """Whether this is the model used when none is named (``DEFAULT_MODEL_NAME``)."""
        return self.name == DEFAULT_MODEL_NAME

    @property
    def card(self) -> Path | None:
        """Its model card (Markdown), or ``None`` if this installation has none."""
        return model_card(self.name, None if self.info is None else self.info.family)


def bundled_models_dir() -> Path:
    """Folder holding the bundled ``.onnx`` files."""
    return Path(str(resources.files("napari_virtual_st") / "bundled_models"))


def bundled_models() -> list[BundledModel]:
    """Every bundled model, validated, sorted by name."""
    return [_validated(path) for path in sorted(bundled_models_dir().glob("*.onnx"))]


def _validated(path: Path) -> BundledModel:
    try:
        return BundledModel(path.stem, path, Predictor(path, providers=["cpu"]).info)
    except VirtualSTError as exc:
        return BundledModel(path.stem, path, None, str(exc))


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


#: The bundled model used when no model is named (``virtual-st predict`` without ``--model``,
#: ``virtual-st demo``, the plugin's choosers); ``DEFAULT_MODEL_REASON`` says why, in one
#: sentence that ``virtual-st models`` prints.
DEFAULT_MODEL_NAME = "nsl_lite0_multilayer_floored_her2st"
DEFAULT_MODEL_REASON = (
    "the model the evaluation protocol recommends (models/results/summary.md): NSL's stain "
    "features and a frozen ImageNet encoder's morphology (four of its layers, on a 224 px "
    "tile per spot), the encoder's features standardised by each slide's own statistics "
    "(128 tiles spread over its tissue, each spread floored so the sample hardly matters), "
    "in one graph; ahead of every other bundled model on held-out sections of patient C "
    "(with spot context); on patient A's low-resolution thumbnail level with the other NSL "
    "mixes, NSL and the colour baseline; about half as fast as the previous default "
    "(nsl_lite0_multilayer_her2st), and its first values wait about 1.4 s (2 cores) for the "
    "slide's statistics"
)

#: What may and may not be done with the bundled models' weights (``virtual-st models`` prints
#: it, in text and JSON; the README says the same).
BUNDLED_MODEL_TERMS = (
    "The bundled models' weights are not covered by the package's BSD-3-Clause licence: they "
    "were trained on HER2ST (Andersson et al. 2021, github.com/almaan/her2st), whose data "
    "licence is unknown. Use them for research and to try the software; do not use them for "
    "diagnosis or any clinical decision; do not redistribute them, or anything derived from "
    "them, outside this package, nor use them commercially, unless the HER2ST authors allow "
    "it. The package needs none of them: any ONNX model that follows the contract runs with "
    "--model FILE.onnx."
)

#: Where the model cards are inside an installed package (the wheel copies each bundled
#: model's ``models/<family>/README.md`` here as ``<name>.md``; see pyproject.toml).
_CARDS = "cards"


def model_card(name: str, family: str | None = None) -> Path | None:
    """The model card of a bundled model, or ``None`` if this installation has none.

    Parameters
    ----------
    name
        The bundled model's name (file stem).
    family
        Its family (``vst.family``): in a source checkout, where the wheel's copy does not
        exist, the card is the repository's ``models/<family>/README.md``.
    """
    installed = bundled_models_dir() / _CARDS / f"{name}.md"
    if installed.is_file():
        return installed
    if family is None:
        return None
    repository = Path(__file__).resolve().parents[2]
    in_checkout = repository / "models" / family / "README.md"
    if (repository / "pyproject.toml").is_file() and in_checkout.is_file():
        return in_checkout
    return None


def default_model() -> BundledModel:
    """The bundled model used when none is named.

    ``DEFAULT_MODEL_NAME`` when it is bundled and valid, else the first valid one by name.

    Raises
    ------
    ModelError
        If no valid model is bundled.
    """
    path = bundled_models_dir() / f"{DEFAULT_MODEL_NAME}.onnx"
    if path.is_file():  # validate only this one: loading the others takes longer
        model = _validated(path)
        if model.info is not None:
            return model
    usable = [m for m in bundled_models() if m.info is not None]
    if usable:
        return usable[0]
    raise ModelError(
        "no usable model is bundled with this installation; pass an ONNX model with --model FILE.onnx"
    )


#: Training data sets whose tissue is known: name in the model's ``training.data`` → tissue.
_TISSUES = {"HER2ST": "HER2+ breast cancer", "STNET": "breast cancer"}


def trained_on(info: ModelInfo) -> str:
    """The tissue a model learnt from, when its training data say ("" when unknown)."""
    training = info.metadata.get("training")
    data = str(training.get("data", "")) if isinstance(training, dict) else ""
    for name, tissue in _TISSUES.items():
        if name.lower() in data.lower():
            return f"{tissue} ({name})"
    return ""


def sample_note(info: ModelInfo) -> str:
    """What to say when a model runs on the bundled sample slide (CMU-1, not the tissue the
    bundled models learnt from)."""
    tissue = trained_on(info)
    if not tissue:
        return ""
    return (
        f"The sample slide is not {tissue.split(' (')[0]}, the tissue this model learnt from: "
        "on it, the maps show the software working, not the slide's biology."
    )
