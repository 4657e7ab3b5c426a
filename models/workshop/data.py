"""Real training data for the workshop: spot-centred tiles and log1p CP10k targets.

Sections come from ``../shared/data`` (see its SOURCES.md): HER2+ breast cancer, legacy ST
(100 µm spots, 200 µm pitch), patient C sections C2–C6 and patient A section A1. The licence of
these files is unknown: research and test use only.

Tiles are read through the engine's own :class:`~napari_virtual_st.slide.Slide` /
:meth:`~napari_virtual_st.slide.Slide.read_tile`, at the same physical size and µm/px a model
will see at prediction time. Each section's µm/px is derived from its spot spacing (200 µm
between neighbouring array positions), not taken on trust.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from napari_virtual_st.measured import MeasuredST, read_legacy_st, read_space_ranger
from napari_virtual_st.slide import Slide

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
HER2ST = SHARED_DATA / "her2st_subset"
CACHE = REPO / "models" / ".cache"
ST_PITCH_UM = 200.0


@dataclass(frozen=True)
class SectionSource:
    """Where one legacy-ST section's files are."""

    name: str
    patient: str
    counts: Path
    spots: Path
    image: Path
    pixel_scale: float = 1.0
    #: Image regions (x0, y0, x1, y1 in image px) to paint white before tiling.
    mask_boxes: tuple[tuple[int, int, int, int], ...] = ()
    #: The image's background was set to black (HER2ST Shiny images): make it white again,
    #: as glass looks on every scanner, so tiles at the tissue edge look like real slides.
    black_background: bool = False


def her2st_sections() -> list[SectionSource]:
    """The HER2ST sections available here (C2–C6 of patient C, A1 of patient A)."""
    c_images = {
        "C2": "C/C2/5714_HE_BT_C2.jpg",
        "C3": "C/C3/5714_HE_BT_D1.jpg",
        "C4": "C/C4/5714_HE_BT_D2.jpg",
        "C5": "C/C5/5714_HE_BT_E1.jpg",
        "C6": "C/C6/5714_HE_BT_E2.jpg",
    }
    sections = [
        SectionSource(
            name,
            "C",
            HER2ST / "ST-cnts" / f"{name}.tsv.gz",
            HER2ST / "ST-spotfiles" / f"{name}_selection.tsv",
            HER2ST / "ST-imgs" / rel,
        )
        for name, rel in c_images.items()
    ]
    sections.append(
        SectionSource(
            "A1",
            "A",
            HER2ST / "ST-cnts" / "A1.tsv.gz",
            HER2ST / "ST-spotfiles" / "A1_selection.tsv",
            HER2ST / "app-imgs" / "A1_HE_image_dark.png",
            pixel_scale=2000 / 6954,
            # the Shiny app pasted the pathologist's annotation thumbnail into the top right
            mask_boxes=((1490, 0, 2000, 540),),
            black_background=True,
        )
    )
    return sections


def data_available() -> bool:
    """Whether the HER2ST files are present beside the checkout."""
    return all(
        s.counts.is_file() and s.spots.is_file() and s.image.is_file() for s in her2st_sections()
    )


@dataclass(frozen=True, eq=False)
class SectionData:
    """One section ready for learning: tiles, counts and spot geometry.

    Attributes
    ----------
    name, patient
        Section and patient id.
    tiles
        ``(n, tile_px, tile_px, 3)`` uint8 spot-centred tiles.
    measured
        The measured counts (all genes) of the same spots.
    mpp
        µm/px of the section image, derived from the spot spacing.
    tile_px, tile_um
        Tile geometry (µm/px of tiles = tile_um / tile_px).
    """

    name: str
    patient: str
    tiles: NDArray[np.uint8]
    measured: MeasuredST
    mpp: float
    tile_px: int
    tile_um: float

    @property
    def array_rc(self) -> NDArray[np.int32]:
        """Lattice (row, col) of each spot (legacy ST array y, x)."""
        return self.measured.array_rc

    def targets(self, genes: Sequence[str]) -> NDArray[np.float32]:
        """log1p CP10k (library size over all genes) of ``genes`` (absent genes are 0)."""
        full = self.measured.log1p_cp10k()
        lookup = {g: i for i, g in enumerate(self.measured.genes)}
        out = np.zeros((self.measured.n_spots, len(genes)), np.float32)
        for j, gene in enumerate(genes):
            if gene in lookup:
                out[:, j] = full[:, lookup[gene]]
        return out


def mpp_from_spot_spacing(
    xy_px: NDArray[np.float64], array_rc: NDArray[np.int32], pitch_um: float = ST_PITCH_UM
) -> float:
    """µm/px from the pixel distance between spots one array step apart."""
    tree = cKDTree(array_rc.astype(np.float64))
    pairs = np.array(sorted(tree.query_pairs(1.0 + 1e-9)))
    if len(pairs) == 0:
        raise ValueError("no neighbouring spots to measure the spot spacing")
    px = np.linalg.norm(xy_px[pairs[:, 0]] - xy_px[pairs[:, 1]], axis=1)
    return pitch_um / float(np.median(px))


def load_section(
    source: SectionSource, tile_px: int, tile_um: float, *, use_cache: bool = True
) -> SectionData:
    """Read one section's counts and its spot-centred tiles (cached under models/.cache)."""
    measured = read_legacy_st(
        source.counts, source.spots, source.image, pixel_scale=source.pixel_scale
    )
    mpp = mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    key = hashlib.sha256(
        json.dumps(
            [
                source.name,
                str(source.image.name),
                tile_px,
                tile_um,
                round(mpp, 6),
                source.mask_boxes,
                source.black_background,
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = CACHE / f"{source.name}_{tile_px}px_{tile_um:g}um_{key}.npy"
    if use_cache and cache.is_file():
        tiles = np.load(cache)
    else:
        tiles = read_tiles(
            source.image,
            measured.xy_fullres_px,
            mpp,
            tile_px,
            tile_um,
            source.mask_boxes,
            source.black_background,
        )
        if use_cache:
            CACHE.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, tiles)
            tmp.replace(cache)
    return SectionData(source.name, source.patient, tiles, measured, mpp, tile_px, tile_um)


def read_tiles(
    image: Path,
    xy_px: NDArray[np.float64],
    mpp: float,
    tile_px: int,
    tile_um: float,
    mask_boxes: Sequence[tuple[int, int, int, int]] = (),
    black_background: bool = False,
) -> NDArray[np.uint8]:
    """Spot-centred tiles read exactly as the engine reads them at prediction time."""
    if mask_boxes or black_background:
        image = _cleaned_copy(image, mask_boxes, black_background)
    with Slide(image, mpp=mpp) as slide:
        return np.stack([slide.read_tile((x, y), tile_px, tile_um) for x, y in xy_px])


def _cleaned_copy(
    image: Path, boxes: Sequence[tuple[int, int, int, int]], black_background: bool
) -> Path:
    """A cached PNG copy of ``image`` with ``boxes`` painted white (and black background
    pixels — all channels below 12 — turned white)."""
    from PIL import Image

    key = hashlib.sha256(
        json.dumps([image.name, image.stat().st_size, list(boxes), black_background]).encode()
    ).hexdigest()[:12]
    out = CACHE / f"{image.stem}_cleaned_{key}.png"
    if not out.is_file():
        rgb = np.array(Image.open(image).convert("RGB"))
        for x0, y0, x1, y1 in boxes:
            rgb[y0:y1, x0:x1] = 255
        if black_background:
            rgb[rgb.max(axis=-1) < 12] = 255
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.png")
        Image.fromarray(rgb).save(tmp)
        tmp.replace(out)
    return out


def load_her2st(
    tile_px: int, tile_um: float, names: Sequence[str] | None = None
) -> dict[str, SectionData]:
    """The HER2ST sections (all, or ``names``) as :class:`SectionData`, by name."""
    wanted = [s for s in her2st_sections() if names is None or s.name in names]
    return {s.name: load_section(s, tile_px, tile_um) for s in wanted}


def gene_panel(
    train: Sequence[SectionData], n_genes: int = 250, candidates: Sequence[str] | None = None
) -> list[str]:
    """Top ``n_genes`` by mean log1p CP10k over the training spots, among genes measured in
    every training section (and in ``candidates`` when given, e.g. the test section's genes)."""
    common = set(train[0].measured.genes)
    for section in train[1:]:
        common &= set(section.measured.genes)
    if candidates is not None:
        common &= set(candidates)
    genes = sorted(common)
    values = np.concatenate([s.targets(genes) for s in train])
    order = np.argsort(-values.mean(axis=0), kind="stable")
    return [genes[i] for i in order[:n_genes]]


def load_space_ranger_section(
    outs: Path, image_name: str = "hires", tile_px: int = 32, tile_um: float = 110.0
) -> SectionData:
    """A Space Ranger section as :class:`SectionData`, tiles read from one of its images.

    The spot centres (full-resolution px) are scaled into the chosen image with its
    ``tissue_<image>_scalef``; µm/px comes from ``spot_diameter_fullres`` (55 µm Visium spots).
    """
    measured = read_space_ranger(outs)
    if image_name not in measured.images:
        raise FileNotFoundError(f"{outs} has no tissue_{image_name}_image.png")
    scale = measured.scalefactors[f"tissue_{image_name}_scalef"]
    if measured.spot_diameter_fullres_px is None:
        raise ValueError("spot_diameter_fullres is needed to know the image resolution")
    mpp = 55.0 / (measured.spot_diameter_fullres_px * scale)
    tiles = read_tiles(
        measured.images[image_name], measured.xy_fullres_px * scale, mpp, tile_px, tile_um
    )
    return SectionData(outs.name, outs.name, tiles, measured, mpp, tile_px, tile_um)
