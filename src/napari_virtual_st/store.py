"""``PredictionStore``: predictions of one slide on disk, written chunk by chunk.

Layout of ``<name>.vst.zarr`` (zarr v3)::

    expression    (n_spots, G) float32, NaN until predicted, chunked along spots
    variance      (n_spots, G) float32, when the model provides it
    xy_level0_px  (n_spots, 2) float64 spot centres, (x, y) level-0 pixels
    lattice_rc    (n_spots, 2) int32 lattice indices (row, col)
    done          (n_spots,)   bool, set after a chunk's values are on disk
    attrs         genes, model metadata, grid parameters, slide fingerprint, spot ids
    transform.json  optional: the alignment of measured ST data to this slide

The store owns its schema: readers take :attr:`PredictionStore.grid` (the :class:`SpotGrid`
rebuilt), :attr:`~PredictionStore.model` (a :class:`ModelRecord`) and
:attr:`~PredictionStore.slide` (a :class:`SlideRecord`), never the ``attrs`` dicts; keys that
an older store lacks read as ``None``.

A chunk's values are written before its ``done`` flags, and zarr writes each chunk file
atomically, so a cancelled or killed run leaves a store that resumes exactly where it stopped.

Spot context: the arrays always hold the model's *per-tile* outputs, so writing, resuming and
damage repair never depend on a spot's neighbours. When the model declares a spot context
(``vst.context``, recorded in the model record's metadata), :meth:`PredictionStore.expression`
and :meth:`~PredictionStore.variance` return *contextual* values, computed on reading from
the per-tile values of the done spots (:func:`napari_virtual_st.context.apply_context`);
``per_tile=True`` reads the stored values themselves. Every reader (exports, evaluation,
heatmaps, the viewer) goes through these two methods, so each gets the same values.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray

from napari_virtual_st.atomic import move_into_place, remove_path
from napari_virtual_st.context import ContextWeights, SpotContext, apply_context, spot_weights
from napari_virtual_st.errors import ModelError, ParameterError, StoreError, StoreMismatchError
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.slide_statistics import SlideStatistics
from napari_virtual_st.writer_lock import writer_lock

if TYPE_CHECKING:
    from napari_virtual_st.frames import Transform

STORE_FORMAT = "napari-virtual-st/prediction-store"
STORE_VERSION = 1
#: File inside the store holding the alignment of measured data to the slide.
TRANSFORM_FILE = "transform.json"


@dataclass(frozen=True)
class ModelRecord:
    """The model a store's predictions came from, as the run recorded it.

    Every field is ``None`` (``metadata`` empty) when the store does not record it.

    Attributes
    ----------
    file
        The model file's name.
    sha256
        Hash of the model file (what resuming checks).
    family
        Model family (e.g. ``"nsl"``).
    tile_px, tile_um
        Tile side the model reads, in pixels and in µm.
    target
        What a predicted value means (e.g. ``"log1p_cp10k"``).
    metadata
        The model's ``vst.`` metadata (name, license, ...).
    providers
        The ONNX Runtime execution providers that ran it.
    context
        The spot context the model declared (``metadata["context"]``); ``None``: its values
        are per-tile.
    """

    file: str | None = None
    sha256: str | None = None
    family: str | None = None
    tile_px: int | None = None
    tile_um: float | None = None
    target: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    providers: tuple[str, ...] | None = None
    context: SpotContext | None = None

    @classmethod
    def from_attrs(cls, record: Any) -> ModelRecord:
        """Read a store's ``attrs["model"]`` (missing or odd keys read as ``None``).

        Raises
        ------
        StoreError
            If it records a spot context that is malformed (values would be wrong, not
            merely undescribed).
        """
        record = record if isinstance(record, Mapping) else {}
        metadata = record.get("metadata")
        providers = record.get("providers")
        return cls(
            file=_text(record.get("file")),
            sha256=_text(record.get("sha256")),
            family=_text(record.get("family")),
            tile_px=_number(record.get("tile_px"), int),
            tile_um=_number(record.get("tile_um"), float),
            target=_text(record.get("target")),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
            providers=tuple(str(p) for p in providers) if isinstance(providers, list) else None,
            context=_context(metadata.get("context") if isinstance(metadata, Mapping) else None),
        )

    @property
    def display_name(self) -> str:
        """What to call the model: its metadata name, else its family, else its file."""
        return str(self.metadata.get("name") or self.family or self.file or "model")


@dataclass(frozen=True)
class SlideRecord:
    """The slide a store's predictions were made on (:meth:`Slide.describe`).

    Every field is ``None`` when the store does not record it.

    Attributes
    ----------
    name
        The slide file's name.
    path
        Where the slide was when predicted (absolute).
    fingerprint
        Content hash of the slide (what resuming and export check).
    mpp, mpp_source
        µm per level-0 pixel and where it came from (``"file"``, ``"override"``...).
    format
        The slide's file format.
    dimensions
        (width, height) of level 0 in pixels.
    """

    name: str | None = None
    path: Path | None = None
    fingerprint: str | None = None
    mpp: float | None = None
    mpp_source: str | None = None
    format: str | None = None
    dimensions: tuple[int, int] | None = None

    @classmethod
    def from_attrs(cls, record: Any) -> SlideRecord:
        """Read a store's ``attrs["slide"]`` (missing or odd keys read as ``None``)."""
        record = record if isinstance(record, Mapping) else {}
        path = record.get("path")
        dims = record.get("dimensions")
        return cls(
            name=_text(record.get("name")),
            path=Path(path) if isinstance(path, str) and path else None,
            fingerprint=_text(record.get("fingerprint")),
            mpp=_number(record.get("mpp"), float),
            mpp_source=_text(record.get("mpp_source")),
            format=_text(record.get("format")),
            dimensions=(int(dims[0]), int(dims[1]))
            if isinstance(dims, list) and len(dims) == 2
            else None,
        )


class PredictionStore:
    """Predicted expression of the spots of one slide, on disk.

    Use :meth:`create` for a new store and :meth:`open` for an existing one.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        attrs: dict[str, Any] = dict(group.attrs)
        if attrs.get("format") != STORE_FORMAT:
            raise StoreError(f"{path} is not a napari-virtual-st prediction store")
        missing = [k for k in ("genes", "chunk_spots", "n_spots") if k not in attrs]
        for name in ("expression", "done", "xy_level0_px", "lattice_rc"):
            try:
                present = name in group
            except Exception as exc:  # e.g. an empty or corrupt <name>/zarr.json
                raise StoreError(
                    f"{path} is a damaged prediction store: the description of its {name!r} "
                    f"array cannot be read ({type(exc).__name__}); predict again with --overwrite"
                ) from exc
            if not present:
                missing.append(name)
        if missing:
            raise StoreError(f"{path} is a damaged prediction store: it lacks {missing[0]!r}")
        self.attrs: dict[str, Any] = attrs
        self.genes: tuple[str, ...] = tuple(attrs["genes"])
        self.chunk_spots: int = int(attrs["chunk_spots"])

    # -- creation / opening ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        grid: SpotGrid,
        genes: Sequence[str],
        with_variance: bool = False,
        chunk_spots: int = 64,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> PredictionStore:
        """Create an empty store for ``grid`` (atomically: it appears complete or not at all).

        Parameters
        ----------
        path
            Folder to create, conventionally ``<name>.vst.zarr``.
        grid
            The spots to be predicted.
        genes
            Gene names in model output order.
        with_variance
            Also allocate a ``variance`` array.
        chunk_spots
            Spots per chunk: the unit of writing, of resuming, and of batching.
        provenance
            JSON-friendly record (model metadata, slide, grid, software) kept in ``attrs``.
        overwrite
            Replace an existing store at ``path`` (kept if the new one cannot be created).

        Raises
        ------
        StoreError
            If ``path`` exists (without ``overwrite``) or cannot be written.
        ParameterError
            If the grid is empty or ``chunk_spots`` is below 1.
        """
        path = store_location(path)
        if chunk_spots < 1:
            raise ParameterError(f"chunk size must be at least 1 spot; got {chunk_spots}")
        if len(grid) == 0:
            raise ParameterError("the grid has no spots to predict (no tissue found?)")
        with writer_lock(path, "creating the store"):
            cls._create_locked(
                path, grid, genes, with_variance, chunk_spots, provenance or {}, overwrite
            )
        return cls.open(path, mode="r+")

    @classmethod
    def _create_locked(
        cls,
        path: Path,
        grid: SpotGrid,
        genes: Sequence[str],
        with_variance: bool,
        chunk_spots: int,
        provenance: Mapping[str, Any],
        overwrite: bool,
    ) -> None:
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise StoreError(f"{path} already exists")
            refuse_unless_replaceable(path)
        if path.parent.is_dir():  # leftovers of a creation killed half-way
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        tag = uuid.uuid4().hex[:8]
        tmp = path.with_name(f".{path.name}.{tag}.tmp")
        n, g = len(grid), len(genes)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            root.create_array(
                "expression",
                shape=(n, g),
                chunks=(chunk_spots, g),
                dtype="float32",
                fill_value=np.nan,
            )
            if with_variance:
                root.create_array(
                    "variance",
                    shape=(n, g),
                    chunks=(chunk_spots, g),
                    dtype="float32",
                    fill_value=np.nan,
                )
            xy = root.create_array(
                "xy_level0_px", shape=(n, 2), chunks=(max(n, 1), 2), dtype="float64"
            )
            xy[:] = grid.xy_level0_px
            rc = root.create_array(
                "lattice_rc", shape=(n, 2), chunks=(max(n, 1), 2), dtype="int32"
            )
            rc[:] = grid.lattice_rc
            root.create_array(
                "done", shape=(n,), chunks=(chunk_spots,), dtype="bool", fill_value=False
            )
            root.attrs.update(
                _jsonable(
                    {
                        "format": STORE_FORMAT,
                        "format_version": STORE_VERSION,
                        "genes": list(genes),
                        "chunk_spots": chunk_spots,
                        "n_spots": n,
                        "grid": grid.describe(),
                        "spot_ids": None if grid.spot_ids is None else list(grid.spot_ids),
                        "status": "running",
                        **provenance,
                    }
                )
            )
            move_into_place(tmp, path, path.with_name(f".{path.name}.{tag}.old"))
        except BaseException as exc:
            remove_path(tmp)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot create the prediction store {path}: {exc}") from exc
            raise

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "r+"] = "r") -> PredictionStore:
        """Open an existing store (``mode="r"`` read-only, ``"r+"`` to continue writing)."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"prediction store not found: {path}")
        if not path.is_dir():
            raise StoreError(
                f"{path} is not a readable prediction store (it is a file, not a .vst.zarr folder)"
            )
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as exc:  # zarr raises several types for foreign folders
            raise StoreError(f"{path} is not a readable prediction store ({exc})") from exc
        return cls(path, group)

    def check_matches(
        self,
        *,
        slide_fingerprint: str,
        model_sha256: str,
        grid: SpotGrid,
        slide_name: str = "",
        model_name: str = "",
    ) -> None:
        """Refuse to resume onto a different slide, model or grid.

        Raises
        ------
        StoreMismatchError
            Naming what differs.
        """
        slide, model = self.slide, self.model
        where = f"{self.path.name} "
        hint = "; choose another output or overwrite it"
        if slide.fingerprint != slide_fingerprint:
            raise StoreMismatchError(
                f"{where}holds predictions for a different slide ({slide.name or '?'}), not {slide_name or 'this one'}{hint}"
            )
        if model.sha256 != model_sha256:
            raise StoreMismatchError(
                f"{where}was made with a different model ({model.file or '?'}), not {model_name or 'this one'}{hint}"
            )
        if self.grid_fingerprint != grid.fingerprint:
            raise StoreMismatchError(f"{where}was made with different spot grid settings{hint}")

    # -- records ----------------------------------------------------------------------------
    @functools.cached_property
    def grid(self) -> SpotGrid:
        """The spots of this store: the :class:`SpotGrid` it was created for (read once).

        Raises
        ------
        StoreError
            If the store records no usable grid description.
        """
        try:
            return SpotGrid.from_description(
                self.attrs.get("grid") or {},
                self.xy_level0_px,
                self.lattice_rc,
                self.attrs.get("spot_ids") or None,
            )
        except (ParameterError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path.name} records no usable spot grid ({exc})") from exc

    @property
    def grid_fingerprint(self) -> str | None:
        """The recorded fingerprint of the store's grid (``None`` when not recorded)."""
        grid = self.attrs.get("grid")
        return _text(grid.get("fingerprint")) if isinstance(grid, Mapping) else None

    @property
    def model(self) -> ModelRecord:
        """The model the predictions came from, as recorded."""
        return ModelRecord.from_attrs(self.attrs.get("model"))

    @property
    def slide(self) -> SlideRecord:
        """The slide the predictions were made on, as recorded."""
        return SlideRecord.from_attrs(self.attrs.get("slide"))

    # -- contents ---------------------------------------------------------------------------
    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return int(self.attrs["n_spots"])

    @property
    def n_chunks(self) -> int:
        """Number of chunks (units of work)."""
        return -(-self.n_spots // self.chunk_spots)

    def chunk_slice(self, chunk: int) -> slice:
        """The spots of one chunk."""
        start = chunk * self.chunk_spots
        return slice(start, min(start + self.chunk_spots, self.n_spots))

    @property
    def has_variance(self) -> bool:
        """Whether a variance array is stored."""
        return "variance" in self._group

    def _array(self, name: str) -> zarr.Array:
        """The stored array ``name`` (a group of that name means the store is damaged)."""
        node = self._group[name]
        if not isinstance(node, zarr.Array):
            raise StoreError(
                f"{self.path} is a damaged prediction store: {name!r} is not an array"
            )
        return node

    @property
    def xy_level0_px(self) -> NDArray[np.float64]:
        """``(n_spots, 2)`` spot centres, (x, y) level-0 pixels."""
        return np.asarray(self._array("xy_level0_px")[:])

    @property
    def lattice_rc(self) -> NDArray[np.int32]:
        """``(n_spots, 2)`` lattice indices (row, col)."""
        return np.asarray(self._array("lattice_rc")[:])

    @property
    def spot_ids(self) -> list[str]:
        """Spot names (barcodes when given, else ``"row_col"``)."""
        return spot_names(self.attrs.get("spot_ids"), self.lattice_rc)

    @property
    def done(self) -> NDArray[np.bool_]:
        """``(n_spots,)`` whether each spot has been predicted."""
        return np.asarray(self._array("done")[:], dtype=bool)

    def done_chunks(self) -> NDArray[np.bool_]:
        """Whether each chunk is finished."""
        done = self.done
        return np.array(
            [done[self.chunk_slice(c)].all() for c in range(self.n_chunks)], dtype=bool
        )

    @property
    def is_complete(self) -> bool:
        """Whether every spot has been predicted."""
        return bool(self.done.all())

    @property
    def context(self) -> SpotContext | None:
        """The spot context of the model's values (``None``: per-tile values)."""
        return self.model.context

    @property
    def slide_statistics(self) -> SlideStatistics | None:
        """The slide statistics the model was fed (``None``: a model that takes none).

        Raises
        ------
        StoreError
            When the record is damaged.
        """
        record = self.attrs.get("slide_statistics")
        return None if record is None else SlideStatistics.from_attrs(record)

    @property
    def is_contextual(self) -> bool:
        """Whether :meth:`expression` gives contextual values (the model declares context)."""
        return self.context is not None

    @functools.cached_property
    def context_weights(self) -> ContextWeights | None:
        """The context kernel's weights between the store's spots (``None`` without context).

        Spot centres in µm are the level-0 centres × the grid's µm per pixel; built once per
        open store.
        """
        context = self.context
        if context is None:
            return None
        grid = self.grid
        return spot_weights(grid.xy_level0_px, grid.mpp, context)

    def expression(
        self,
        genes: Sequence[str] | None = None,
        spots: slice | None = None,
        *,
        per_tile: bool = False,
    ) -> NDArray[np.float32]:
        """``(n_spots, G)`` predicted values (NaN where not yet predicted).

        Parameters
        ----------
        genes
            Restrict to these genes, in this order.
        spots
            Restrict to this range of spots (per-tile: reads only the chunks it covers;
            contextual: the neighbours are read too).
        per_tile
            The model's own value of each tile, as stored, even when the model declares a
            spot context (default: the values the model declares, contextual or not).
        """
        return self._values("expression", genes, spots, per_tile)

    def variance(
        self,
        genes: Sequence[str] | None = None,
        spots: slice | None = None,
        *,
        per_tile: bool = False,
    ) -> NDArray[np.float32]:
        """``(n_spots, G)`` predicted variance; raises if the model gave none.

        With a spot context it is the same weighted mean of the neighbours' variances as the
        values are of their values: an upper bound of the variance of the contextual value,
        whatever the correlation between neighbours (Jensen / Cauchy–Schwarz).
        """
        if not self.has_variance:
            raise StoreError(f"{self.path.name} holds no variance (the model does not provide it)")
        return self._values("variance", genes, spots, per_tile)

    def gene_values(self, gene: str, *, per_tile: bool = False) -> NDArray[np.float32]:
        """``(n_spots,)`` predicted values of one gene (see :meth:`expression`)."""
        return self.expression([gene], per_tile=per_tile)[:, 0]

    def _values(
        self, name: str, genes: Sequence[str] | None, spots: slice | None, per_tile: bool
    ) -> NDArray[np.float32]:
        weights = None if per_tile else self.context_weights
        if weights is None:
            return self._read(name, genes, spots)
        tile = self._read(name, genes)
        tile[~self.done] = np.nan  # (a chunk forgotten for repair holds stale values)
        rows = None if spots is None else slice(*spots.indices(self.n_spots))
        columns = None if genes is None else self.gene_index(genes)  # (per-gene ring weights)
        return apply_context(tile, weights, rows, columns)

    def _read(
        self, name: str, genes: Sequence[str] | None, spots: slice | None = None
    ) -> NDArray[np.float32]:
        arr = self._array(name)
        index = None if genes is None else self.gene_index(genes)
        wanted = slice(0, self.n_spots) if spots is None else slice(*spots.indices(self.n_spots))
        try:
            data = np.asarray(arr[wanted])
        except Exception:  # a damaged chunk (truncated: the codec raises): read around it
            data = self._read_around_damage(arr, wanted)
        return data if index is None else data[:, index]

    def _read_around_damage(self, arr: Any, spots: slice) -> NDArray[np.float32]:
        """``arr[spots]`` chunk by chunk, NaN for a chunk that cannot be read (the damage is
        reported by :func:`napari_virtual_st.store_health.check_store`)."""
        data = np.full((spots.stop - spots.start, arr.shape[1]), np.nan, np.float32)
        for chunk in range(spots.start // self.chunk_spots, -(-spots.stop // self.chunk_spots)):
            part = self.chunk_slice(chunk)
            lo, hi = max(part.start, spots.start), min(part.stop, spots.stop)
            if lo >= hi:
                continue
            with contextlib.suppress(Exception):
                data[lo - spots.start : hi - spots.start] = np.asarray(arr[lo:hi])
        return data

    def gene_index(self, genes: Sequence[str]) -> list[int]:
        """Column indices of ``genes``; raises naming the first unknown gene."""
        lookup = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in lookup]
        if missing:
            raise ParameterError(f"gene {missing[0]!r} is not predicted by this model")
        return [lookup[g] for g in genes]

    # -- writing ----------------------------------------------------------------------------
    def write_chunk(
        self,
        chunk: int,
        expression: NDArray[np.float32],
        variance: NDArray[np.float32] | None = None,
    ) -> None:
        """Write one chunk's predictions, then mark its spots done.

        Parameters
        ----------
        chunk
            Chunk number (see :meth:`chunk_slice`).
        expression
            ``(spots in the chunk, G)`` values.
        variance
            Values of the same shape; required when the store holds variance, else ignored.

        Raises
        ------
        ParameterError
            If a shape is wrong or the variance is missing; nothing is written then.
        """
        sl = self.chunk_slice(chunk)
        n = sl.stop - sl.start
        shape = (n, len(self.genes))
        if expression.shape != shape:
            raise ParameterError(
                f"chunk {chunk} needs expression of shape {shape}; got {expression.shape}"
            )
        stored_variance: NDArray[np.float32] | None = None
        if self.has_variance:
            if variance is None:
                raise ParameterError("this store holds variance; the chunk has none")
            if variance.shape != shape:
                raise ParameterError(
                    f"chunk {chunk} needs variance of shape {shape}; got {variance.shape}"
                )
            stored_variance = variance
        self._array("expression")[sl] = expression
        if stored_variance is not None:
            self._array("variance")[sl] = stored_variance
        self._array("done")[sl] = True

    def forget_chunks(self, chunks: Sequence[int]) -> None:
        """Mark chunks as not predicted (their values were found missing or damaged), so a
        resumed run predicts them again."""
        for chunk in chunks:
            self._array("done")[self.chunk_slice(chunk)] = False

    def save_transform(self, transform: Transform) -> Path:
        """Keep the alignment of measured data to this slide with the store.

        Written atomically to ``transform.json`` inside the store folder (a read-only open
        store can take it too); it replaces an earlier one.

        Returns
        -------
        pathlib.Path
            The file written.
        """
        from napari_virtual_st.atomic import atomic_path

        path = self.path / TRANSFORM_FILE
        with writer_lock(self.path, "saving an alignment"), atomic_path(path) as tmp:
            tmp.write_text(transform.to_json())
        return path

    def load_transform(self) -> Transform | None:
        """The alignment saved with :meth:`save_transform`, or ``None`` when there is none.

        Raises
        ------
        AlignmentError
            If the saved file is damaged (the message says why).
        """
        from napari_virtual_st.frames import Transform

        path = self.path / TRANSFORM_FILE
        if not path.is_file():
            return None
        return Transform.from_json(path.read_text())

    def set_status(self, status: str, **extra: Any) -> None:
        """Record the run status (``running``, ``cancelled``, ``complete``) and extras in attrs."""
        update = _jsonable({"status": status, **extra})
        self._group.attrs.update(update)
        self.attrs.update(update)

    def __repr__(self) -> str:
        return f"PredictionStore({self.path.name!r}, spots={self.n_spots}, genes={len(self.genes)}, done={int(self.done.sum())})"


def spot_names(spot_ids: Sequence[str] | None, lattice_rc: NDArray[np.integer]) -> list[str]:
    """Spot names: the given ids (barcodes), else ``"row_col"`` on a lattice, else indices."""
    if spot_ids:
        return list(spot_ids)
    rc = np.asarray(lattice_rc).reshape(-1, 2)
    if (rc >= 0).all():
        return [f"{r}_{c}" for r, c in rc]
    return [str(i) for i in range(len(rc))]


def store_location(path: str | Path) -> Path:
    """``path`` as a store location: ``.`` or ``..`` become the folder they name.

    Raises
    ------
    StoreError
        If the path names no folder (the file-system root).
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        path = path.resolve()
    if not path.name:
        raise StoreError(f"{path} cannot be a prediction store: give a name like slide.vst.zarr")
    return path


def is_prediction_store(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a prediction store of napari-virtual-st.

    Only its ``zarr.json`` is read: a store whose arrays are damaged still counts (it can be
    replaced or repaired); a symbolic link never does (replacing it would replace the link).
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        document = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = document.get("attributes") if isinstance(document, dict) else None
    return isinstance(attrs, dict) and attrs.get("format") == STORE_FORMAT


def refuse_unless_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless it is a prediction store (or an empty folder).

    ``--overwrite`` and the plugin's "replace" only ever remove what this package made: any
    other file or folder is refused, named, and left exactly as it is.

    Raises
    ------
    StoreError
        Saying what ``path`` is.
    """
    if is_prediction_store(path):
        return
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            if not any(path.iterdir()):
                return
        what = "a folder that is not a prediction store"
        with contextlib.suppress(OSError):
            count = sum(1 for _ in path.iterdir())
            what = f"a folder of {count} item{'s' if count != 1 else ''}, not a prediction store"
    elif path.is_symlink():
        what = "a symbolic link"
    else:
        what = "a file, not a prediction store"
    raise StoreError(
        f"will not replace {path}: it is {what}. Only a prediction store (.vst.zarr) is ever "
        "replaced; choose another output"
    )


def _context(value: Any) -> SpotContext | None:
    """The recorded spot context (a JSON object, or its text as an older run kept it)."""
    if value is None:
        return None
    try:
        return SpotContext.from_json(value if isinstance(value, str) else dict(value))
    except (ModelError, TypeError, ValueError) as exc:
        raise StoreError(
            f"the store records a spot context it cannot use ({exc}); predict again with "
            "--overwrite"
        ) from None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """``value`` as an int or float, ``None`` when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and tuples become plain types."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
