"""Exports of a prediction store: AnnData for scanpy/squidpy, GeoJSON for QuPath.

- :func:`to_anndata` / :func:`write_h5ad` — the spots (optionally only those inside some
  regions) as an ``AnnData`` laid out like a Space Ranger Visium run read by scanpy:
  ``X`` predicted values (float32), ``obsm['spatial']`` spot centres in level-0 (x, y) px,
  ``uns['spatial'][library_id]`` with a downsampled slide image (``hires``, ``lowres``),
  ``scalefactors`` (``tissue_hires_scalef``: image px per level-0 px;
  ``spot_diameter_fullres``: level-0 px) and ``metadata``. ``squidpy.pl.spatial_scatter``
  and ``scanpy.pl.spatial`` plot it with no extra arguments.
- :func:`to_geojson` / :func:`write_geojson` — every spot (or tile) as a QuPath *detection*
  with its predicted genes as ``measurements`` and its region's class as ``classification``,
  plus the regions as *annotations*; *File → Import objects from file* in QuPath reads it.
- :func:`export_store` — both, for the command line, with an optional ``progress`` callback
  and ``cancel`` check; :func:`export_steps` is the same as a generator of
  :class:`ExportProgress` (what the napari widget's thread worker runs). A cancelled or
  failed export leaves nothing under the final names.

Every file is written atomically (:mod:`napari_virtual_st.atomic`).

Values are the store's (:meth:`PredictionStore.expression`): contextual when the model
declares a spot context, computed over every predicted spot of the slide (a spot at a
region's edge keeps its neighbours outside the region). Each file says which: AnnData
``uns['virtual_st']['values']`` (``per-tile`` or ``contextual (…)``, with
``uns['virtual_st']['context']`` and the per-tile values in ``layers['per_tile']``); GeoJSON a
``virtual_st`` member of the collection and, for contextual values, each detection's
``metadata`` (QuPath keeps it with the object).

SpatialData (zarr) is not written: ``spatialdata`` pins ``dask``/``distributed`` below the
versions the cohort runner uses, so it cannot be installed beside this package cleanly.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st.atomic import atomic_path
from napari_virtual_st.context import describe_values
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.grid import match_spots
from napari_virtual_st.regions import (
    CLASS_PALETTE,
    Region,
    assign_spots,
    class_colors,
    regions_to_geojson,
)
from napari_virtual_st.store import PredictionStore

if TYPE_CHECKING:
    import anndata as ad

    from napari_virtual_st.frames import Transform
    from napari_virtual_st.measured import MeasuredST
    from napari_virtual_st.slide import Slide

#: Longer side (px) of the images stored with the AnnData (Space Ranger's sizes).
HIRES_PX = 2000
LOWRES_PX = 600
#: Vertices of the polygon drawn for a round spot in GeoJSON.
SPOT_POLYGON_VERTICES = 32
#: Significant digits kept for GeoJSON measurements (float32 holds about 7).
MEASUREMENT_DIGITS = 6
#: Namespace of the stable QuPath object ids given to spots.
_SPOT_ID_NAMESPACE = uuid.UUID("8a3c2f0e-6d0b-4a55-9a57-5f1d3c7e2b19")


#: Spots turned into GeoJSON features between two progress reports (and cancel checks).
GEOJSON_CHUNK_SPOTS = 2000


class ExportError(VirtualSTError):
    """An export cannot be made (nothing to export, slide missing, data not aligned)."""


class ExportCancelled(ExportError):
    """The export was cancelled; nothing was written under the final names."""


# -- selecting spots ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SpotSelection:
    """The spots of a store chosen for export.

    Attributes
    ----------
    spot_index
        ``(n,)`` rows of the store, in store order: predicted spots inside the regions (all
        predicted spots when there are no regions).
    region_index
        ``(n,)`` index of each spot's region in ``regions`` (``-1`` without regions).
    regions
        The regions used (empty without regions).
    """

    spot_index: NDArray[np.intp]
    region_index: NDArray[np.intp]
    regions: tuple[Region, ...]

    def __len__(self) -> int:
        return len(self.spot_index)

    def counts(self) -> dict[str, int]:
        """Spots per region label (regions sharing a label are added up)."""
        out: dict[str, int] = {}
        for j, region in enumerate(self.regions):
            out[region.label] = out.get(region.label, 0) + int(np.sum(self.region_index == j))
        return out


def select_spots(store: PredictionStore, regions: Sequence[Region] | None = None) -> SpotSelection:
    """The predicted spots of ``store`` inside ``regions`` (every predicted spot without).

    Raises
    ------
    ExportError
        If no spot is predicted yet, or no predicted spot lies inside the regions.
    """
    done = store.done
    if not done.any():
        raise ExportError(
            f"{store.path.name} holds no predicted spot yet: run or resume the prediction first"
        )
    if not regions:
        index = np.flatnonzero(done)
        return SpotSelection(index, np.full(len(index), -1, np.intp), ())
    regions = tuple(regions)
    assignment = assign_spots(regions, store.xy_level0_px)
    keep = assignment.assigned & done
    if not keep.any():
        labels = ", ".join(dict.fromkeys(r.label for r in regions))
        raise ExportError(
            f"no predicted spot lies inside the regions ({labels}): are they from this slide "
            "(coordinates in its full-resolution pixels)?"
        )
    index = np.flatnonzero(keep)
    return SpotSelection(index, assignment.region_index[index], regions)


# -- AnnData ------------------------------------------------------------------------------------
def to_anndata(
    store: PredictionStore,
    regions: Sequence[Region] | None = None,
    *,
    slide: Slide | str | Path | None = None,
    measured: MeasuredST | None = None,
    transform: Transform | None = None,
    library_id: str | None = None,
    hires_px: int = HIRES_PX,
    lowres_px: int = LOWRES_PX,
) -> ad.AnnData:
    """The predicted spots as an AnnData in scanpy's Visium layout.

    Parameters
    ----------
    store
        The predictions.
    regions
        Keep only the spots inside these (all predicted spots when ``None``).
    slide
        The slide (or its path) for the images; default: the path recorded in the store.
    measured
        Measured data of the same section: adds ``layers['measured']`` (in the model's
        target units, NaN where a spot or gene has no measurement).
    transform
        Measured full-resolution px → slide level-0 px (identity when omitted).
    library_id
        Key under ``uns['spatial']``; default: the slide's file name without extension.
    hires_px, lowres_px
        Longer side of the stored ``hires`` and ``lowres`` slide images.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 predictions; ``var_names`` genes; ``obs`` indexed by spot id with
        ``array_row``/``array_col`` (lattice indices), ``spot_index`` (store row) and, with
        regions, ``region`` and ``region_class``; ``obsm['spatial']`` level-0 (x, y) px;
        ``uns['spatial']``; ``layers['variance']`` when the model gives it;
        ``uns['virtual_st']`` the provenance (model, slide, grid, regions).

    Raises
    ------
    ExportError
        If nothing can be exported, the slide is missing or is not the store's slide, or
        the measured data do not overlap the spots.
    """
    return _run(
        _anndata_steps(
            store,
            select_spots(store, regions),
            slide=slide,
            measured=measured,
            transform=transform,
            library_id=library_id,
            hires_px=hires_px,
            lowres_px=lowres_px,
        )
    )


def _anndata_steps(
    store: PredictionStore,
    selection: SpotSelection,
    *,
    slide: Slide | str | Path | None,
    measured: MeasuredST | None,
    transform: Transform | None,
    library_id: str | None,
    hires_px: int = HIRES_PX,
    lowres_px: int = LOWRES_PX,
) -> Generator[str, None, ad.AnnData]:
    """Build the AnnData of :func:`to_anndata`, yielding the name of each phase done."""
    import anndata as ad
    import pandas as pd

    index = selection.spot_index
    x = store.expression()[index].astype(np.float32, copy=False)
    ids = store.spot_ids
    rc = store.lattice_rc[index]
    obs = pd.DataFrame(
        {
            "array_row": rc[:, 0].astype(np.int32),
            "array_col": rc[:, 1].astype(np.int32),
            "spot_index": index.astype(np.int64),
        },
        index=pd.Index([str(ids[i]) for i in index], name="spot_id"),
    )
    uns: dict[str, Any] = {}
    if selection.regions:
        _add_region_columns(obs, uns, selection)
    var = pd.DataFrame(index=pd.Index([str(g) for g in store.genes], name="gene"))
    adata = ad.AnnData(X=x, obs=obs, var=var, uns=uns)
    adata.obsm["spatial"] = store.xy_level0_px[index].astype(np.float64)
    if store.has_variance:
        adata.layers["variance"] = store.variance()[index].astype(np.float32, copy=False)
    if store.is_contextual:  # X is contextual: the model's own tile values beside it
        adata.layers["per_tile"] = store.expression(per_tile=True)[index]
    yield "read the predicted values"
    library = library_id or Path(store.slide.name or "slide").stem
    adata.uns["spatial"] = {library: _spatial_entry(store, slide, hires_px, lowres_px)}
    adata.uns["virtual_st"] = _provenance(store, selection, library)
    if measured is not None:
        values, info = _measured_values(store, index, measured, transform)
        adata.layers["measured"] = values
        adata.var["measured"] = info.pop("gene_measured")
        adata.uns["virtual_st"]["measured"] = info
    yield "read the slide images"
    return adata


_T = TypeVar("_T")


def _run(steps: Generator[Any, None, _T]) -> _T:
    """Run a generator of steps to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _add_region_columns(obs: Any, uns: dict[str, Any], selection: SpotSelection) -> None:
    import pandas as pd

    regions = selection.regions
    present = sorted(set(selection.region_index.tolist()))
    labels = list(dict.fromkeys(regions[j].label for j in present))
    obs["region"] = pd.Categorical(
        [regions[j].label for j in selection.region_index], categories=labels
    )
    uns["region_colors"] = [
        _hex(CLASS_PALETTE[i % len(CLASS_PALETTE)]) for i in range(len(labels))
    ]
    classes = list(
        dict.fromkeys(
            regions[j].classification for j in present if regions[j].classification is not None
        )
    )
    if classes:
        obs["region_class"] = pd.Categorical(
            [regions[j].classification for j in selection.region_index], categories=classes
        )
        colors = class_colors(regions)
        uns["region_class_colors"] = [_hex(colors[c]) for c in classes]


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def _spatial_entry(
    store: PredictionStore, slide: Slide | str | Path | None, hires_px: int, lowres_px: int
) -> dict[str, Any]:
    """``uns['spatial'][library_id]``: images, scale factors and metadata, as scanpy reads."""
    from napari_virtual_st._version import __version__
    from napari_virtual_st.slide import Slide

    if hires_px < 1 or lowres_px < 1:
        raise ExportError(f"image sizes must be positive; got {hires_px} and {lowres_px}")
    grid = store.grid
    mpp = grid.mpp
    recorded = store.slide
    if slide is None:
        path = recorded.path
        if path is None or not path.exists():
            raise ExportError(
                f"the slide of {store.path.name} ({recorded.name or '?'}) is not at "
                f"{path or 'a recorded place'}: give the slide file (--slide)"
            )
        slide = path
    own = not isinstance(slide, Slide)
    opened = slide if isinstance(slide, Slide) else Slide(slide, mpp=mpp)
    try:
        expected = recorded.fingerprint
        if expected and opened.fingerprint != expected:
            raise ExportError(
                f"{opened.path.name} is not the slide {store.path.name} was predicted on "
                f"({recorded.name or '?'})"
            )
        w0, h0 = opened.dimensions
        images: dict[str, NDArray[np.uint8]] = {}
        scalefactors: dict[str, float] = {}
        for key, side in (("hires", hires_px), ("lowres", lowres_px)):
            image = np.ascontiguousarray(opened.thumbnail(side)[..., :3], dtype=np.uint8)
            images[key] = image
            scalefactors[f"tissue_{key}_scalef"] = float(
                (image.shape[1] / w0 + image.shape[0] / h0) / 2
            )
        source = str(opened.path)
    finally:
        if own:
            opened.close()
    scalefactors["spot_diameter_fullres"] = grid.spot_diameter_um / mpp
    metadata = {
        "chemistry_description": "virtual (predicted from H&E by napari-virtual-st)",
        "software_version": f"napari-virtual-st {__version__}",
        "source_image_path": source,
    }
    return {"images": images, "scalefactors": scalefactors, "metadata": metadata}


def _provenance(store: PredictionStore, selection: SpotSelection, library: str) -> dict[str, Any]:
    """Model, slide, grid and regions, flattened to what HDF5 stores (no None)."""
    from napari_virtual_st._version import __version__

    model, slide, grid = store.model, store.slide, store.grid
    metadata = dict(model.metadata)
    record = {
        "library_id": library,
        "store": str(store.path),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": f"napari-virtual-st {__version__}",
        "complete": bool(store.is_complete),
        "values": describe_values(store.context),
        "context": None if store.context is None else store.context.as_dict(),
        "model": {
            "file": model.file,
            "name": metadata.get("name"),
            "family": model.family,
            "target": model.target,
            "sha256": model.sha256,
            "tile_px": model.tile_px,
            "tile_um": model.tile_um,
            "license": metadata.get("license"),
            "metadata_json": json.dumps(metadata),
        },
        "slide": {
            "name": slide.name,
            "fingerprint": slide.fingerprint,
            "mpp": grid.mpp,
            "dimensions": slide.dimensions,
        },
        "grid": {
            "kind": grid.kind,
            "spot_diameter_um": grid.spot_diameter_um,
            "pitch_um": grid.pitch_um,
            "fingerprint": store.grid_fingerprint,
        },
        "regions_geojson": json.dumps(regions_to_geojson(selection.regions))
        if selection.regions
        else "",
        "store_attrs_json": json.dumps(
            {k: v for k, v in store.attrs.items() if k not in ("genes", "spot_ids")}
        ),
    }
    return _no_none(record)


def _no_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _no_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_no_none(v) for v in value]
    return value


def _measured_values(
    store: PredictionStore,
    index: NDArray[np.intp],
    measured: MeasuredST,
    transform: Transform | None,
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Measured values at the exported spots, in the model's target units (NaN: none)."""
    from napari_virtual_st.measured import log1p_cp10k

    ids = store.grid.spot_ids
    rows, match = match_spots(
        store.xy_level0_px[index],
        measured.xy_fullres_px if transform is None else transform.apply(measured.xy_fullres_px),
        store.grid.match_distance_px,
        spot_ids=[ids[i] for i in index] if ids else None,
        other_ids=measured.spot_ids,
    )
    matched = rows >= 0
    if not matched.any():
        raise ExportError(
            "no exported spot lies on a measured spot: check the alignment (--transform)"
        )
    target = store.model.target or ""
    counts = measured.counts[rows[matched]]
    values_all = (
        log1p_cp10k(counts) if target == "log1p_cp10k" else counts.toarray().astype(np.float32)
    )
    gene_lookup = {g: i for i, g in enumerate(measured.genes)}
    out_cols = [j for j, g in enumerate(store.genes) if g in gene_lookup]
    out = np.full((len(index), len(store.genes)), np.nan, np.float32)
    if out_cols:
        src_cols = [gene_lookup[store.genes[j]] for j in out_cols]
        out_index = np.ix_(np.flatnonzero(matched), np.asarray(out_cols, dtype=np.intp))
        out[out_index] = values_all[:, src_cols]
    gene_measured = np.zeros(len(store.genes), bool)
    gene_measured[out_cols] = True
    info = {
        "units": "log1p_cp10k" if target == "log1p_cp10k" else "counts",
        "spot_match": match,
        "n_spots_matched": int(matched.sum()),
        "source": measured.source,
        "gene_measured": gene_measured,
    }
    if transform is not None:
        info["transform_json"] = transform.to_json()
    return out, info


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write an AnnData to ``.h5ad`` atomically (gzip-compressed).

    Raises
    ------
    ExportError
        If the file cannot be written.
    """
    path = _check_output(path)
    try:
        with atomic_path(path) as tmp:
            _write_h5ad(adata, tmp)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from exc
    return path


# -- QuPath GeoJSON -----------------------------------------------------------------------------
def to_geojson(
    store: PredictionStore,
    regions: Sequence[Region] | None = None,
    *,
    genes: Sequence[str] | None = None,
    include_regions: bool = True,
    include_variance: bool = False,
) -> dict[str, Any]:
    """Spots as QuPath detections with gene measurements (and regions as annotations).

    Each predicted spot (inside ``regions``, when given) becomes a ``Feature`` with
    ``properties.objectType = "detection"``, ``name`` = spot id, a stable ``id`` (UUID),
    ``measurements`` = ``{gene: value}`` and, when its region has a class,
    ``classification = {"name": class, "color": [r, g, b]}``. Round spots are polygons
    marked ``isEllipse`` (QuPath restores an ellipse); dense tiles are squares.
    Coordinates are level-0 px, (x, y) — QuPath's frame.

    Parameters
    ----------
    store
        The predictions.
    regions
        Keep only spots inside these; they are also written as annotations.
    genes
        Genes to include as measurements (default: all).
    include_regions
        Write the regions as annotation features before the detections.
    include_variance
        Also add ``"<gene> variance"`` measurements when the store has variance.
    """
    return _run(
        _geojson_steps(
            store,
            select_spots(store, regions),
            genes=genes,
            include_regions=include_regions,
            include_variance=include_variance,
        )
    )


def _geojson_steps(
    store: PredictionStore,
    selection: SpotSelection,
    *,
    genes: Sequence[str] | None = None,
    include_regions: bool = True,
    include_variance: bool = False,
    chunk: int | None = None,
) -> Generator[int, None, dict[str, Any]]:
    """Build the document of :func:`to_geojson`, yielding the spots done after each chunk."""
    chunk = chunk or GEOJSON_CHUNK_SPOTS
    index = selection.spot_index
    names = list(store.genes) if genes is None else list(genes)
    columns = np.asarray(store.gene_index(names), dtype=np.intp)
    values = _round_significant(store.expression()[np.ix_(index, columns)], MEASUREMENT_DIGITS)
    keys = list(names)
    if include_variance and store.has_variance:
        variance = store.variance()[np.ix_(index, columns)]
        values = np.concatenate([values, _round_significant(variance, MEASUREMENT_DIGITS)], 1)
        keys += [f"{g} variance" for g in names]
    outlines = _spot_outlines(store, index)
    ellipse = store.grid.kind != "dense"
    colors = class_colors(selection.regions)
    ids = store.spot_ids
    seed = f"{store.slide.fingerprint or ''}/{store.grid_fingerprint or ''}"
    features: list[dict[str, Any]] = []
    if include_regions and selection.regions:
        features.extend(regions_to_geojson(selection.regions)["features"])
    described = describe_values(store.context)
    for k, i in enumerate(index):
        properties: dict[str, Any] = {"objectType": "detection", "name": str(ids[i])}
        if store.is_contextual:
            properties["metadata"] = {"virtual_st_values": described}
        if selection.regions:
            cls = selection.regions[selection.region_index[k]].classification
            if cls is not None:
                properties["classification"] = {"name": cls, "color": list(colors[cls])}
        row = values[k]
        properties["measurements"] = {
            key: float(v) for key, v in zip(keys, row.tolist(), strict=True) if math.isfinite(v)
        }
        geometry: dict[str, Any] = {"type": "Polygon", "coordinates": [outlines[k].tolist()]}
        if ellipse:
            geometry["isEllipse"] = True
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_SPOT_ID_NAMESPACE, f"{seed}/{ids[i]}")),
                "geometry": geometry,
                "properties": properties,
            }
        )
        if (k + 1) % chunk == 0 and k + 1 < len(index):
            yield k + 1
    yield len(index)
    record: dict[str, Any] = {"values": described, "model": store.model.display_name}
    if store.context is not None:
        record["context"] = store.context.as_dict()
    return {"type": "FeatureCollection", "virtual_st": record, "features": features}


def _spot_outlines(store: PredictionStore, index: NDArray[np.intp]) -> NDArray[np.float64]:
    """``(n, m, 2)`` closed outlines (level-0 px) of the spots: circles, or squares for tiles."""
    grid = store.grid
    radius = grid.spot_radius_px
    if grid.kind == "dense":
        unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], np.float64)
    else:
        t = np.linspace(0, 2 * np.pi, SPOT_POLYGON_VERTICES, endpoint=False)
        unit = np.stack([np.cos(t), np.sin(t)], axis=1)
        unit = np.concatenate([unit, unit[:1]])
    centres = store.xy_level0_px[index]
    return np.round(centres[:, None, :] + radius * unit[None], 2)


def _round_significant(values: NDArray[np.floating], digits: int) -> NDArray[np.float64]:
    """Round to ``digits`` significant digits so that JSON holds short decimals."""
    a = np.asarray(values, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(a)))
    magnitude = np.where(np.isfinite(magnitude), magnitude, 0)
    decimals = np.clip(digits - 1 - magnitude, -22, 22)
    up = decimals >= 0
    out = np.empty_like(a)
    scale = 10.0 ** np.abs(decimals)
    out[up] = np.round(a[up] * scale[up]) / scale[up]
    out[~up] = np.round(a[~up] / scale[~up]) * scale[~up]
    return out


def write_geojson(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write GeoJSON atomically, as strict JSON (no NaN), UTF-8.

    Raises
    ------
    ExportError
        If the file cannot be written.
    """
    path = _check_output(path)
    try:
        with atomic_path(path) as tmp:
            _dump_geojson(document, tmp)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from exc
    return path


def _dump_geojson(document: Mapping[str, Any], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(document, fh, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _check_output(path: str | Path) -> Path:
    """An output path that names a file (not a folder) in a folder that can exist."""
    path = Path(path).expanduser()
    if not path.name or path.is_dir():
        raise ExportError(f"{path} is a folder: give a file name to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    return path


def write_regions_geojson(regions: Sequence[Region], path: str | Path) -> Path:
    """Write regions as QuPath annotations (e.g. regions drawn in napari, for QuPath)."""
    if not regions:
        raise ExportError("there are no regions to write")
    return write_geojson(regions_to_geojson(regions), path)


# -- both ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_store` wrote.

    Attributes
    ----------
    n_spots
        Spots exported.
    region_counts
        Spots per region label (empty without regions).
    h5ad, geojson
        The files written, or ``None``.
    """

    n_spots: int
    region_counts: dict[str, int]
    h5ad: Path | None = None
    geojson: Path | None = None


@dataclass(frozen=True)
class ExportProgress:
    """Where an export stands, as reported by :func:`export_steps`.

    Attributes
    ----------
    done, total
        Steps done so far and in all (selection, values, images, h5ad writing, each chunk of
        GeoJSON spots, GeoJSON writing).
    message
        What was just done, e.g. ``"GeoJSON: 4,000 of 9,500 spots"``.
    """

    done: int
    total: int
    message: str

    @property
    def fraction(self) -> float:
        """Share of the work done, 0–1."""
        return self.done / self.total if self.total else 1.0


def export_steps(
    store: PredictionStore | str | Path,
    regions: Sequence[Region] | None = None,
    *,
    h5ad: str | Path | None = None,
    geojson: str | Path | None = None,
    slide: Slide | str | Path | None = None,
    measured: MeasuredST | None = None,
    transform: Transform | None = None,
    library_id: str | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Generator[ExportProgress, None, ExportResult]:
    """:func:`export_store` step by step: a generator of :class:`ExportProgress`.

    The files are written under temporary names and moved into place together after the
    last step, so stopping the generator early (``close()``, an error, ``cancel``) leaves
    nothing under the final names (and older files there as they were). Napari's thread
    workers run this directly.

    Parameters
    ----------
    store, regions, h5ad, geojson, slide, measured, transform, library_id
        As for :func:`export_store`.
    cancel
        Called between steps; when it returns true the export stops with
        :class:`ExportCancelled`.

    Returns
    -------
    ExportResult
        The value of the ``StopIteration`` that ends the generator.
    """
    h5ad_path, geojson_path = _check_outputs(h5ad, geojson)
    if not isinstance(store, PredictionStore):
        store = PredictionStore.open(store)
    selection = select_spots(store, regions)
    n_chunks = max(1, math.ceil(len(selection) / GEOJSON_CHUNK_SPOTS))
    total = 1 + (3 if h5ad_path is not None else 0) + (n_chunks + 1 if geojson_path else 0)
    done = 0

    def step(message: str) -> ExportProgress:
        nonlocal done
        if cancel is not None and cancel():
            raise ExportCancelled("export cancelled: nothing was written")
        done += 1
        return ExportProgress(done, total, message)

    counts = selection.counts()
    where = f" in {len(counts)} regions" if counts else ""
    yield step(f"{len(selection):,} spots{where}")
    with contextlib.ExitStack() as files:
        if h5ad_path is not None:
            adata_steps = _anndata_steps(
                store,
                selection,
                slide=slide,
                measured=measured,
                transform=transform,
                library_id=library_id,
            )
            adata = yield from _relay(adata_steps, lambda phase: step(f".h5ad: {phase}"))
            tmp = files.enter_context(_export_file(h5ad_path))
            _write_h5ad(adata, tmp)
            del adata
            yield step(f"wrote {h5ad_path.name}")
        if geojson_path is not None:
            document = yield from _relay(
                _geojson_steps(store, selection),
                lambda n: step(f"GeoJSON: {n:,} of {len(selection):,} spots"),
            )
            tmp = files.enter_context(_export_file(geojson_path))
            _dump_geojson(document, tmp)
            del document
            yield step(f"wrote {geojson_path.name}")
        if cancel is not None and cancel():
            raise ExportCancelled("export cancelled: nothing was written")
    return ExportResult(len(selection), counts, h5ad_path, geojson_path)


def _check_outputs(
    h5ad: str | Path | None, geojson: str | Path | None
) -> tuple[Path | None, Path | None]:
    """The export's output paths, checked (at least one, writable, not the same file)."""
    if h5ad is None and geojson is None:
        raise ExportError("say what to write: an .h5ad file, a GeoJSON file, or both")
    h5ad_path = None if h5ad is None else _check_output(h5ad)
    geojson_path = None if geojson is None else _check_output(geojson)
    if h5ad_path is not None and h5ad_path == geojson_path:
        raise ExportError(f"the .h5ad and the GeoJSON cannot both be written to {h5ad_path}")
    return h5ad_path, geojson_path


def _relay(
    steps: Generator[Any, None, _T], progress: Callable[[Any], ExportProgress]
) -> Generator[ExportProgress, None, _T]:
    """Yield ``progress(x)`` for each ``x`` that ``steps`` yields; return what it returns."""
    while True:
        try:
            item = next(steps)
        except StopIteration as stop:
            return stop.value
        yield progress(item)


@contextlib.contextmanager
def _export_file(path: Path) -> Generator[Path, None, None]:
    """:func:`atomic_path`, with write errors as :class:`ExportError`."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        message = f"cannot write {path}: {_one_line(exc)}"
    else:
        return
    raise ExportError(message)


def _one_line(exc: BaseException) -> str:
    """An error's text on one line (HDF5's messages span several)."""
    return " ".join(str(exc).split())


def _write_h5ad(adata: ad.AnnData, path: Path) -> None:
    """Write ``adata`` as an ``.h5ad`` (gzip), through memory.

    HDF5 builds the file in memory and Python writes its bytes: a full disk is then an
    ordinary write error. (HDF5 writing to a full disk itself left its objects in a state
    that crashed the process, SIGSEGV, when they were collected.)
    """
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    adata.strings_to_categoricals()  # (as AnnData.write_h5ad does)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write_elem(f, "/", adata, dataset_kwargs={"compression": "gzip"})
    with path.open("wb") as out:
        out.write(buffer.getbuffer())


def export_store(
    store: PredictionStore | str | Path,
    regions: Sequence[Region] | None = None,
    *,
    h5ad: str | Path | None = None,
    geojson: str | Path | None = None,
    slide: Slide | str | Path | None = None,
    measured: MeasuredST | None = None,
    transform: Transform | None = None,
    library_id: str | None = None,
    progress: Callable[[ExportProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ExportResult:
    """Export a store to ``.h5ad`` and/or QuPath GeoJSON (see :func:`to_anndata`,
    :func:`to_geojson`); the command line's ``virtual-st export`` calls this, the napari
    widget its step-by-step form :func:`export_steps`.

    Parameters
    ----------
    store
        The prediction store (or its path).
    regions
        Export only the spots inside these (every predicted spot when ``None``).
    h5ad, geojson
        Where to write the AnnData and the QuPath GeoJSON (at least one).
    slide, measured, transform, library_id
        As for :func:`to_anndata`.
    progress
        Called with an :class:`ExportProgress` after each step.
    cancel
        Called between steps; when it returns true the export stops with
        :class:`ExportCancelled` and writes nothing under the final names.

    Raises
    ------
    ExportError
        If no output is asked for, an output path is a folder, or an export cannot be made.
    ExportCancelled
        If ``cancel`` asked to stop.
    """
    steps = export_steps(
        store,
        regions,
        h5ad=h5ad,
        geojson=geojson,
        slide=slide,
        measured=measured,
        transform=transform,
        library_id=library_id,
        cancel=cancel,
    )
    try:
        while True:
            try:
                report = next(steps)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(report)
    finally:
        steps.close()  # a callback that raised: the temporary files go at once
