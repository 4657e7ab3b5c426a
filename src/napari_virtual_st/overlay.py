"""Pictures of predictions: a gene's per-spot values drawn over a slide thumbnail.

Used by ``virtual-st demo`` and for figures; the napari plugin draws its own layers. Pure
NumPy + Pillow, no plotting library.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from napari_virtual_st import heatmap
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore

#: Anchor colours of matplotlib's *viridis* (perceptually uniform, colour-blind safe).
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [109, 205, 89],
        [180, 222, 44],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def viridis(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Map values in 0..1 to viridis RGB (NaN → grey)."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=0.0), 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    frac = (v - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[hi] * frac
    rgb[np.isnan(np.asarray(values, np.float64))] = 128
    return np.round(rgb).astype(np.uint8)


def most_variable_gene(store: PredictionStore) -> str:
    """The predicted gene whose values vary most across the spots (the viewer's rule,
    :func:`napari_virtual_st.heatmap.most_variable_gene`)."""
    return heatmap.most_variable_gene(store.genes, store.expression())


def render_gene_overlay(
    slide: Slide,
    store: PredictionStore,
    gene: str,
    *,
    max_px: int = 1200,
    opacity: float = 0.75,
) -> Image.Image:
    """The slide thumbnail with each spot filled by the gene's predicted value (viridis,
    scaled to the 1st–99th percentile), and a labelled colour bar.

    Parameters
    ----------
    slide, store
        The slide and its predictions.
    gene
        Gene to draw.
    max_px
        Longer side of the thumbnail.
    opacity
        Opacity of the spots over the tissue.
    """
    values = store.gene_values(gene)
    lo, hi = np.nanpercentile(values, [1, 99]) if np.isfinite(values).any() else (0.0, 1.0)
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    colours = viridis(scaled)
    thumb = Image.fromarray(slide.thumbnail(max_px)).convert("RGBA")
    scale = thumb.width / slide.dimensions[0]
    radius = store.grid.spot_radius_um / slide.mpp * scale
    layer = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = round(255 * opacity)
    for (x, y), colour, value in zip(store.xy_level0_px * scale, colours, values, strict=True):
        if np.isfinite(value):
            box = (x - radius, y - radius, x + radius, y + radius)
            draw.ellipse(box, fill=(*map(int, colour), alpha))
    picture = Image.alpha_composite(thumb, layer)
    return _with_colour_bar(
        picture.convert("RGB"),
        gene,
        float(lo),
        float(hi),
        store.model.target or "",
    )


def _with_colour_bar(
    picture: Image.Image, gene: str, lo: float, hi: float, target: str
) -> Image.Image:
    bar_h, margin = 18, 8
    canvas = Image.new("RGB", (picture.width, picture.height + bar_h + 3 * margin + 12), "white")
    canvas.paste(picture, (0, 0))
    ramp = viridis(np.linspace(0, 1, max(picture.width - 2 * margin, 2)))
    bar = Image.fromarray(np.repeat(ramp[None], bar_h, axis=0))
    y = picture.height + margin
    canvas.paste(bar, (margin, y))
    draw = ImageDraw.Draw(canvas)
    label = f"{gene} predicted {target}: {lo:.2f} (left) to {hi:.2f} (right)"
    draw.text((margin, y + bar_h + 2), label, fill="black")
    return canvas


def save_gene_overlay(
    slide: Slide, store: PredictionStore, gene: str, path: str | Path, **kwargs: float
) -> Path:
    """Render :func:`render_gene_overlay` to a PNG file (written atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    render_gene_overlay(slide, store, gene, **kwargs).save(tmp)  # type: ignore[arg-type]
    tmp.replace(path)
    return path
