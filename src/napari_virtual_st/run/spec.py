"""``RunSpec``: everything one prediction run needs, as one frozen, picklable value.

The CLI, the cohort task, the Predict widget and the Measured ST widget each build a
``RunSpec`` from their own inputs (arguments, a slide list, a form) and hand it to
:func:`napari_virtual_st.run.run`; nothing else assembles a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.pipeline import GridChoice
from napari_virtual_st.precision import PRECISIONS

if TYPE_CHECKING:
    from napari_virtual_st.frames import Transform
    from napari_virtual_st.grid import SpotGrid

#: (x0, y0, x1, y1) level-0 pixels.
Region = tuple[float, float, float, float]


@dataclass(frozen=True)
class RunSpec:
    """One prediction run: a slide, a model, spots, a store.

    Attributes
    ----------
    slide_path
        The whole-slide image.
    model_path
        The ONNX model file, or the name of a bundled model (``"nsl_her2st"``).
    store_path
        The ``.vst.zarr`` store to write, or to resume when it holds an unfinished run of
        the same slide, model and grid.
    grid_kind
        ``"visium"``, ``"st"`` or ``"dense"``: a lattice laid over the tissue. Ignored
        when ``spots`` is given.
    spots
        Explicit spots to predict (e.g. the measured spots of a Visium section), instead of
        a lattice; no tissue is looked for then.
    mpp
        µm per level-0 pixel, overriding the slide's own value (required when it has none).
    fallback_mpp
        µm per level-0 pixel used only when the slide does not say (cohorts of mixed files).
    min_tissue_fraction
        Lattice spots with less tissue under them are skipped (0 keeps every spot).
    overlap_um
        Overlap between dense tiles.
    providers
        ONNX Runtime execution providers (``None``: the best available).
    batch_size
        Tiles per model call (one store chunk, new stores only).
    read_threads, intra_op_threads
        Tile-reading threads and ONNX Runtime's CPU threads; ``None`` sizes them together
        to the cores this process may use (:func:`~napari_virtual_st.pipeline.plan_threads`).
    precision
        ``"fp32"``, ``"int8"`` (the model's int8 variant: shipped, cached, or quantised on
        first use) or ``"auto"`` (int8 only where its recorded accuracy gate passed); see
        :mod:`napari_virtual_st.precision`. A store keeps the precision it was started in.
    overwrite
        Replace an existing prediction store instead of resuming it (never anything else).
    visible_xy_level0_px
        The region on screen: its spots are predicted first, from its middle out (the store
        is the same in any order).
    preview
        On slides whose tissue takes long to find, first predict a few spots found on a
        quick coarse mask (a :class:`~napari_virtual_st.run.events.PreviewEvent`).
    report_values
        Report the store's starting values (a resumed run's) with the
        :class:`~napari_virtual_st.run.events.StoreReadyEvent`, for a viewer.
    yield_cpu
        Leave the CPU to a GUI first: tile readers run at a lower priority from the start,
        the model's threads once the first values are out, and ONNX Runtime does not
        busy-wait between operators (Linux; elsewhere only the last).
    transform
        An alignment of measured data to this slide, saved with the finished store.
    allow_non_brightfield
        Predict even if the slide does not look like a bright-field H&E scan (it is refused
        otherwise: a fluorescence scan gives meaningless values).
    """

    slide_path: Path
    model_path: Path | str
    store_path: Path
    grid_kind: GridChoice = "visium"
    spots: SpotGrid | None = None
    mpp: float | None = None
    fallback_mpp: float | None = None
    min_tissue_fraction: float = 0.5
    overlap_um: float = 0.0
    providers: tuple[str, ...] | None = None
    batch_size: int = 32
    read_threads: int | None = None
    intra_op_threads: int | None = None
    precision: str = "fp32"
    overwrite: bool = False
    visible_xy_level0_px: Region | None = None
    preview: bool = False
    report_values: bool = False
    yield_cpu: bool = False
    transform: Transform | None = None
    allow_non_brightfield: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "slide_path", Path(self.slide_path))
        object.__setattr__(self, "store_path", Path(self.store_path))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ParameterError(
                f"the minimum tissue fraction must be between 0 and 1; got {self.min_tissue_fraction}"
            )
        if self.batch_size < 1 or (self.read_threads is not None and self.read_threads < 1):
            raise ParameterError("batch size and read threads must each be at least 1")
        if self.precision not in PRECISIONS:
            raise ParameterError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ParameterError(f"model threads must be at least 1; got {self.intra_op_threads}")
        for name in ("mpp", "fallback_mpp"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ParameterError(f"µm per pixel must be positive; got {value}")

    @property
    def grid_name(self) -> str:
        """What the spots are, for messages (``"visium"``, ``"measured"``...)."""
        return self.grid_kind if self.spots is None else "measured"
