"""Make the figures of ``docs/export.md`` from a real run (no hand-made pictures).

Predicts the bundled real slide (``CMU-1-Small-Region.svs``) with the bundled NSL model,
exports two illustrative regions with ``virtual-st export``, then draws:

- ``docs/images/export_scanpy_spatial.png`` — the ``.h5ad`` plotted by
  ``scanpy.pl.spatial(adata, color=[...])`` with no other arguments;
- ``docs/images/export_geojson_detections.png`` — the QuPath GeoJSON file drawn with
  matplotlib (spot polygons coloured by their ``classification``, the annotations as
  outlines): what QuPath shows after *File → Import objects from file*.

Run from the repository root: ``python docs/make_export_figures.py`` (needs scanpy: the
``dev`` extra).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Polygon as PolygonPatch

from napari_virtual_st.cli import main
from napari_virtual_st.registry import default_model, sample_slide_path

IMAGES = Path(__file__).parent / "images"

#: Two illustrative annotations (level-0 px, QuPath's frame) — labels for the demo, not a
#: pathologist's reading of this slide. The second has a hole.
REGIONS = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[500, 150], [1500, 150], [1400, 1300], [500, 1300], [500, 150]]],
            },
            "properties": {
                "objectType": "annotation",
                "name": "upper",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
            },
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[400, 1350], [1800, 1350], [1900, 2950], [300, 2950], [400, 1350]],
                    [[900, 1900], [1300, 1900], [1300, 2300], [900, 2300], [900, 1900]],
                ],
            },
            "properties": {
                "objectType": "annotation",
                "name": "lower, with a hole",
                "classification": {"name": "Stroma", "color": [0, 114, 178]},
            },
        },
    ],
}


def main_figures(work: Path) -> list[Path]:
    """Run predict + export in ``work`` and write the figures; returns their paths."""
    import anndata as ad

    slide = sample_slide_path()
    store = work / "cmu.vst.zarr"
    regions = work / "regions.geojson"
    regions.write_text(json.dumps(REGIONS, indent=1))
    h5ad, geojson = work / "cmu.h5ad", work / "cmu.geojson"
    model = str(default_model().path)
    export = ["export", str(store), "--regions", str(regions)]
    for argv in (
        ["predict", str(slide), "--model", model, "--out", str(store), "--quiet"],
        [*export, "--h5ad", str(h5ad), "--geojson", str(geojson)],
    ):
        print("$ virtual-st " + " ".join(Path(a).name if "/" in a else a for a in argv))
        if main(argv) != 0:
            raise SystemExit(1)
    adata = ad.read_h5ad(h5ad)
    IMAGES.mkdir(parents=True, exist_ok=True)
    return [_scanpy_figure(adata), _geojson_figure(adata, geojson)]


def _scanpy_figure(adata: object) -> Path:
    import scanpy as sc

    gene = "ERBB2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy points to squidpy; matplotlib API notices
        sc.pl.spatial(adata, color=[gene, "region_class"], show=False)
    fig = plt.gcf()
    fig.suptitle(
        "scanpy.pl.spatial(adata, color=['ERBB2', 'region_class']) of the exported .h5ad",
        fontsize=10,
    )
    path = IMAGES / "export_scanpy_spatial.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _geojson_figure(adata: object, geojson: Path) -> Path:
    library = next(iter(adata.uns["spatial"]))  # type: ignore[attr-defined]
    spatial = adata.uns["spatial"][library]  # type: ignore[attr-defined]
    image = spatial["images"]["hires"]
    scalef = spatial["scalefactors"]["tissue_hires_scalef"]
    features = json.loads(geojson.read_text(encoding="utf-8"))["features"]
    fig, ax = plt.subplots(figsize=(5, 6.5))
    ax.imshow(image)
    for feature in features:
        properties = feature["properties"]
        rings = feature["geometry"]["coordinates"]
        colour = np.array(properties.get("classification", {}).get("color", [128, 128, 128])) / 255
        if properties["objectType"] == "annotation":
            for ring in rings:
                ax.add_patch(
                    PolygonPatch(np.array(ring) * scalef, fill=False, ec=colour, lw=2, ls="--")
                )
        else:
            ax.add_patch(PolygonPatch(np.array(rings[0]) * scalef, fc=(*colour, 0.55), ec="none"))
    example = next(f for f in features if f["properties"]["objectType"] == "detection")
    n = sum(f["properties"]["objectType"] == "detection" for f in features)
    ax.set_title(
        f"{geojson.name}: {n} detections, {len(example['properties']['measurements'])} gene "
        "measurements each;\nclassification from the annotation (dashed) they lie in",
        fontsize=8,
    )
    ax.set_axis_off()
    path = IMAGES / "export_geojson_detections.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        for written in main_figures(Path(folder)):
            print(f"figure: {written}")
    sys.exit(0)
