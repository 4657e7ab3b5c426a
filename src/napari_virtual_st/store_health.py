"""Is a prediction store whole? Damage made visible, so that it can be repaired.

A store's chunks can be lost or damaged after they were written (a file deleted or truncated
by a full disk, a bad copy, a sync tool). The ``done`` flags then still say "predicted", and
zarr reads a missing chunk as its fill value (NaN) without a word. :func:`check_store`
reads every chunk marked done and reports those that are missing, unreadable or not finite;
a rerun of the same prediction re-predicts them (:func:`napari_virtual_st.pipeline.predict_slide`
does), ``virtual-st check`` prints the report, and ``evaluate``/``export`` say which spots
have no values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_virtual_st.store import PredictionStore


@dataclass(frozen=True)
class StoreHealth:
    """What a store holds, and what of it is damaged.

    Attributes
    ----------
    n_spots
        Spots in the store.
    done_spots
        Spots marked predicted.
    damaged_chunks
        Chunks marked predicted whose values are missing, unreadable or not finite.
    damaged_spots
        The spots of those chunks.
    status
        The run status the store records (``running``, ``cancelled``, ``failed``,
        ``complete``).
    """

    n_spots: int
    done_spots: int
    damaged_chunks: tuple[int, ...]
    damaged_spots: tuple[slice, ...]
    status: str

    @property
    def intact_spots(self) -> int:
        """Spots with usable values."""
        return self.done_spots - sum(s.stop - s.start for s in self.damaged_spots)

    @property
    def is_damaged(self) -> bool:
        """Whether some predicted spots lost their values."""
        return bool(self.damaged_chunks)

    @property
    def is_whole(self) -> bool:
        """Every spot predicted, and every value there."""
        return self.done_spots == self.n_spots and not self.damaged_chunks

    def describe_damage(self) -> str:
        """The damaged spots in a few words, e.g. ``"spots 64–127, 256–319"``."""
        ranges = [f"{s.start}–{s.stop - 1}" for s in self.damaged_spots[:4]]
        more = len(self.damaged_spots) - len(ranges)
        return "spots " + ", ".join(ranges) + (f" and {more} more chunks" if more > 0 else "")

    def summary(self, name: str) -> str:
        """One line a user can act on."""
        line = f"{name}: {self.intact_spots} of {self.n_spots} spots have predicted values"
        if self.is_damaged:
            lost = self.done_spots - self.intact_spots
            line += (
                f"; {lost} spots lost their saved values (missing or unreadable chunks: "
                f"{self.describe_damage()})"
            )
        if self.done_spots < self.n_spots:
            line += f"; the run is unfinished ({self.status})"
        if not self.is_whole:
            line += "; run the same prediction again to complete or repair it"
        return line


def check_store(store: PredictionStore) -> StoreHealth:
    """Read every chunk marked done and report the damaged ones (see the module's text)."""
    done = store.done
    damaged: list[int] = []
    arrays = ["expression", *(["variance"] if store.has_variance else [])]
    for chunk in range(store.n_chunks):
        spots = store.chunk_slice(chunk)
        if not done[spots].all():
            continue
        if not all(_chunk_is_whole(store, name, spots) for name in arrays):
            damaged.append(chunk)
    return StoreHealth(
        n_spots=store.n_spots,
        done_spots=int(done.sum()),
        damaged_chunks=tuple(damaged),
        damaged_spots=tuple(store.chunk_slice(c) for c in damaged),
        status=str(store.attrs.get("status", "?")),
    )


def _chunk_is_whole(store: PredictionStore, name: str, spots: slice) -> bool:
    try:
        read = store.expression if name == "expression" else store.variance
        values = read(spots=spots, per_tile=True)  # what is on disk, not a neighbourhood
    except Exception:  # a truncated or corrupt chunk: zarr and its codecs raise many types
        return False
    return bool(np.isfinite(values).all())
