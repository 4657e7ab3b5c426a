"""The evaluation protocol that can tell models apart (issue 19): intervals, resolution,
pathologist labels, and the spot-context kernel chosen on patient C only.

    python -m models.feature_context extract --methods dkan            # DKAN-style's fold
    #   runs and features from one training per fold (it writes the missing fold caches)
    OMP_NUM_THREADS=1 python -m models.folds --methods mean ridge_colour \
        ridge_colour_per_slide nsl_light_ridgehead dkan stem_mean_head # the other fold runs
    python -m models.frozen_encoder extract && python -m models.frozen_encoder folds  # the
    python -m models.ensemble folds                                    # combined models'
    python -m models.encoder_variants extract
    python -m models.encoder_variants folds --variants multilayer      # the default's folds
    python -m models.protocol --json models/results/protocol.json --markdown models/results/protocol.md

(The recorded Stem-style folds were trained with one torch thread; see ``models/folds.py``.)

What each number is (HER2ST legacy ST, 100 µm spots, 200 µm pitch; PCC-ALL = mean per-gene
Pearson over the 250-gene panel of the fold, log1p CP10k, raw and 3×3-smoothed labels):

- **LOSO-C** (full resolution, C images ~0.69 µm/px): each C section predicted by a model trained
  from scratch on the other four (``models/folds.py``, the shipped settings, seed 0), averaged
  over the five folds. Optimistic: the training sections are serial cuts of the same tumour.
  The shipped files themselves were trained on all five sections and are *not* scored here.
- **C → A1**: the shipped ONNX file (trained on C2–C6) on patient A's A1, a Shiny-app thumbnail
  at ~3.19 µm/px (derived from its spot spacing); the baselines fitted on C2–C6.
- **Resolution check**: LOSO-C again on the held-out C tiles degraded to A1's µm/px
  (``models.folds.degrade``).
- **Pathologist check** (A1): AUC of a tumour-minus-stroma marker score separating spots labelled
  invasive cancer from spots labelled connective or adipose tissue
  (``ST-pat/lbl/A1_labeled_coordinates.tsv``), for each model's predictions and for the measured
  expression of the same genes. The gene lists (:data:`TUMOUR_GENES`, :data:`STROMA_GENES`) were
  fixed before any score was seen; only those in the panel are used.
- **Context**: each model's per-spot predictions averaged over neighbours with the Gaussian kernel
  of ``napari_virtual_st.context`` (σ ∈ :data:`SIGMAS_UM`, radius 2.5σ, or none), in µm from the spot
  centres' pixel coordinates × the section's µm/px (itself from the 200 µm ST pitch). σ is chosen by
  nested leave-one-section-out within C: for held-out section k, the σ with the best mean raw
  PCC-ALL over the other four sections' LOSO predictions; section k's labels are never used to
  choose. The kernel to ship is the one chosen on all five C sections. A1 is never used to choose.
- **Intervals**: spot bootstrap (resampling the spots of each test section, :data:`N_BOOT`
  resamples, seeds fixed per section), 95 % percentile intervals; differences between two methods
  are paired (the same resamples) and called a tie when their interval contains 0. Neighbouring
  spots are correlated, so these intervals are narrower than the truth.

Every prediction of a log1p value is clamped at 0, as the shipped graphs are
(``onnx_export.clamp_non_negative``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import context_stage
from models.evaluate import C_SECTIONS, TEST_SECTION, TILE_PX, TILE_UM, predict_onnx
from models.folds import FOLD_CACHE, fold_path
from models.workshop.data import HER2ST, SectionData, load_her2st
from models.workshop.metrics import neighbourhood_mean, pearson_per_gene
from napari_virtual_st.context import SpotContext, apply_context, context_weights

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "napari_virtual_st" / "bundled_models"
LABELS_A1 = HER2ST / "ST-pat" / "lbl" / "A1_labeled_coordinates.tsv"

N_BOOT = 1000
SEED = 19
#: Kernel widths tried (µm). ``None`` (per-tile values) is always a candidate.
SIGMAS_UM = (50.0, 100.0, 150.0, 200.0, 300.0)
#: Radius = 2.5 σ (125, 250, 375, 500, 750 µm): no radius falls on a distance of the 200 µm
#: lattice (200, 283, 400, 447, 566, 600, 721 µm), where pixel rounding of the spot centres would
#: include some neighbours at that distance and not others.
RADIUS_FACTOR = 2.5
#: Tumour / epithelial markers: the HER2 amplicon and luminal keratins, epithelial adhesion.
TUMOUR_GENES = (
    "ERBB2", "GRB7", "STARD3", "PGAP3", "KRT8", "KRT18", "KRT19", "KRT7", "EPCAM", "CDH1",
    "CLDN4", "MUC1",
)  # fmt: skip
#: Stroma: fibrillar collagens and matrix, fibroblast genes, adipocyte genes.
STROMA_GENES = (
    "COL1A1", "COL1A2", "COL3A1", "COL6A1", "COL6A2", "COL6A3", "DCN", "LUM", "SPARC", "FN1",
    "POSTN", "VIM", "FBLN1", "MGP", "ADIPOQ", "PLIN1", "FABP4", "CFD",
)  # fmt: skip
POSITIVE = ("invasive cancer",)
NEGATIVE = ("connective tissue", "adipose tissue")


@dataclass(frozen=True)
class Method:
    """A method of the protocol: its fold runs (``models/folds.py``) and its shipped file."""

    name: str
    label: str
    fold_method: str
    onnx: str | None = None


METHODS = (
    Method("mean", "mean (baseline)", "mean"),
    Method("ridge_colour", "ridge on colour statistics (baseline)", "ridge_colour"),
    Method(
        "ridge_colour_per_slide",
        "ridge on colour statistics standardised per section (issue 19 item 4, on/off)",
        "ridge_colour_per_slide",
    ),
    Method("nsl", "NSL (`nsl_her2st`)", "nsl_light_ridgehead", "nsl_her2st.onnx"),
    Method("dkan", "DKAN-style (`dkan_her2st`)", "dkan", "dkan_her2st.onnx"),
    # its mean head, as shipped (the sampled mean shipped before: models/stem/mean_head.py)
    Method("stem", "Stem-style (`stem_her2st`)", "stem_mean_head", "stem_her2st.onnx"),
    Method(
        "nsl_dkan",
        "NSL + DKAN-style, one graph (`nsl_dkan_her2st`, models/ensemble.py)",
        "nsl_dkan",
        "nsl_dkan_her2st.onnx",
    ),
    Method(
        "lite0",
        "frozen ImageNet EfficientNet-Lite0 + per-gene ridge (models/frozen_encoder.py)",
        "lite0",
    ),
    Method(
        "nsl_lite0",
        "NSL + frozen EfficientNet-Lite0, one graph (`nsl_lite0_her2st`, models/frozen_encoder.py)",
        "nsl_lite0",
        "nsl_lite0_her2st.onnx",
    ),
    Method(
        "nsl_lite0_multilayer",
        "NSL + frozen EfficientNet-Lite0 on multi-layer features, one graph "
        "(`nsl_lite0_multilayer_her2st`, models/encoder_variants.py)",
        "nsl_lite0_multilayer",
        "nsl_lite0_multilayer_her2st.onnx",
    ),
    Method(  # not shipped: its values move with the spots its statistics come from
        "nsl_lite0_multilayer_per_slide",
        "the same, its features standardised per section (models/encoder_variants.py; not "
        "shipped: results/per_slide_sensitivity.md)",
        "nsl_lite0_multilayer_per_slide",
    ),
    Method(
        "nsl_lite0_multilayer_floored",
        "the same, standardised per section as a run does it: statistics of at most 128 "
        "spots, each SD floored at half its SD over patient C, one graph "
        "(`nsl_lite0_multilayer_floored_her2st`, models/encoder_variants.py)",
        "nsl_lite0_multilayer_floored",
        "nsl_lite0_multilayer_floored_her2st.onnx",
    ),
)
LABEL_KINDS = ("raw", "smoothed_3x3")


# ---------------------------------------------------------------- statistics


def bootstrap_counts(n: int, fold_index: int, n_boot: int = N_BOOT) -> NDArray[np.float64]:
    """``(n_boot, n)`` how often each spot is drawn in each resample (seed fixed per section)."""
    rng = np.random.default_rng([SEED, fold_index])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def weighted_pcc_all(
    pred: NDArray[np.floating], true: NDArray[np.floating], counts: NDArray[np.float64]
) -> NDArray[np.float64]:
    """PCC-ALL of each resample (rows of ``counts``); a gene constant in a resample counts 0,
    as in :func:`~models.workshop.metrics.pearson_per_gene`. ``counts`` of ones gives PCC-ALL."""
    p = pred.astype(np.float64) - pred.mean(axis=0)
    t = true.astype(np.float64) - true.mean(axis=0)
    n = counts.sum(axis=1, keepdims=True)
    sp, st = counts @ p, counts @ t
    cov = counts @ (p * t) - sp * st / n
    vp = counts @ (p * p) - sp * sp / n
    vt = counts @ (t * t) - st * st / n
    ok = (vp > 1e-9 * n) & (vt > 1e-9 * n)
    r = np.divide(cov, np.sqrt(np.where(ok, vp * vt, 1.0)), out=np.zeros_like(cov), where=ok)
    return r.mean(axis=1)


def interval(values: NDArray[np.float64]) -> list[float]:
    lo, hi = np.quantile(values, [0.025, 0.975])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarise(point: float, boots: NDArray[np.float64]) -> dict[str, Any]:
    return {"value": round(float(point), 4), "ci95": interval(boots)}


def difference(
    point: float, *, boots: NDArray[np.float64], other: tuple[float, NDArray[np.float64]]
) -> dict[str, Any]:
    """Paired difference a − b (``point``/``boots`` of a, ``other`` = b's point and resamples,
    drawn on the same spots); ``verdict`` is "a", "b" or "tie" (the interval contains 0)."""
    ci = interval(boots - other[1])
    verdict = "tie" if ci[0] <= 0 <= ci[1] else ("a" if ci[0] > 0 else "b")
    return {"difference": round(point - other[0], 4), "ci95": ci, "verdict": verdict}


def auc(score: NDArray[np.floating], positive: NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- data


@dataclass
class Fold:
    """One held-out section: its labels, geometry and bootstrap resamples."""

    name: str
    genes: list[str]
    raw: NDArray[np.float32]
    smoothed: NDArray[np.float32]
    xy_um: NDArray[np.float64]
    counts: NDArray[np.float64]

    def labels(self, kind: str) -> NDArray[np.float32]:
        return self.raw if kind == "raw" else self.smoothed


def make_fold(section: SectionData, genes: list[str], index: int, n_boot: int) -> Fold:
    raw = section.targets(genes)
    return Fold(
        section.name,
        genes,
        raw,
        neighbourhood_mean(raw, section.array_rc),
        section.measured.xy_fullres_px * section.mpp,
        bootstrap_counts(len(raw), index, n_boot),
    )


def load_fold_prediction(
    method: Method, fold: str, low: bool = False
) -> tuple[list[str], NDArray]:
    with np.load(fold_path(method.fold_method, fold)) as z:
        return [str(g) for g in z["genes"]], np.maximum(z["pred_lowres" if low else "pred"], 0.0)


def shipped_prediction(method: Method, section: SectionData) -> tuple[list[str], NDArray]:
    """The shipped file's predictions on ``section`` (cached by the file's hash)."""
    from napari_virtual_st.predictor import Predictor

    assert method.onnx is not None
    path = BUNDLED / method.onnx
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    cache = FOLD_CACHE / f"onnx_{path.stem}_{digest}__{section.name}.npz"
    predictor = Predictor(path, providers=["cpu"])
    genes = list(predictor.info.genes)
    if cache.is_file():
        with np.load(cache) as z:
            return genes, np.maximum(z["pred"], 0.0)
    tiles = section.tiles
    if predictor.info.tile_px != section.tile_px:
        from models.workshop.data import her2st_sections, load_section

        source = next(s for s in her2st_sections() if s.name == section.name)
        tiles = load_section(source, predictor.info.tile_px, predictor.info.tile_um).tiles
    pred = predict_onnx(predictor, tiles).astype(np.float32)
    FOLD_CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, pred=pred)
    return genes, np.maximum(pred, 0.0)


def a1_labels(section: SectionData) -> NDArray[np.object_]:
    """The pathologist's label of each A1 spot (joined on the adjusted array coordinates)."""
    ids: dict[tuple[float, float], str] = {}
    with (HER2ST / "ST-spotfiles" / "A1_selection.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            key = (round(float(row["new_x"]), 3), round(float(row["new_y"]), 3))
            ids[key] = f"{int(float(row['x']))}x{int(float(row['y']))}"
    labels: dict[str, str] = {}
    with LABELS_A1.open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            key = (round(float(row["x"]), 3), round(float(row["y"]), 3))
            if key in ids:
                labels[ids[key]] = row["label"]
    return np.array([labels.get(s, "") for s in section.measured.spot_ids], dtype=object)


def marker_score(values: NDArray[np.floating], genes: Sequence[str]) -> NDArray[np.float64]:
    """Mean z-score of the tumour genes minus that of the stroma genes (those in ``genes``)."""
    v = values.astype(np.float64)
    sd = v.std(axis=0)
    z = np.divide(v - v.mean(axis=0), sd, out=np.zeros_like(v), where=sd > 0)
    tum = [genes.index(g) for g in TUMOUR_GENES if g in genes]
    stro = [genes.index(g) for g in STROMA_GENES if g in genes]
    return z[:, tum].mean(axis=1) - z[:, stro].mean(axis=1)


# ---------------------------------------------------------------- the protocol


def contextual(pred: NDArray, fold: Fold, sigma: float | None) -> NDArray:
    if sigma is None:
        return pred
    weights = context_weights(fold.xy_um, SpotContext(sigma, RADIUS_FACTOR * sigma))
    return apply_context(pred, weights)


def pcc_all(pred: NDArray, true: NDArray) -> float:
    return float(pearson_per_gene(pred, true).mean())


def section_scores(
    preds: dict[str, NDArray], folds: dict[str, Fold], kind: str
) -> tuple[float, NDArray[np.float64]]:
    """Mean over the sections in ``preds`` of PCC-ALL, and its bootstrap distribution (each
    section resampled on its own fixed seed, so two methods on the same sections are paired)."""
    points = [pcc_all(preds[k], folds[k].labels(kind)) for k in preds]
    boots = np.mean(
        [weighted_pcc_all(preds[k], folds[k].labels(kind), folds[k].counts) for k in preds],
        axis=0,
    )
    return float(np.mean(points)), boots


def nested_context(
    preds: dict[str, NDArray], folds: dict[str, Fold]
) -> tuple[dict[str, NDArray], dict[str, float | None]]:
    """Each section's predictions through the Gaussian kernel chosen without its labels: a C
    section's σ on the other C sections present, A1's on every C section present
    (:func:`choose_sigma`); the contextual predictions and the σ chosen per section."""
    c_keys = [k for k in preds if k in C_SECTIONS]
    sigmas = {
        k: choose_sigma(preds, folds, [j for j in c_keys if j != k] if k in C_SECTIONS else c_keys)
        for k in preds
    }
    return {k: contextual(preds[k], folds[k], sigmas[k]) for k in preds}, sigmas


def on_off(
    base: Method, other: Method, n_boot: int = N_BOOT, context: bool = False
) -> dict[str, Any] | None:
    """``other − base`` on the sections both have fold runs for (``None`` if none): per
    setting (LOSO-C over the C sections, ``A1`` for the C2–C6 → A1 fold) and label kind, each
    one's PCC-ALL with its interval and the paired difference (ties called ties). The record
    of a technique measured on/off (``models.auxiliary_genes``, ``models.encoder_variants``).

    With ``context``, also settings ``loso_C_ctx`` and ``A1_ctx``: each method's predictions
    through its own Gaussian kernel, σ chosen nested as the protocol chooses it
    (:func:`nested_context`)."""
    sections = [
        k
        for k in (*C_SECTIONS, TEST_SECTION)
        if fold_path(base.fold_method, k).is_file() and fold_path(other.fold_method, k).is_file()
    ]
    if not sections:
        return None
    data = load_her2st(TILE_PX, TILE_UM, names=sections)
    folds: dict[str, Fold] = {}
    preds: dict[str, dict[str, NDArray]] = {"base": {}, "other": {}}
    for k in sections:
        genes, p_base = load_fold_prediction(base, k)
        genes_other, p_other = load_fold_prediction(other, k)
        if genes != genes_other:
            raise ValueError(f"{base.key} and {other.key} {k}: the runs' gene panels differ")
        index = (*C_SECTIONS, TEST_SECTION).index(k)
        folds[k] = make_fold(data[k], genes, index, n_boot)
        preds["base"][k], preds["other"][k] = p_base, p_other
    record: dict[str, Any] = {
        "sections": sections,
        "n_boot": n_boot,
        "resolution_um_per_px": {k: round(data[k].mpp, 3) for k in sections},
    }
    settings = [("loso_C", C_SECTIONS, preds), ("A1", (TEST_SECTION,), preds)]
    if context:
        ctx = {key: nested_context(p, folds) for key, p in preds.items()}
        record["context_sigma_um"] = {key: c[1] for key, c in ctx.items()}
        ctx_preds = {key: c[0] for key, c in ctx.items()}
        settings += [("loso_C_ctx", C_SECTIONS, ctx_preds), ("A1_ctx", (TEST_SECTION,), ctx_preds)]
    for setting, wanted, by in settings:
        keys = [k for k in sections if k in wanted]
        for kind in LABEL_KINDS if keys else ():
            b = section_scores({k: by["base"][k] for k in keys}, folds, kind)
            o = section_scores({k: by["other"][k] for k in keys}, folds, kind)
            record[f"{setting}_{kind}"] = {
                "base": summarise(*b),
                "other": summarise(*o),
                "other_minus_base": difference(o[0], boots=o[1], other=b),
                "sections": keys,
            }
    return record


def choose_sigma(
    preds: dict[str, NDArray], folds: dict[str, Fold], sections: Sequence[str]
) -> float | None:
    """The candidate kernel with the best mean raw PCC-ALL over ``sections`` (none without
    sections to choose on)."""
    if not sections:
        return None
    candidates: list[float | None] = [None, *SIGMAS_UM]
    means = [
        np.mean([pcc_all(contextual(preds[k], folds[k], s), folds[k].raw) for k in sections])
        for s in candidates
    ]
    return candidates[int(np.argmax(means))]


#: Settings of the protocol: held-out predictions of a method, by section.
SETTINGS = ("loso", "loso_lowres", "loso_ctx", "a1", "a1_ctx", "loso_rings", "a1_rings")


@dataclass
class Predictions:
    """Held-out predictions: ``by[setting][method][section]`` (settings: :data:`SETTINGS`)."""

    folds: dict[str, Fold]
    by: dict[str, dict[str, dict[str, NDArray]]]

    def get(self, setting: str, method: str) -> dict[str, NDArray] | None:
        return self.by[setting].get(method)


def load_predictions(
    sections: dict[str, SectionData], n_boot: int, methods: Sequence[Method] = METHODS
) -> Predictions:
    """Fold runs (``models/folds.py``) for LOSO-C (the C sections each method has fold runs
    for); the shipped files and the baselines fitted on C2–C6 for A1 (of ``methods``)."""
    folds: dict[str, Fold] = {}
    by: dict[str, dict[str, dict[str, NDArray]]] = {s: {} for s in SETTINGS}

    def add(setting: str, m: Method, section: str, genes: list[str], pred: NDArray) -> None:
        index = (*C_SECTIONS, TEST_SECTION).index(section)
        folds.setdefault(section, make_fold(sections[section], genes, index, n_boot))
        if genes != folds[section].genes:
            raise ValueError(f"{m.name} {section}: gene panel differs from the other methods'")
        by[setting].setdefault(m.name, {})[section] = pred

    for m in methods:
        for k in C_SECTIONS:
            if fold_path(m.fold_method, k).is_file():
                add("loso", m, k, *load_fold_prediction(m, k))
                add("loso_lowres", m, k, *load_fold_prediction(m, k, low=True))
        test = sections[TEST_SECTION]
        if m.onnx:
            add("a1", m, TEST_SECTION, *shipped_prediction(m, test))
        else:
            add("a1", m, TEST_SECTION, *load_fold_prediction(m, TEST_SECTION))
    return Predictions(folds, by)


class Pathologist:
    """The A1 pathologist check: invasive cancer vs connective + adipose, by marker score."""

    def __init__(self, section: SectionData, genes: list[str], n_boot: int) -> None:
        labels = a1_labels(section)
        self.genes = genes
        self.keep = np.isin(labels, POSITIVE + NEGATIVE)
        self.positive = np.isin(labels[self.keep], POSITIVE)
        counts = bootstrap_counts(int(self.keep.sum()), 99, n_boot).astype(int)
        # resamples holding both classes (all of them in practice: 282 vs 36 spots)
        draws = [np.repeat(np.arange(len(c)), c) for c in counts]
        self.draws = [d for d in draws if 0 < self.positive[d].sum() < len(d)]

    def record(self) -> dict[str, Any]:
        return {
            "tumour_genes_used": [g for g in TUMOUR_GENES if g in self.genes],
            "stroma_genes_used": [g for g in STROMA_GENES if g in self.genes],
            "n_invasive": int(self.positive.sum()),
            "n_connective_adipose": int((~self.positive).sum()),
        }

    def auc(self, values: NDArray) -> tuple[float, NDArray[np.float64]]:
        score = marker_score(values, self.genes)[self.keep]
        boots = np.array([auc(score[d], self.positive[d]) for d in self.draws])
        return auc(score, self.positive), boots


def score_method(m: Method, p: Predictions) -> dict[str, Any]:
    """LOSO-C, the resolution check and C → A1 of one method."""
    rec: dict[str, Any] = {"label": m.label, "shipped_file": m.onnx}
    loso, low, a1 = p.get("loso", m.name), p.get("loso_lowres", m.name), p.get("a1", m.name)
    rec["loso_folds"] = sorted(loso) if loso else []
    for kind in LABEL_KINDS:
        if a1 is not None:
            rec[f"a1_{kind}"] = summarise(*section_scores(a1, p.folds, kind))
        if loso is None or low is None:
            rec[f"loso_C_{kind}"] = None  # no fold runs
            continue
        point, boots = section_scores(loso, p.folds, kind)
        rec[f"loso_C_{kind}"] = summarise(point, boots)
        rec[f"loso_C_{kind}_per_fold"] = {
            k: round(pcc_all(pred, p.folds[k].labels(kind)), 4) for k, pred in loso.items()
        }
        low_point, low_boots = section_scores(low, p.folds, kind)
        rec[f"lowres_C_{kind}"] = summarise(low_point, low_boots)
        rec[f"lowres_minus_full_{kind}"] = difference(
            low_point, boots=low_boots, other=(point, boots)
        )
    return rec


def context_method(m: Method, p: Predictions) -> dict[str, Any]:
    """The kernel chosen by nested LOSO within C, its gain on LOSO-C and on A1 (the contextual
    predictions are added to ``p`` as ``loso_ctx`` / ``a1_ctx``)."""
    preds, folds = p.by["loso"][m.name], p.folds
    sections = list(preds)
    chosen = {k: choose_sigma(preds, folds, [j for j in sections if j != k]) for k in sections}
    final = choose_sigma(preds, folds, sections)
    p.by["loso_ctx"][m.name] = {k: contextual(preds[k], folds[k], chosen[k]) for k in sections}
    p.by["a1_ctx"][m.name] = {
        k: contextual(v, folds[k], final) for k, v in p.by["a1"][m.name].items()
    }
    grid = {
        str(s): {
            kind: round(
                float(
                    np.mean(
                        [
                            pcc_all(contextual(preds[k], folds[k], s), folds[k].labels(kind))
                            for k in sections
                        ]
                    )
                ),
                4,
            )
            for kind in LABEL_KINDS
        }
        for s in [None, *SIGMAS_UM]
    }
    rec: dict[str, Any] = {
        "sigma_chosen_per_outer_fold": chosen,
        "sigma_chosen_on_all_C": final,
        "radius_um": None if final is None else RADIUS_FACTOR * final,
        "loso_C_mean_pcc_all_by_sigma (every sigma, for reading; not a held-out choice)": grid,
    }
    for kind in LABEL_KINDS:
        for setting, base, name in (("loso_ctx", "loso", "loso_C"), ("a1_ctx", "a1", "a1")):
            point, boots = section_scores(p.by[setting][m.name], folds, kind)
            rec[f"{name}_{kind}"] = summarise(point, boots)
            rec[f"{name}_gain_{kind}"] = difference(
                point, boots=boots, other=section_scores(p.by[base][m.name], folds, kind)
            )
    return rec


def learned_context_method(m: Method, p: Predictions) -> dict[str, Any]:
    """The learnt ring stage (``models/context_stage.py``) fitted nested within C, against
    no context and against the Gaussian chosen the same way (:func:`context_method` first);
    the contextual predictions are added to ``p`` as ``loso_rings`` / ``a1_rings``."""
    preds, folds = p.by["loso"][m.name], p.folds
    labels = {k: folds[k].raw for k in preds}
    xy = {k: folds[k].xy_um for k in preds}
    held_out, chosen, final = context_stage.nested(preds, labels, xy)
    p.by["loso_rings"][m.name] = held_out
    p.by["a1_rings"][m.name] = {
        k: context_stage.apply_rings(v, folds[k].xy_um, final)
        for k, v in p.by["a1"][m.name].items()
    }
    rec: dict[str, Any] = {
        "what": "rings stage (self + rings to "
        + ", ".join(f"{e:g}" for e in context_stage.RING_EDGES_UM)
        + " um), weights fitted on the other C sections' LOSO predictions and raw labels; "
        "variant (per_gene / shared) chosen on inner folds of those sections",
        "chosen_per_outer_fold": chosen,
        "fitted_on_all_C": context_stage.coefficient_summary(final),
    }
    if m.onnx:  # what would ship: the weights in the fold predictions' gene order
        rec["context_fitted_on_all_C"] = {
            "genes": folds[next(iter(preds))].genes,
            **final.as_dict(),
        }
    for kind in LABEL_KINDS:
        for setting, name in (("loso_rings", "loso_C"), ("a1_rings", "a1")):
            base, gauss = setting.replace("_rings", ""), setting.replace("_rings", "_ctx")
            point, boots = section_scores(p.by[setting][m.name], folds, kind)
            rec[f"{name}_{kind}"] = summarise(point, boots)
            rec[f"{name}_minus_none_{kind}"] = difference(
                point, boots=boots, other=section_scores(p.by[base][m.name], folds, kind)
            )
            rec[f"{name}_minus_gaussian_{kind}"] = difference(
                point, boots=boots, other=section_scores(p.by[gauss][m.name], folds, kind)
            )
    return rec


def paired(p: Predictions, setting: str, kind: str, a: str, b: str) -> dict[str, Any] | None:
    """a − b on the sections both have predictions for (paired resamples), or None."""
    pa, pb = p.get(setting, a), p.get(setting, b)
    if pa is None or pb is None:
        return None
    common = [k for k in pa if k in pb]
    if not common:
        return None
    sa = section_scores({k: pa[k] for k in common}, p.folds, kind)
    sb = section_scores({k: pb[k] for k in common}, p.folds, kind)
    return {**difference(sa[0], boots=sa[1], other=sb), "sections": common}


def run(n_boot: int = N_BOOT, log: Any = print) -> dict[str, Any]:
    """The whole protocol (module docstring) as one JSON-ready record."""
    sections = load_her2st(TILE_PX, TILE_UM)
    p = load_predictions(sections, n_boot)
    fa1 = p.folds[TEST_SECTION]
    pathologist = Pathologist(sections[TEST_SECTION], fa1.genes, n_boot)
    measured = pathologist.auc(fa1.raw)
    out: dict[str, Any] = {
        "n_boot": n_boot,
        "seed": SEED,
        "resolution_um_per_px": {n: round(s.mpp, 3) for n, s in sections.items()},
        "a1_degraded_to_um_per_px": round(sections[TEST_SECTION].mpp, 3),
        "spot_coordinates": "spot centre pixels x the section's um/px (from the 200 um ST pitch)",
        "sigmas_um": list(SIGMAS_UM),
        "pathologist": {
            **pathologist.record(),
            "measured": summarise(*measured),
            "measured_smoothed_3x3": summarise(*pathologist.auc(fa1.smoothed)),
        },
        "methods": {},
    }
    runs = [set(v) for v in p.by["loso"].values()]
    common = [k for k in C_SECTIONS if runs and all(k in r for r in runs)]
    out["loso_common_sections"] = common
    for m in METHODS:
        log(f"scoring {m.name}")
        rec = score_method(m, p)
        loso = p.get("loso", m.name)
        for kind in LABEL_KINDS:
            rec[f"loso_common_{kind}"] = (
                summarise(*section_scores({k: loso[k] for k in common}, p.folds, kind))
                if loso and common
                else None
            )
        point, boots = pathologist.auc(p.by["a1"][m.name][TEST_SECTION])
        rec["auc_invasive_vs_stroma"] = summarise(point, boots)
        rec["auc_minus_measured"] = difference(point, boots=boots, other=measured)
        if m.name in p.by["loso"]:
            rec["context"] = context_method(m, p)
            log(f"learnt context stage of {m.name}")
            rec["learned_context"] = learned_context_method(m, p)
        out["methods"][m.name] = rec
    names = [m.name for m in METHODS]
    pairs = {
        f"{setting}/{kind}/{a}-{b}": paired(p, setting, kind, a, b)
        for setting in ("loso", "a1", "loso_ctx", "a1_ctx")
        for kind in LABEL_KINDS
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    out["paired_differences"] = {k: v for k, v in pairs.items() if v is not None}
    out["default"] = recommend(out)
    return out


def recommend(result: dict[str, Any]) -> dict[str, Any]:
    """The shipped model that beats the others on LOSO-C raw PCC-ALL with its context kernel
    (paired, on the C sections both have; A1 not used), and which it ties with."""
    shipped = [n for n, r in result["methods"].items() if r["shipped_file"] and "context" in r]
    pairs = result["paired_differences"]

    def versus(a: str, b: str) -> dict[str, Any]:
        if f"loso_ctx/raw/{a}-{b}" in pairs:
            return pairs[f"loso_ctx/raw/{a}-{b}"]
        d = pairs[f"loso_ctx/raw/{b}-{a}"]
        lo, hi = d["ci95"]
        flip = {"a": "b", "b": "a", "tie": "tie"}[d["verdict"]]
        return {**d, "difference": -d["difference"], "ci95": [-hi, -lo], "verdict": flip}

    def wins(n: str) -> tuple[int, float]:
        diffs = [versus(n, o)["difference"] for o in shipped if o != n]
        return sum(d > 0 for d in diffs), float(np.sum(diffs))

    best = max(shipped, key=wins)
    return {
        "model": best,
        "criterion": "LOSO-C raw PCC-ALL with the context kernel chosen on inner C folds, "
        "paired against each other shipped model on the C sections both were run on",
        "versus": {o: versus(best, o) for o in shipped if o != best},
        "ties_with": [o for o in shipped if o != best and versus(best, o)["verdict"] == "tie"],
        "context": result["methods"][best]["context"]["sigma_chosen_on_all_C"],
    }


def markdown(result: dict[str, Any]) -> str:
    """The protocol's tables (headline, context, paired differences) in markdown."""

    folds = "; ".join(
        f"{n}: {', '.join(r['loso_folds']) or 'none'}" for n, r in result["methods"].items()
    )
    common = "+".join(result["loso_common_sections"])
    lines = [
        test_sets_text(result["resolution_um_per_px"], result["n_boot"]),
        "",
        f"LOSO-C held-out sections run, per method: {folds}.",
        "",
        "| method | LOSO-C raw (its sections) | LOSO-C smoothed (its sections) "
        f"| LOSO-C raw on {common} | LOSO-C smoothed on {common} | C→A1 raw | C→A1 smoothed "
        "| LOSO-C raw, tiles at A1's µm/px | AUC invasive vs stroma (A1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"].values():
        lines.append(
            f"| {r['label']} | {cell_text(r['loso_C_raw'])} | {cell_text(r['loso_C_smoothed_3x3'])} | "
            f"{cell_text(r['loso_common_raw'])} | {cell_text(r['loso_common_smoothed_3x3'])} | "
            f"{cell_text(r['a1_raw'])} | {cell_text(r['a1_smoothed_3x3'])} | "
            f"{cell_text(r.get('lowres_C_raw'))} | {cell_text(r['auc_invasive_vs_stroma'])} |"
        )
    path = result["pathologist"]
    lines.append(
        f"| measured expression (raw / 3×3-smoothed) | | | | | | | | {cell_text(path['measured'])} / "
        f"{cell_text(path['measured_smoothed_3x3'])} |"
    )
    lines += [
        "",
        "| method | σ µm chosen on C (per outer fold) | LOSO-C raw with context | gain raw "
        "| gain smoothed | C→A1 raw with context | gain raw | gain smoothed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"].values():
        c = r.get("context")
        if c is None:
            lines.append(f"| {r['label']} | not run (no fold runs) | | | | | | |")
            continue
        per_fold = ", ".join(str(v) for v in c["sigma_chosen_per_outer_fold"].values())
        lines.append(
            f"| {r['label']} | {c['sigma_chosen_on_all_C']} ({per_fold}) | "
            f"{cell_text(c['loso_C_raw'])} | {_diff(c['loso_C_gain_raw'])} | "
            f"{_diff(c['loso_C_gain_smoothed_3x3'])} | {cell_text(c['a1_raw'])} | "
            f"{_diff(c['a1_gain_raw'])} | {_diff(c['a1_gain_smoothed_3x3'])} |"
        )
    learned = learned_markdown(result)
    lines += ["", *learned] if learned else []
    lines += ["", "| paired difference | a − b | 95 % interval | verdict |", "|---|---|---|---|"]
    for key, d in result["paired_differences"].items():
        if "mean" in key.split("/")[-1].split("-"):
            continue
        lo, hi = d["ci95"]
        on = ",".join(d["sections"])
        lines.append(
            f"| {key} ({on}) | {d['difference']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {d['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def learned_markdown(result: dict[str, Any]) -> list[str]:
    """The learnt ring stage's table: its scores, and paired against none and the Gaussian."""

    if not any(r.get("learned_context") for r in result["methods"].values()):
        return []
    lines = [
        "Learnt context stage (rings, `models/context_stage.py`): weights fitted on the other C "
        "sections only; a − b paired, ties called ties.",
        "",
        "| method | variant per outer fold (all C) | LOSO-C raw | − none raw | − Gaussian raw "
        "| − Gaussian smoothed | C→A1 raw | − none raw | − Gaussian raw | − Gaussian smoothed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"].values():
        c = r.get("learned_context")
        if c is None:
            continue
        chosen = c["chosen_per_outer_fold"]
        variants = ", ".join(v["variant"] for k, v in chosen.items() if k != "all_C")
        lines.append(
            f"| {r['label']} | {variants} ({chosen['all_C']['variant']}) | "
            f"{cell_text(c['loso_C_raw'])} | {_diff(c['loso_C_minus_none_raw'])} | "
            f"{_diff(c['loso_C_minus_gaussian_raw'])} | "
            f"{_diff(c['loso_C_minus_gaussian_smoothed_3x3'])} | {cell_text(c['a1_raw'])} | "
            f"{_diff(c['a1_minus_none_raw'])} | {_diff(c['a1_minus_gaussian_raw'])} | "
            f"{_diff(c['a1_minus_gaussian_smoothed_3x3'])} |"
        )
    return lines


def test_sets_text(resolution_um_per_px: dict[str, float], n_boot: int) -> str:
    """The resolution of each test set and how intervals are read: the first lines of every
    results table made from the fold runs (protocol, learnt context, auxiliary genes)."""
    c = [v for k, v in resolution_um_per_px.items() if k in C_SECTIONS]
    a1 = resolution_um_per_px.get(TEST_SECTION)
    sets = []
    if c:
        sets.append(
            f"LOSO-C = each held-out C section at full resolution, {min(c):.3f}–{max(c):.3f} µm/px"
        )
    if a1 is not None:
        sets.append(f"C → A1 = patient A's A1, the Shiny app's thumbnail, {a1:.3f} µm/px")
        if c:
            sets.append(f"resolution check = the held-out C tiles degraded to {a1:.3f} µm/px")
    return (
        "Test sets (µm/px from the 200 µm spot pitch): "
        + "; ".join(sets)
        + f". Intervals: 95 % spot bootstrap ({n_boot} resamples per section), paired between "
        "two settings; a difference whose interval contains 0 is a **tie**."
    )


def cell_text(rec: dict[str, Any] | None) -> str:
    """A score with its interval, ``0.234 [0.217, 0.250]`` (``not run`` for none)."""
    if rec is None:
        return "not run"
    lo, hi = rec["ci95"]
    return f"{rec['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def on_off_rows(
    record: dict[str, Any], settings: Sequence[str]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(setting, label kind, entry)`` of an :func:`on_off` record, in the order of
    ``settings`` then :data:`LABEL_KINDS`, for the settings the record has."""
    for setting in settings:
        for kind in LABEL_KINDS:
            entry = record.get(f"{setting}_{kind}")
            if entry is not None:
                yield setting, kind, entry


def on_off_cells(base: dict[str, Any], other: dict[str, Any], diff: dict[str, Any]) -> str:
    """The last cells of a row of an on/off table (:func:`on_off`): both scores with their
    intervals, the paired difference with its interval, and the verdict (helps, hurts, tie)."""
    verdict = {"a": "helps", "b": "hurts", "tie": "tie"}[diff["verdict"]]
    lo, hi = diff["ci95"]
    return (
        f"{cell_text(base)} | {cell_text(other)} | "
        f"{diff['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {verdict} |"
    )


def on_off_table(title: str, intro: str, record: dict[str, Any], base: str, other: str) -> str:
    """A one-technique on/off record of :func:`on_off` with context as markdown: the title,
    ``intro`` (what produced it), the test sets, then one row per setting and label kind
    (``base`` and ``other`` name the two columns)."""
    lines = [
        f"# {title}",
        "",
        intro + " PCC-ALL over the 250-gene panel; per tile, and `_ctx` through each run's own "
        "Gaussian kernel (σ chosen nested on C as `models/protocol.py` does); 95 % paired "
        "spot-bootstrap intervals; A1 = the fold run on C2–C6 (its choices made on C).",
        "",
        test_sets_text(record["resolution_um_per_px"], record["n_boot"]),
        "",
        f"| setting | labels | {base} | {other} | difference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for setting, kind, r in on_off_rows(record, ("loso_C", "A1", "loso_C_ctx", "A1_ctx")):
        lines.append(
            f"| {setting} | {kind} | " + on_off_cells(r["base"], r["other"], r["other_minus_base"])
        )
    return "\n".join(lines) + "\n"


def _diff(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    tag = " (tie)" if d["verdict"] == "tie" else ""
    return f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]{tag}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=REPO / "models" / "results" / "protocol.json")
    parser.add_argument(
        "--markdown", type=Path, default=REPO / "models" / "results" / "protocol.md"
    )
    parser.add_argument("--n-boot", type=int, default=N_BOOT)
    args = parser.parse_args(argv)
    result = run(args.n_boot)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.markdown.write_text(table)
    print(table)
    print(json.dumps(result["default"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
