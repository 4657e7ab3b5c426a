"""What one tile read costs: CPU-ms and temporary memory of the pipeline's read loop, and
what JPEG decoding at reduced scale would save.

On the generated benchmark TIFF (``make_large_tiff.py``) it reads Visium tiles of the
ResNet-18 benchmark model (224 px, 112 µm) as the pipeline does (into the batch where the
package's ``Slide.read_tile`` takes ``out=``), once with their grid centres (fractional) and
once with the centres rounded to whole pixels, and reports CPU-ms per tile with the decoded
JPEG segments cached, the share of tiles read as the level's own pixels, and the peak of
temporary memory per tile (``tracemalloc``). ``--jpeg-scaling`` also times decoding the
slide's 512 px JPEG tiles at full scale the way tifffile does (imagecodecs) and with
Pillow's ``draft`` at 1/1, 1/2, 1/4 and 1/8 (libjpeg-turbo DCT scaling).

Run it with each tree's ``src`` first on ``PYTHONPATH`` to compare commits::

    PYTHONPATH=src python benchmarks/bench_read_tile.py --jpeg-scaling
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

HERE = Path(__file__).resolve().parent
TILE_PX, TILE_UM = 224, 112.0


def read_loop_cost(slide: Any, xy: NDArray[np.float64], rounds: int = 4) -> dict[str, Any]:
    """CPU-ms and temporary memory per tile of the pipeline's read loop over ``xy``."""
    into = "out" in inspect.signature(slide.read_tile).parameters

    def read(centre: NDArray[np.float64], dest: NDArray[np.uint8]) -> None:
        if into:
            slide.read_tile(tuple(centre), TILE_PX, TILE_UM, out=dest)
        else:
            dest[...] = slide.read_tile(tuple(centre), TILE_PX, TILE_UM)

    batch = np.empty((len(xy), TILE_PX, TILE_PX, 3), np.uint8)
    for i, centre in enumerate(xy):  # decode (and cache) the JPEG segments first
        read(centre, batch[i])
    extra = []
    tracemalloc.start()
    try:
        for i, centre in enumerate(xy[:32]):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            read(centre, batch[i])
            extra.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    start = time.process_time()
    for _ in range(rounds):
        for i, centre in enumerate(xy):
            read(centre, batch[i])
    cpu_ms = 1000 * (time.process_time() - start) / (rounds * len(xy))
    level_ds = slide.level_downsamples[0]
    corners = xy / level_ds - TILE_PX / 2
    return {
        "read_into_batch": into,
        "tiles": len(xy),
        "centres_on_whole_pixels": float(np.mean((corners == np.round(corners)).all(axis=1))),
        "cpu_ms_per_tile": round(cpu_ms, 3),
        "temporary_kib_per_tile": round(float(np.median(extra)) / 1024, 1),
    }


def jpeg_scaling(path: Path, n_tiles: int = 40) -> dict[str, float]:
    """CPU-ms per 512 px JPEG tile: imagecodecs (tifffile's decoder) and Pillow's scales."""
    import tifffile
    from PIL import Image

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        chosen = np.argsort(page.databytecounts)[::-1][:n_tiles]  # tissue, not glass
        data = []
        for i in chosen:
            fh.seek(page.dataoffsets[i])
            data.append(fh.read(page.databytecounts[i]))
        tables = page.jpegtables
        _ = page.is_jfif, page.jpegheader  # (tifffile reads these lazily from the file)

        def stream(d: bytes) -> bytes:
            return tables[:-2] + d[2:] if tables else d

        def pillow(scale: int) -> None:
            for d in data:
                with Image.open(io.BytesIO(stream(d))) as im:
                    im.draft("RGB", (im.size[0] // scale, im.size[1] // scale))
                    im.load()

        def imagecodecs_full() -> None:
            for d in data:
                page.decode(d, 0, jpegtables=tables)

        timings = {"imagecodecs_1/1": imagecodecs_full}
        timings.update({f"pillow_1/{k}": (lambda k=k: pillow(k)) for k in (1, 2, 4, 8)})
        out: dict[str, float] = {}
        for name, run in timings.items():
            best = float("inf")
            for _ in range(5):
                start = time.process_time()
                run()
                best = min(best, time.process_time() - start)
            out[name] = round(1000 * best / len(data), 3)
        a = page.decode(data[0], 0, jpegtables=tables)[0]
    b = np.asarray(Image.open(io.BytesIO(stream(data[0]))).convert("RGB"))
    out["pillow_vs_imagecodecs_max_abs_diff_1/1"] = float(
        np.abs(a.reshape(b.shape).astype(int) - b).max()
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20480, help="side of the synthetic slide")
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--jpeg-scaling", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from make_large_tiff import cached_large_tiff
    from napari_virtual_st import Slide
    from napari_virtual_st.pipeline import build_grid
    from revisions import source_label

    path = cached_large_tiff(HERE / ".cache", args.size)
    report: dict[str, Any] = {"slide": path.name}
    with Slide(path) as slide:
        grid = build_grid(slide, "visium", tile_um=TILE_UM)
        mid = len(grid) // 2
        xy = grid.xy_level0_px[mid : mid + args.tiles]
        report["src"] = source_label(Path(inspect.getfile(Slide)).parent.parent)
        report["grid_centres"] = read_loop_cost(slide, xy)
        report["whole_pixel_centres"] = read_loop_cost(slide, np.round(xy))
    if args.jpeg_scaling:
        report["jpeg_decode_cpu_ms_per_512px_tile"] = jpeg_scaling(path)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
