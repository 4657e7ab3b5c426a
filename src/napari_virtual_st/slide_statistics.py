"""Slide statistics: models that standardise their image features per slide.

HESCAPE's lesson on batch effects: a slide's stain and scanner shift its image features as a
whole, and removing each slide's own mean and spread before the head reads them helps a model
trained on few slides (issue 19, ``models/encoder_variants.py``). Such a model cannot be run
one tile at a time with nothing else known: a tile's value depends on statistics of the
whole slide. The contract says how the engine supplies them:

- the model declares ``vst.slide_statistics`` = ``{"features": <output>, "mean": <input>,
  "std": <input>, "spots": <at most this many sampled spots>}`` (:class:`StatisticsSpec`);
- its graph outputs its raw features ``(N, F)`` float32 under ``features`` and takes two
  float32 inputs of shape ``(F,)``, the slide's mean and standard deviation of each feature,
  with which it standardises them before its head;
- first in a run (before its tissue mask and preview) the engine samples at most ``spots``
  spots evenly from **the slide's own tissue lattice** (the dense lattice of the model's tile
  over tissue, on the preview's coarse mask of a large slide: whatever spots the run
  predicts, a drawn region, ``--measured`` spots or a Visium grid give a spot the value a
  whole-slide run gives it), runs the graph on them with mean 0 and std 1, and takes each
  feature's mean and population standard deviation (:meth:`SlideStatistics.of`);
- the statistics are bound to the run's :class:`~napari_virtual_st.predictor.Predictor`
  (:meth:`~napari_virtual_st.predictor.Predictor.with_slide_statistics`, a copy sharing the
  session), recorded in the store (``slide_statistics``) and reused when the run resumes,
  so resumed values are the same as uninterrupted ones.

A model without the key is unchanged: its tiles are independent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st.errors import ModelError, StoreError

KEY = "slide_statistics"
#: Sampled spots when the model does not say: enough for a stable mean and spread of each
#: feature, few enough (a second or two on 2 CPU cores) to come before the first heatmap.
DEFAULT_SPOTS = 256
#: A feature whose spread over the sample is below this is constant there: divided by 1.
MIN_STD = 1e-12


@dataclass(frozen=True)
class StatisticsSpec:
    """What a model's ``vst.slide_statistics`` declares.

    Attributes
    ----------
    features
        The graph output holding the raw features, ``(N, F)`` float32.
    mean, std
        The graph inputs that take the slide's mean and standard deviation, ``(F,)`` float32.
    spots
        At most this many spots are sampled from the slide's tissue lattice.
    """

    features: str
    mean: str
    std: str
    spots: int = DEFAULT_SPOTS

    @classmethod
    def from_json(cls, raw: str | Mapping[str, Any]) -> StatisticsSpec:
        """Parse the metadata value (JSON text or object).

        Raises
        ------
        ModelError
            Naming what is missing or wrong.
        """
        where = f"metadata 'vst.{KEY}'"
        try:
            value = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ModelError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ModelError(f"{where} must be a JSON object with features, mean and std")
        names = {}
        for field_name in ("features", "mean", "std"):
            name = value.get(field_name)
            if not isinstance(name, str) or not name:
                raise ModelError(f"{where} must name the {field_name!r} tensor (a string)")
            names[field_name] = name
        if names["mean"] == names["std"] or "image" in (names["mean"], names["std"]):
            raise ModelError(f"{where}: mean and std must be two inputs other than 'image'")
        spots = value.get("spots", DEFAULT_SPOTS)
        if isinstance(spots, bool) or not isinstance(spots, int) or spots < 2:
            raise ModelError(f"{where}: spots must be an integer of at least 2; got {spots!r}")
        return cls(names["features"], names["mean"], names["std"], spots)

    def to_json(self) -> str:
        """The metadata value."""
        return json.dumps(
            {"features": self.features, "mean": self.mean, "std": self.std, "spots": self.spots}
        )

    @property
    def inputs(self) -> tuple[str, str]:
        """The graph inputs the statistics are fed to."""
        return self.mean, self.std


@dataclass(frozen=True, eq=False)
class SlideStatistics:
    """One slide's mean and standard deviation of each of a model's features.

    Attributes
    ----------
    mean, std
        ``(F,)`` float32; ``std`` is 1 where the feature is constant over the sample.
    n_spots
        How many spots they were measured on.
    sampled_from
        Which spots those were, for people (not compared).
    """

    mean: NDArray[np.float32]
    std: NDArray[np.float32]
    n_spots: int
    sampled_from: str = ""

    @classmethod
    def of(cls, features: ArrayLike, sampled_from: str = "") -> SlideStatistics:
        """The statistics of ``(n, F)`` raw features (population standard deviation).

        Raises
        ------
        ModelError
            When there are fewer than 2 spots or the features are not finite.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ModelError(
                f"slide statistics need the features of at least 2 spots; got shape {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ModelError("the model's features are not finite on this slide's tiles")
        std = x.std(axis=0)
        return cls(
            x.mean(axis=0).astype(np.float32),
            np.where(std > MIN_STD, std, 1.0).astype(np.float32),
            len(x),
            sampled_from,
        )

    @property
    def n_features(self) -> int:
        """How many features (F)."""
        return len(self.mean)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlideStatistics):
            return NotImplemented
        return (
            self.n_spots == other.n_spots
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_attrs(self) -> dict[str, Any]:
        """The store record (exact: float32 values round-trip through JSON floats)."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "n_spots": self.n_spots,
            "sampled_from": self.sampled_from,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> SlideStatistics:
        """Read a store record back.

        Raises
        ------
        StoreError
            When the record is damaged.
        """
        try:
            mean = np.asarray(attrs["mean"], dtype=np.float32)
            std = np.asarray(attrs["std"], dtype=np.float32)
            n_spots = int(attrs["n_spots"])
            sampled_from = str(attrs.get("sampled_from", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"the store's slide statistics are damaged ({exc})") from None
        if mean.ndim != 1 or mean.shape != std.shape or not (std > 0).all():
            raise StoreError("the store's slide statistics are damaged (shapes or spreads)")
        return cls(mean, std, n_spots, sampled_from)


def sample_evenly(n_total: int, at_most: int) -> NDArray[np.intp]:
    """Indices of at most ``at_most`` of ``n_total`` items, spread evenly over them in order
    (all of them when there are few enough); deterministic."""
    if n_total <= at_most:
        return np.arange(n_total, dtype=np.intp)
    return np.unique(np.round(np.linspace(0, n_total - 1, at_most)).astype(np.intp))
