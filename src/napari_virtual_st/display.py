"""How predicted values are drawn for a reader: units, contrast, impossible values, names.

Pure NumPy, no Qt (the napari plugin and the docs' figures use it):

- :func:`target_unit` says what a value means in words (``log1p_cp10k`` →
  "log(1 + counts per 10,000)"), for colour bars and cursor read-outs;
- :func:`target_floor` is the smallest value a target can take (0 for log1p and count
  targets), and :func:`clamp_to_target` clamps a model's values to it for drawing, counting
  how many it clamped (a regression head can output −0.8 for a log1p target; such a value is
  never drawn as if it meant something);
- :func:`contrast_limits` gives a colour map's limits in one of :data:`CONTRAST_MODES`:
  1st–99th percentile of the gene (the default), min–max of the gene, or one range fixed
  across every gene of the prediction (so a gene that hardly varies looks flat);
- :func:`layer_name` names a heatmap after its gene and model, so two predictions never
  share a layer name; :func:`top_genes` picks the few genes a spot stands out in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st.errors import ParameterError

if TYPE_CHECKING:
    from napari_virtual_st.context import SpotContext

#: Contrast modes: value → what the Gene browser calls it.
CONTRAST_MODES: dict[str, str] = {
    "percentile": "1st–99th percentile of the gene",
    "minmax": "lowest to highest value of the gene",
    "fixed": "one range for every gene",
}
#: Percentiles of the ``percentile`` and ``fixed`` modes.
PERCENTILES = (1.0, 99.0)
#: Targets whose values cannot be negative (a prefix or the whole name).
_NON_NEGATIVE_PREFIXES = ("log1p", "counts", "cp10k", "cpm", "tpm", "raw_counts")
_UNITS = {
    "log1p_cp10k": "log(1 + counts per 10,000)",
    "log1p_cpm": "log(1 + counts per million)",
    "log1p_counts": "log(1 + counts)",
    "log1p": "log(1 + expression)",
    "counts": "counts",
    "cp10k": "counts per 10,000",
    "cpm": "counts per million",
}


def target_unit(target: str) -> str:
    """What a value of ``target`` means, in words (the target itself when unknown)."""
    key = (target or "").strip().lower()
    return _UNITS.get(key, target or "model units")


def target_floor(target: str) -> float | None:
    """The smallest value ``target`` can take (0 for log1p and count targets), or ``None``
    when any value is possible (e.g. z-scores) or the target is unknown."""
    key = (target or "").strip().lower()
    return 0.0 if key.startswith(_NON_NEGATIVE_PREFIXES) else None


def clamp_to_target(values: ArrayLike, target: str) -> tuple[NDArray[np.float32], int]:
    """Values as they may be drawn: clamped to the target's floor (NaN kept).

    Returns
    -------
    values, n_clamped
        A float32 copy (the input itself is never changed) and how many finite values were
        below the floor.
    """
    out = np.array(values, dtype=np.float32, copy=True)
    floor = target_floor(target)
    if floor is None:
        return out, 0
    with np.errstate(invalid="ignore"):
        below = out < floor  # (NaN compares False)
    n = int(below.sum())
    if n:
        out[below] = floor
    return out, n


def clamp_note(n_clamped: int, n_values: int, target: str) -> str:
    """A short note about clamped values ("" when none were)."""
    if not n_clamped:
        return ""
    floor = target_floor(target)
    return f"{n_clamped:,} of {n_values:,} values below {floor:g} drawn as {floor:g} (impossible)"


def _finite(values: ArrayLike) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[np.isfinite(v)]


def _widen(lo: float, hi: float) -> tuple[float, float]:
    if hi <= lo:
        pad = max(abs(lo) * 0.01, 1e-6)
        return lo - pad, hi + pad
    return lo, hi


def contrast_limits(
    values: ArrayLike,
    mode: str = "percentile",
    *,
    all_values: ArrayLike | None = None,
    target: str = "",
) -> tuple[float, float]:
    """Colour-map limits of one gene's values.

    Parameters
    ----------
    values
        The gene's values (NaN ignored).
    mode
        One of :data:`CONTRAST_MODES`.
    all_values
        Every gene's values of the prediction (``(n_spots, G)``), for ``"fixed"``.
    target
        What the values mean: limits never go below its floor.

    Returns
    -------
    tuple of float
        ``(low, high)`` with ``low < high``; ``(0, 1)`` when no value is finite.

    Raises
    ------
    ParameterError
        If ``mode`` is unknown, or ``"fixed"`` without ``all_values``.
    """
    if mode not in CONTRAST_MODES:
        raise ParameterError(f"unknown contrast mode {mode!r}; use one of {list(CONTRAST_MODES)}")
    if mode == "fixed":
        if all_values is None:
            raise ParameterError("the fixed contrast mode needs every gene's values")
        v = _finite(all_values)
    else:
        v = _finite(values)
    if v.size == 0:
        return 0.0, 1.0
    if mode == "minmax":
        lo, hi = float(v.min()), float(v.max())
    else:
        lo, hi = (float(x) for x in np.percentile(v, PERCENTILES))
    floor = target_floor(target)
    if floor is not None:
        lo, hi = max(lo, floor), max(hi, floor)
    return _widen(lo, hi)


def context_marker(context: SpotContext | None) -> str:
    """The words a layer name carries when its values are contextual, ``"context 100 µm"``
    (the kernel's σ); ``""`` for per-tile values. The Gene browser's legend starts its line
    on per-tile or contextual values with the same words, so the two read alike."""
    return "" if context is None else f"context {context.sigma_um:g} µm"


def layer_name(
    gene: str,
    model: str,
    *,
    what: str = "",
    taken: Sequence[str] = (),
    store: str = "",
    context: SpotContext | None = None,
) -> str:
    """A heatmap layer's name: its gene and model (``"ERBB2 · NSL"``), and whether its values
    use the spot's neighbours (``"ERBB2 · NSL · context 100 µm"``), unique.

    Parameters
    ----------
    gene, model
        The gene shown and the model's display name.
    what
        What is drawn besides the value, e.g. ``"SD"`` for the uncertainty layer.
    taken
        Names of other layers: when the name is one of them, the store's name is added.
    store
        The prediction store's short name (see ``taken``).
    context
        The model's spot context (:func:`context_marker`); ``None``: per-tile values.
    """
    base = f"{gene} {what}".strip()
    model = short_model_name(model)
    name = f"{base} · {model}" if model else base
    marker = context_marker(context)
    if marker:
        name = f"{name} · {marker}"
    if name in taken and store:
        name = f"{name} · {store}"
    return name


def short_model_name(name: str) -> str:
    """A model's name as a layer list has room for: its display name without the
    parenthesised details (``"NSL (HER2ST, cross-patient fold)"`` → ``"NSL"``)."""
    return name.split(" (")[0].strip() or name


def top_genes(
    row: ArrayLike, means: ArrayLike, sds: ArrayLike, genes: Sequence[str], k: int = 3
) -> list[tuple[str, float, float]]:
    """The ``k`` genes a spot stands out in: highest above their mean over the slide, in
    standard deviations.

    Parameters
    ----------
    row
        The spot's value of every gene.
    means, sds
        Every gene's mean and standard deviation over the slide's spots.
    genes
        The gene names.
    k
        How many.

    Returns
    -------
    list of (gene, value, z)
        Best first; genes without a spread or a value are left out.
    """
    value = np.asarray(row, dtype=np.float64)
    sd = np.asarray(sds, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (value - np.asarray(means, dtype=np.float64)) / sd
    z[~np.isfinite(z) | ~(sd > 0)] = -np.inf
    order = np.argsort(-z, kind="stable")[:k]
    return [(genes[i], float(value[i]), float(z[i])) for i in order if np.isfinite(z[i])]
