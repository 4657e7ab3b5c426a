"""Virtual spatial transcriptomics: gene expression predicted from H&E whole-slide images.

The core engine (this package minus ``_napari``) never imports Qt or napari:

slide → tissue → grid → predictor → pipeline → store, assembled by
:func:`napari_virtual_st.run.run` from a :class:`~napari_virtual_st.run.RunSpec` (the one
place a prediction run is put together; the CLI, cohorts and the napari plugin call it).
"""

from __future__ import annotations

from napari_virtual_st._version import __version__
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.pipeline import predict_slide
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.tissue import TissueMask, detect_tissue

__all__ = [
    "PredictionStore",
    "Predictor",
    "Slide",
    "SpotGrid",
    "TissueMask",
    "VirtualSTError",
    "__version__",
    "detect_tissue",
    "predict_slide",
]
