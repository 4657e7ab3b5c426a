"""napari sample data: the real H&E slide shipped with the package."""

from __future__ import annotations

from napari_virtual_st._napari.layers import LayerDataTuple
from napari_virtual_st._napari.reader import read_slide
from napari_virtual_st.registry import sample_slide_path


def cmu_small_region() -> list[LayerDataTuple]:
    """Aperio CMU-1-Small-Region.svs: H&E, 2220 × 2967 px at 0.499 µm/px (OpenSlide test data)."""
    return read_slide(sample_slide_path())
