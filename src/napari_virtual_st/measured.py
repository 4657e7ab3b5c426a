"""Measured spatial transcriptomics: Space Ranger ``outs/``, ``.h5ad``, and legacy ST.

Every loader returns a :class:`MeasuredST`: a spots × genes count matrix with the spot centres
in pixels of the data's own full-resolution image (``xy_fullres_px``, (x, y) order), the
lattice indices, and the images and scale factors that came with it. Aligning those pixels
to a slide's level-0 pixels is :mod:`napari_virtual_st.align`'s job.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.grid import ST_SPOT_UM, VISIUM_SPOT_UM, SpotGrid

if TYPE_CHECKING:
    from napari_virtual_st.align import Transform


class MeasuredDataError(VirtualSTError):
    """Measured spatial transcriptomics files are missing, malformed or inconsistent."""


@dataclass(frozen=True, eq=False)
class MeasuredST:
    """Measured counts of one section.

    Attributes
    ----------
    counts
        ``(n_spots, n_genes)`` CSR matrix of raw counts (float32).
    genes
        Gene symbols, column order.
    spot_ids
        Spot barcodes or ``"<x>x<y>"`` array ids, row order.
    xy_fullres_px
        ``(n_spots, 2)`` spot centres, (x, y) pixels of the full-resolution image.
    array_rc
        ``(n_spots, 2)`` lattice (row, col) indices.
    spot_diameter_fullres_px
        Spot diameter in full-resolution pixels, when known.
    images
        Images that came with the data, name (``hires``, ``lowres``, ``fullres``) → path.
    scalefactors
        Space Ranger-style scale factors (``tissue_hires_scalef``, ...): image px per full-res px.
    gene_ids
        Ensembl ids when given.
    source
        ``"spaceranger"``, ``"h5ad"`` or ``"legacy_st"``.
    """

    counts: sp.csr_matrix
    genes: tuple[str, ...]
    spot_ids: tuple[str, ...]
    xy_fullres_px: NDArray[np.float64]
    array_rc: NDArray[np.int32]
    spot_diameter_fullres_px: float | None = None
    images: dict[str, Path] = field(default_factory=dict)
    scalefactors: dict[str, float] = field(default_factory=dict)
    gene_ids: tuple[str, ...] | None = None
    source: str = ""

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return self.counts.shape[0]

    @property
    def spot_diameter_um(self) -> float:
        """Physical spot diameter of the technology: legacy ST 100 µm, else Visium 55 µm."""
        return ST_SPOT_UM if self.source == "legacy_st" else VISIUM_SPOT_UM

    def spot_grid(self, mpp: float, transform: Transform | None = None) -> SpotGrid:
        """The measured spots as an explicit grid on the slide (level-0 px).

        The grid keeps the spots' ids and lattice indices, so a prediction made on it joins
        the measured data by id.

        Parameters
        ----------
        mpp
            The slide's µm per level-0 pixel.
        transform
            Measured full-resolution px → slide level-0 px; ``None`` when the measured
            coordinates already are the slide's.
        """
        xy = self.xy_fullres_px if transform is None else transform.apply(self.xy_fullres_px)
        return SpotGrid.from_coordinates(
            xy,
            mpp,
            self.spot_diameter_um,
            lattice_rc=self.array_rc,
            spot_ids=list(self.spot_ids),
        )

    def log1p_cp10k(self) -> NDArray[np.float32]:
        """``log1p`` of counts per 10,000 (library size over all genes), dense float32."""
        return log1p_cp10k(self.counts)

    def subset_spots(self, keep: NDArray[np.bool_] | NDArray[np.integer]) -> MeasuredST:
        """The same data restricted to some spots."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return MeasuredST(
            counts=self.counts[idx],
            genes=self.genes,
            spot_ids=tuple(self.spot_ids[i] for i in idx),
            xy_fullres_px=self.xy_fullres_px[idx],
            array_rc=self.array_rc[idx],
            spot_diameter_fullres_px=self.spot_diameter_fullres_px,
            images=dict(self.images),
            scalefactors=dict(self.scalefactors),
            gene_ids=self.gene_ids,
            source=self.source,
        )

    def gene_columns(self, genes: Sequence[str]) -> NDArray[np.float32]:
        """Dense ``(n_spots, len(genes))`` counts of ``genes`` (zeros for absent genes)."""
        lookup = {g: i for i, g in enumerate(self.genes)}
        out = np.zeros((self.n_spots, len(genes)), np.float32)
        present = [(j, lookup[g]) for j, g in enumerate(genes) if g in lookup]
        if present:
            cols = [c for _, c in present]
            out[:, [j for j, _ in present]] = self.counts[:, cols].toarray()
        return out


def log1p_cp10k(counts: sp.spmatrix | NDArray[np.number]) -> NDArray[np.float32]:
    """``log1p(10_000 · counts / library size)`` per spot; spots with no counts stay 0."""
    dense = np.asarray(counts) if isinstance(counts, np.ndarray) else counts.toarray()
    dense = dense.astype(np.float64)
    library = dense.sum(axis=1, keepdims=True)
    scaled = np.divide(dense * 1e4, library, out=np.zeros_like(dense), where=library > 0)
    return np.log1p(scaled).astype(np.float32)


# -- legacy Spatial Transcriptomics ---------------------------------------------------------
def read_legacy_st(
    counts_path: str | Path,
    spots_path: str | Path,
    image_path: str | Path | None = None,
    *,
    pixel_scale: float = 1.0,
    selected_only: bool = True,
) -> MeasuredST:
    """Read a legacy ST section: a spot × gene count table and a spot (selection) file.

    Parameters
    ----------
    counts_path
        Tab-separated counts (optionally gzipped): first column ``"<x>x<y>"`` array ids,
        header of gene names.
    spots_path
        Spot file with columns ``x y new_x new_y pixel_x pixel_y selected`` (ST spot detector,
        as in HER2ST and STUtility).
    image_path
        The H&E image the pixel columns refer to (recorded as ``fullres``).
    pixel_scale
        Factor from the spot file's pixels to ``image_path``'s pixels (e.g. 0.287604 for the
        downscaled HER2ST A1 PNG).
    selected_only
        Keep only spots marked ``selected == 1`` (under tissue).

    Returns
    -------
    MeasuredST
        Spots present in both files; the spot ids are the ``"<x>x<y>"`` array ids.
    """
    counts_path, spots_path = Path(counts_path), Path(spots_path)
    for path in (counts_path, spots_path):
        if not path.is_file():
            raise MeasuredDataError(f"file not found: {path}")
    ids, genes, matrix = _read_count_table(counts_path)
    positions: dict[str, tuple[float, float, int, int]] = {}
    with spots_path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        needed = {"x", "y", "pixel_x", "pixel_y"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise MeasuredDataError(
                f"{spots_path.name} is not an ST spot file: it needs columns x, y, pixel_x, pixel_y (and selected)"
            )
        for row in reader:
            if selected_only and row.get("selected", "1").strip() not in ("1", "1.0"):
                continue
            key = f"{int(float(row['x']))}x{int(float(row['y']))}"
            positions[key] = (
                float(row["pixel_x"]),
                float(row["pixel_y"]),
                int(float(row["y"])),
                int(float(row["x"])),
            )
    keep = [i for i, spot in enumerate(ids) if spot in positions]
    if not keep:
        raise MeasuredDataError(f"no spot of {counts_path.name} appears in {spots_path.name}")
    kept_ids = tuple(ids[i] for i in keep)
    xy = np.array([positions[s][:2] for s in kept_ids], np.float64) * pixel_scale
    rc = np.array([positions[s][2:] for s in kept_ids], np.int32)
    images = {"fullres": Path(image_path)} if image_path is not None else {}
    return MeasuredST(
        counts=matrix[keep],
        genes=genes,
        spot_ids=kept_ids,
        xy_fullres_px=xy,
        array_rc=rc,
        images=images,
        source="legacy_st",
    )


def _read_count_table(path: Path) -> tuple[list[str], tuple[str, ...], sp.csr_matrix]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            genes = tuple(header[1:])
            ids: list[str] = []
            rows: list[NDArray[np.float32]] = []
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != len(header):
                    raise MeasuredDataError(
                        f"{path.name}: row {len(ids) + 2} has {len(parts)} fields, the header {len(header)}"
                    )
                ids.append(parts[0])
                rows.append(np.asarray(parts[1:], dtype=np.float32))
    except (OSError, ValueError, EOFError) as exc:
        raise MeasuredDataError(f"cannot read the count table {path.name}: {exc}") from exc
    if not ids:
        raise MeasuredDataError(f"{path.name} holds no spots")
    return ids, genes, sp.csr_matrix(np.vstack(rows))


# -- Space Ranger ---------------------------------------------------------------------------
def read_space_ranger(outs: str | Path) -> MeasuredST:
    """Read a Space Ranger ``outs/`` folder (v1 ``tissue_positions_list.csv`` or v2
    ``tissue_positions.csv``; ``filtered_feature_bc_matrix.h5`` or the ``.mtx`` folder).

    Returns only spots under tissue that have counts; centres in full-resolution pixels.
    """
    outs = Path(outs)
    spatial = outs / "spatial"
    if not spatial.is_dir():
        raise MeasuredDataError(
            f"{outs} has no spatial/ folder: is it a Space Ranger outs/ folder?"
        )
    barcodes, genes, gene_ids, matrix = _read_feature_matrix(outs)
    positions = _read_tissue_positions(spatial)
    scalefactors: dict[str, float] = {}
    sf_path = spatial / "scalefactors_json.json"
    if sf_path.is_file():
        try:
            scalefactors = {k: float(v) for k, v in json.loads(sf_path.read_text()).items()}
        except (ValueError, TypeError) as exc:
            raise MeasuredDataError(
                f"{sf_path.name} is not valid JSON scale factors: {exc}"
            ) from exc
    keep = [i for i, b in enumerate(barcodes) if b in positions and positions[b][0]]
    if not keep:
        raise MeasuredDataError(
            "no barcode of the count matrix is a tissue spot in the tissue positions file"
        )
    ids = tuple(barcodes[i] for i in keep)
    xy = np.array([positions[b][3:5] for b in ids], np.float64)
    rc = np.array([positions[b][1:3] for b in ids], np.int32)
    images = {
        name: spatial / f"tissue_{name}_image.png"
        for name in ("hires", "lowres")
        if (spatial / f"tissue_{name}_image.png").is_file()
    }
    return MeasuredST(
        counts=matrix[keep],
        genes=genes,
        spot_ids=ids,
        xy_fullres_px=xy,
        array_rc=rc,
        spot_diameter_fullres_px=scalefactors.get("spot_diameter_fullres"),
        images=images,
        scalefactors=scalefactors,
        gene_ids=gene_ids,
        source="spaceranger",
    )


def _read_feature_matrix(
    outs: Path,
) -> tuple[list[str], tuple[str, ...], tuple[str, ...], sp.csr_matrix]:
    h5 = outs / "filtered_feature_bc_matrix.h5"
    mtx_dir = outs / "filtered_feature_bc_matrix"
    if h5.is_file():
        import h5py

        try:
            with h5py.File(h5, "r") as f:
                g = f["matrix"]
                shape = tuple(int(v) for v in g["shape"][:])
                csc = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape)
                barcodes = [b.decode() for b in g["barcodes"][:]]
                names = tuple(n.decode() for n in g["features/name"][:])
                ids = tuple(n.decode() for n in g["features/id"][:])
        except (OSError, KeyError) as exc:
            raise MeasuredDataError(
                f"{h5.name} is not a 10x feature-barcode HDF5 file: {exc}"
            ) from exc
        return barcodes, names, ids, csc.T.tocsr().astype(np.float32)
    if mtx_dir.is_dir():
        from scipy.io import mmread

        def _lines(name: str) -> list[list[str]]:
            path = mtx_dir / name
            if not path.exists():
                path = mtx_dir / name.removesuffix(".gz")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as fh:
                return [line.rstrip("\n").split("\t") for line in fh if line.strip()]

        try:
            features = _lines("features.tsv.gz")
            barcodes = [row[0] for row in _lines("barcodes.tsv.gz")]
            mtx_path = mtx_dir / "matrix.mtx.gz"
            matrix = mmread(mtx_path if mtx_path.exists() else mtx_dir / "matrix.mtx")
        except (OSError, ValueError, IndexError) as exc:
            raise MeasuredDataError(
                f"cannot read the Matrix Market folder {mtx_dir.name}: {exc}"
            ) from exc
        names = tuple(row[1] if len(row) > 1 else row[0] for row in features)
        ids = tuple(row[0] for row in features)
        return barcodes, names, ids, sp.csr_matrix(matrix).T.tocsr().astype(np.float32)
    raise MeasuredDataError(
        f"{outs} has neither filtered_feature_bc_matrix.h5 nor a filtered_feature_bc_matrix/ folder"
    )


def _read_tissue_positions(spatial: Path) -> dict[str, tuple[int, int, int, float, float]]:
    """barcode → (in_tissue, array_row, array_col, x_fullres, y_fullres)."""
    v2, v1 = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    path = v2 if v2.is_file() else v1
    if not path.is_file():
        raise MeasuredDataError(
            f"{spatial} has no tissue_positions.csv or tissue_positions_list.csv"
        )
    out: dict[str, tuple[int, int, int, float, float]] = {}
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if rows and rows[0] and rows[0][0] == "barcode":
        rows = rows[1:]
    for row in rows:
        if len(row) < 6:
            raise MeasuredDataError(f"{path.name}: expected 6 columns, found {len(row)}")
        barcode, in_tissue, arow, acol, pxl_row, pxl_col = row[:6]
        out[barcode] = (int(in_tissue), int(arow), int(acol), float(pxl_col), float(pxl_row))
    return out


# -- AnnData --------------------------------------------------------------------------------
def read_h5ad(path: str | Path, library_id: str | None = None) -> MeasuredST:
    """Read an ``.h5ad`` with ``obsm['spatial']`` (full-resolution (x, y) px, as scanpy
    writes Visium) and, when present, ``uns['spatial'][library_id]`` scale factors."""
    import anndata as ad

    path = Path(path)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise MeasuredDataError(f"cannot read {path.name} as AnnData: {exc}") from exc
    if "spatial" not in adata.obsm:
        raise MeasuredDataError(f"{path.name} has no obsm['spatial'] spot coordinates")
    x = adata.layers.get("counts", adata.X)
    counts = sp.csr_matrix(x, dtype=np.float32)
    rc = np.full((adata.n_obs, 2), -1, np.int32)
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        rc = adata.obs[["array_row", "array_col"]].to_numpy(np.int32)
    scalefactors: dict[str, Any] = {}
    spatial_uns = adata.uns.get("spatial", {})
    if spatial_uns:
        lib = library_id if library_id is not None else next(iter(spatial_uns))
        if lib not in spatial_uns:
            raise MeasuredDataError(f"{path.name} has no library {lib!r} in uns['spatial']")
        scalefactors = {k: float(v) for k, v in spatial_uns[lib].get("scalefactors", {}).items()}
    return MeasuredST(
        counts=counts,
        genes=tuple(str(g) for g in adata.var_names),
        spot_ids=tuple(str(s) for s in adata.obs_names),
        xy_fullres_px=np.asarray(adata.obsm["spatial"], np.float64)[:, :2],
        array_rc=rc,
        spot_diameter_fullres_px=scalefactors.get("spot_diameter_fullres"),
        scalefactors=scalefactors,
        source="h5ad",
    )


def read_measured(
    path: str | Path,
    *,
    spots: str | Path | None = None,
    image: str | Path | None = None,
    pixel_scale: float = 1.0,
) -> MeasuredST:
    """Read measured data of any supported kind.

    Parameters
    ----------
    path
        A Space Ranger ``outs/`` folder, an ``.h5ad`` file, or a legacy ST count table.
    spots
        The legacy ST spot (selection) file; required with a count table.
    image
        The image the legacy ST pixel columns refer to (optional).
    pixel_scale
        Legacy ST: factor from the spot file's pixels to the image's pixels.
    """
    path = Path(path)
    if path.is_dir():
        return refuse_bad_counts(read_space_ranger(path), path)
    if path.suffix == ".h5ad":
        return refuse_bad_counts(read_h5ad(path), path)
    if path.name.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        if spots is None:
            raise MeasuredDataError(
                f"{path.name} is a legacy ST count table: give its spot file too (--spots)"
            )
        return refuse_bad_counts(read_legacy_st(path, spots, image, pixel_scale=pixel_scale), path)
    if not path.exists():
        raise MeasuredDataError(f"measured data not found: {path}")
    raise MeasuredDataError(
        f"{path.name} is not measured ST data this tool reads (a Space Ranger outs/ folder, .h5ad, or a legacy ST .tsv)"
    )


def refuse_bad_counts(measured: MeasuredST, path: Path) -> MeasuredST:
    """``measured``, if its counts are counts: finite and not negative.

    Raises
    ------
    MeasuredDataError
        Naming the file and how many values are NaN, infinite or negative (normalised or
        log-transformed data is not counts).
    """
    values = measured.counts.data
    not_finite = int((~np.isfinite(values)).sum())
    negative = int((values < 0).sum())
    if not_finite or negative:
        what = []
        if not_finite:
            what.append(f"{not_finite:,} NaN or infinite")
        if negative:
            what.append(f"{negative:,} negative")
        raise MeasuredDataError(
            f"{path.name} holds {' and '.join(what)} values where raw counts (whole numbers "
            "≥ 0) are expected; give the raw counts (an .h5ad's layers['counts'] or X before "
            "normalisation)"
        )
    return measured
