"""Per-spot predictions of every method on every fold, kept for the protocol (``models/protocol.py``).

    python -m models.folds --methods mean ridge_colour nsl_light_ridgehead dkan stem

For each method and each leave-one-section-out fold within patient C (train on four C sections,
predict the fifth), and for the cross-patient split (train C2–C6, predict A1), the method is
trained from scratch with its shipped settings (seed 0) and its predictions on the held-out
section are saved to ``models/.cache/folds/<method>__<fold>.npz`` (genes, predictions at full
resolution, predictions on tiles degraded to A1's resolution, training seconds).

A fold's predictions depend on torch's intra-op thread count, not only on the seed (float sums
in another order, then a different training path): Stem-style fold C2 gives raw PCC-ALL 0.1121
with 1 thread and 0.1092 with 2, DKAN-style fold C2 0.1052 with 2 and 0.1217 with 1 (measured
2026-12-07). The recorded fold runs used 1 thread (``OMP_NUM_THREADS=1``) for every method but
DKAN-style, whose ``fit`` sets 2; to reproduce them on a shared machine, keep those counts and
limit the cores with ``taskset`` rather than the threads. A difference of that size between two
runs is training noise the spot-bootstrap intervals do not include.

Trained fold models never see their held-out section, unlike the shipped files (trained on all
of C2–C6): this is what makes the LOSO-C numbers of the protocol held-out, if optimistic (the
other sections are serial cuts of the same tumour).

The *degraded* tiles: each held-out C tile is downsampled to A1's µm/px (derived from A1's spot
spacing, ~3.19 µm/px) and upsampled back to the model's input size (area down, bilinear up), so a
model's drop on A1 can be split into resolution and patient. Models whose input is already
coarser than A1 (16 px over 110 µm = 6.9 µm/px: NSL, Stem, the colour ridge) are unchanged by it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.evaluate import C_SECTIONS, N_GENES, TEST_SECTION, TILE_PX, TILE_UM, make_method
from models.workshop.data import CACHE, SectionData, gene_panel, load_her2st

FOLD_CACHE = CACHE / "folds"
#: Folds of the protocol: the held-out section of each; "A1" is the cross-patient split.
FOLDS = (*C_SECTIONS, TEST_SECTION)


def degrade(tiles: NDArray[np.uint8], tile_um: float, mpp: float) -> NDArray[np.uint8]:
    """Tiles as a ``mpp`` µm/px image would give them: area-downsampled to ``tile_um / mpp`` px
    and bilinearly upsampled back; unchanged when the tiles are already that coarse."""
    from PIL import Image

    n = len(tiles)
    size = tiles.shape[1]
    low = round(tile_um / mpp)
    if low >= size or n == 0:
        return tiles
    out = np.empty_like(tiles)
    for i in range(n):
        img = Image.fromarray(tiles[i]).resize((low, low), Image.Resampling.BOX)
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return out


def fold_path(method: str, fold: str) -> Path:
    return FOLD_CACHE / f"{method}__{fold}.npz"


def split(sections: dict[str, SectionData], fold: str) -> tuple[list[SectionData], SectionData]:
    """Training sections and the held-out section of ``fold``."""
    if fold == TEST_SECTION:
        return [sections[n] for n in C_SECTIONS], sections[TEST_SECTION]
    return [sections[n] for n in C_SECTIONS if n != fold], sections[fold]


def run_fold(method: str, fold: str, sections: dict[str, SectionData]) -> Path:
    """Train ``method`` on the fold's training sections and save its held-out predictions."""
    train, test = split(sections, fold)
    genes = gene_panel(train, N_GENES, test.measured.genes)
    start = time.perf_counter()
    fitted = make_method(method).fit(train, genes)
    return save_fold(method, fold, fitted, genes, time.perf_counter() - start, sections)


def save_fold(
    method: str,
    fold: str,
    fitted: Any,
    genes: Sequence[str],
    seconds: float,
    sections: dict[str, SectionData],
) -> Path:
    """Save the fold cache of ``fitted`` (``method`` trained for ``fold``): its predictions on
    the held-out section's tiles, full resolution and degraded to A1's µm/px. Also called by
    the modules that retrain a method per fold for its features (``feature_context``), so
    one training gives both."""
    test = split(sections, fold)[1]
    tiles, tile_um = test.tiles, test.tile_um
    if method.startswith("dkan"):  # DKAN reads its own 64 px tiles (and so do its variants)
        from models.dkan.train import at_dkan_resolution

        tiles = at_dkan_resolution(test).tiles
    predict = fitted.predict  # (DKANMethod.predict runs 64 px tiles as they are)
    pred = np.asarray(predict(tiles), np.float32)
    low_tiles = degrade(tiles, tile_um, sections[TEST_SECTION].mpp)
    pred_low = pred if low_tiles is tiles else np.asarray(predict(low_tiles), np.float32)
    FOLD_CACHE.mkdir(parents=True, exist_ok=True)
    out = fold_path(method, fold)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        genes=np.array(genes),
        pred=pred,
        pred_lowres=pred_low,
        train_seconds=seconds,
        tile_px=tiles.shape[1],
    )
    tmp.replace(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--folds", nargs="+", default=list(FOLDS))
    parser.add_argument("--force", action="store_true", help="rerun folds already saved")
    args = parser.parse_args(argv)
    sections = load_her2st(TILE_PX, TILE_UM)
    for method in args.methods:
        for fold in args.folds:
            if fold_path(method, fold).is_file() and not args.force:
                print(f"{method} {fold}: kept", flush=True)
                continue
            start = time.perf_counter()
            path = run_fold(method, fold, sections)
            print(
                f"{method} {fold}: {path.name} ({time.perf_counter() - start:.0f} s)", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
