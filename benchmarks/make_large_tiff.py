"""Write a large SYNTHETIC pyramidal slide: JPEG-tiled BigTIFF, pyramid levels as SubIFDs.
(:func:`cached_her2st_tiff` writes a REAL one the same way: a HER2ST section's H&E.)

The content is synthetic, made to be cheap: a few pre-made H&E-coloured texture blocks
(pink eosin background, purple nuclei) repeated over a smooth random "tissue" map, with
white glass elsewhere, so tissue detection and the tile reader behave as on a real slide.
Each pyramid level is rendered from the same map and blocks (not by downsampling the level
above), so writing costs about one JPEG encode per tile.

Usage::

    python benchmarks/make_large_tiff.py OUT.tif [--size 40960] [--mpp 0.5]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

TILE = 512
MAP_CELL = 32  # level-0 pixels per tissue-map cell
N_BLOCKS = 8


def texture_blocks(n: int = N_BLOCKS, tile: int = TILE, seed: int = 0) -> NDArray[np.uint8]:
    """``(n, tile, tile, 3)`` H&E-like texture blocks (synthetic)."""
    rng = np.random.default_rng(seed)
    blocks = np.empty((n, tile, tile, 3), np.uint8)
    for i in range(n):
        base = np.array([232, 170, 205]) + rng.integers(-12, 12, 3)
        img = Image.new("RGB", (tile, tile), tuple(int(v) for v in base))
        draw = ImageDraw.Draw(img)
        # eosin-rich fibres
        for _ in range(40):
            x, y = rng.integers(0, tile, 2)
            dx, dy = rng.integers(-120, 120, 2)
            colour = tuple(int(v) for v in base - rng.integers(10, 45, 3))
            draw.line([(x, y), (x + dx, y + dy)], fill=colour, width=int(rng.integers(2, 7)))
        # haematoxylin nuclei
        for _ in range(int(rng.integers(120, 260))):
            x, y = rng.integers(0, tile, 2)
            rx, ry = rng.integers(3, 9, 2)
            colour = (
                int(rng.integers(70, 120)),
                int(rng.integers(40, 80)),
                int(rng.integers(120, 170)),
            )
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(1.2))
        arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (tile, tile, 1))
        blocks[i] = np.clip(arr, 0, 255).astype(np.uint8)
    return blocks


def tissue_map(size_px: int, seed: int = 0, fraction: float = 0.45) -> NDArray[np.bool_]:
    """Boolean tissue map, one cell per ``MAP_CELL`` level-0 px: a few smooth blobs."""
    cells = math.ceil(size_px / MAP_CELL)
    rng = np.random.default_rng(seed + 1)
    noise = Image.fromarray(rng.random((12, 12)).astype(np.float32), mode="F")
    field = np.asarray(noise.resize((cells, cells), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[0:cells, 0:cells] / cells - 0.5
    field = field - 1.2 * np.hypot(xx, yy)  # tissue towards the centre, glass at the edges
    return field > np.quantile(field, 1.0 - fraction)


def _level_blocks(blocks: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    if factor == 1:
        return blocks
    side = blocks.shape[1] // factor
    return np.stack([np.asarray(Image.fromarray(b).reduce(factor)) for b in blocks]).reshape(
        len(blocks), side, side, 3
    )


def _block_ids(rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.int64]:
    return (rows * 7919 + cols * 104729 + (rows * cols) % 13) % N_BLOCKS


def level_tiles(
    size_px: int, level: int, blocks: NDArray[np.uint8], tmap: NDArray[np.bool_]
) -> Iterator[NDArray[np.uint8]]:
    """The ``TILE``-px tiles of pyramid ``level`` (row-major), rendered from map and blocks."""
    factor = 2**level
    side = math.ceil(size_px / factor)
    n_tiles = math.ceil(side / TILE)
    sub = TILE // factor  # one level-0 texture tile seen at this level
    lblocks = _level_blocks(blocks, factor) if sub >= 1 else None
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    for tr in range(n_tiles):
        for tc in range(n_tiles):
            # level-0 coordinates of this tile's pixel centres
            y0 = (tr * TILE + np.arange(TILE)) * factor + factor // 2
            x0 = (tc * TILE + np.arange(TILE)) * factor + factor // 2
            mask = tmap[
                np.minimum(y0 // MAP_CELL, tmap.shape[0] - 1)[:, None],
                np.minimum(x0 // MAP_CELL, tmap.shape[1] - 1)[None, :],
            ]
            mask &= (y0 < size_px)[:, None] & (x0 < size_px)[None, :]
            if not mask.any():
                yield white
                continue
            if lblocks is not None and sub >= 1:
                n_sub = TILE // sub
                r0 = tr * n_sub + np.arange(n_sub)
                c0 = tc * n_sub + np.arange(n_sub)
                ids = _block_ids(r0[:, None], c0[None, :])
                texture = (
                    lblocks[ids].transpose(0, 2, 1, 3, 4).reshape(TILE, TILE, 3)
                    if n_sub > 1
                    else lblocks[ids[0, 0]]
                )
            else:
                texture = np.broadcast_to(
                    blocks.mean(axis=(0, 1, 2)).astype(np.uint8), white.shape
                )
            yield np.where(mask[..., None], texture, white)


def make_large_tiff(
    path: str | Path,
    *,
    size_px: int = 40960,
    mpp: float = 0.5,
    quality: int = 85,
    seed: int = 0,
) -> Path:
    """Write the synthetic slide to ``path`` (atomically) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = texture_blocks(seed=seed)
    tmap = tissue_map(size_px, seed=seed)
    n_sub = 0
    while math.ceil(size_px / 2 ** (n_sub + 1)) >= TILE:
        n_sub += 1
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    common = {
        "tile": (TILE, TILE),
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "photometric": "rgb",
        "resolutionunit": "CENTIMETER",
        "dtype": np.uint8,
        "metadata": None,
        "maxworkers": os.cpu_count() or 1,
    }
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(
            level_tiles(size_px, 0, blocks, tmap),
            shape=(size_px, size_px, 3),
            subifds=n_sub,
            resolution=(1e4 / mpp, 1e4 / mpp),
            description=f"napari-virtual-st SYNTHETIC benchmark slide; MPP = {mpp}",
            **common,
        )
        for level in range(1, n_sub + 1):
            side = math.ceil(size_px / 2**level)
            tif.write(
                level_tiles(size_px, level, blocks, tmap),
                shape=(side, side, 3),
                subfiletype=1,
                resolution=(1e4 / mpp / 2**level, 1e4 / mpp / 2**level),
                **common,
            )
    tmp.replace(path)
    return path


def cached_large_tiff(cache_dir: str | Path, size_px: int = 40960, mpp: float = 0.5) -> Path:
    """The synthetic slide under ``cache_dir``, generated on first use."""
    path = Path(cache_dir) / f"synthetic_{size_px}px_{mpp:g}mpp_jpeg{TILE}.tif"
    if not path.exists():
        start = time.perf_counter()
        print(f"generating {path.name} (once; cached) ...", flush=True)
        make_large_tiff(path, size_px=size_px, mpp=mpp)
        print(
            f"  {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return path


def make_her2st_tiff(
    path: str | Path, section: str = "C2", *, mpp: float = 0.5, quality: int = 85
) -> Path:
    """Write a REAL H&E slide as the synthetic one is written: the HER2ST ``section``'s image
    (``../shared/data/her2st_subset``, scanned at ~0.69 µm/px, its µm/px from the 200 µm
    spot pitch as ``models/`` derives it) resampled (bicubic) to ``mpp`` µm/px, JPEG-tiled,
    with each pyramid level the one above reduced 2×.

    Real tissue for benchmarks whose outcome depends on what the pixels look like (an int8
    model's agreement with fp32): a 224 px tile at 0.5 µm/px is upsampled 1.38× from the
    scan, so finer detail than the scan's is not there.

    Raises
    ------
    FileNotFoundError
        When the HER2ST data is not beside the checkout.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (models/, for the data)
    from models.workshop.data import her2st_sections, mpp_from_spot_spacing
    from napari_virtual_st.measured import read_legacy_st

    source = {s.name: s for s in her2st_sections()}[section]
    if not (source.image.is_file() and source.spots.is_file() and source.counts.is_file()):
        raise FileNotFoundError(f"HER2ST section {section} not found under {source.image.parent}")
    measured = read_legacy_st(source.counts, source.spots, source.image)
    scan_mpp = mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(source.image) as scan:
        scale = scan_mpp / mpp
        size = (round(scan.width * scale), round(scan.height * scale))
        level0 = scan.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    levels = [level0]
    while min(levels[-1].size) // 2 >= TILE:
        levels.append(levels[-1].reduce(2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    common = {
        "tile": (TILE, TILE),
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "photometric": "rgb",
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, level in enumerate(levels):
            extra = (
                {
                    "subifds": len(levels) - 1,
                    "description": f"HER2ST {section} H&E (real), resampled; MPP = {mpp}",
                }
                if i == 0
                else {"subfiletype": 1}
            )
            res = 1e4 / mpp / 2**i
            tif.write(np.asarray(level), resolution=(res, res), **common, **extra)
    tmp.replace(path)
    return path


def cached_her2st_tiff(cache_dir: str | Path, section: str = "C2", mpp: float = 0.5) -> Path:
    """The real HER2ST slide of :func:`make_her2st_tiff` under ``cache_dir``, made on first
    use (raises ``FileNotFoundError`` without the data)."""
    path = Path(cache_dir) / f"her2st_{section}_{mpp:g}mpp_jpeg{TILE}.tif"
    if not path.exists():
        start = time.perf_counter()
        print(f"making {path.name} (once; cached) ...", flush=True)
        make_her2st_tiff(path, section, mpp=mpp)
        print(
            f"  {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=40960, help="side of level 0 in px")
    parser.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 pixel")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    args = parser.parse_args()
    start = time.perf_counter()
    path = make_large_tiff(args.out, size_px=args.size, mpp=args.mpp, quality=args.quality)
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) "
        f"in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
