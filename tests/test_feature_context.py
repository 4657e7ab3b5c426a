"""The learnt context stage in feature space (models/feature_context.py) on synthetic lattices,
where the planted answer is known: it recovers a neighbour effect, its nested choice never
reads the held-out section's labels, and edge/isolated spots fall back to their own features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.feature_context import (
    SectionFeatures,
    Setting,
    candidates,
    choose,
    design,
    fit_head,
    neighbour_means,
    nested,
    predict_head,
)

PITCH_UM = 200.0


def _lattice(n: int) -> np.ndarray:
    r, c = np.mgrid[0:n, 0:n]
    return np.column_stack([c.ravel(), r.ravel()]).astype(np.float64) * PITCH_UM


def _synthetic_sections(
    seed: int, n_sections: int = 4, neighbour_effect: float = 1.5, size: int = 12
) -> tuple[list[SectionFeatures], np.ndarray, np.ndarray]:
    """Synthetic sections: per-gene features ``(n, G=3, F=2)`` drawn independently per spot;
    the label of gene g is ``own · a_g + (mean of the 4 nearest neighbours' features) · b_g``
    plus a little noise (``b = neighbour_effect × …``: the planted neighbour effect)."""
    rng = np.random.default_rng(seed)
    a = np.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]])
    b = neighbour_effect * np.array([[0.8, 0.4], [-0.6, 0.5], [0.5, -0.9]])
    xy = _lattice(size)
    out = []
    for k in range(n_sections):
        feats = rng.normal(size=(len(xy), 3, 2))
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
        near = (d > 0) & (d <= PITCH_UM * 1.01)
        nbr = (near[:, :, None, None] * feats[None]).sum(1) / near.sum(1)[:, None, None]
        y = (feats * a).sum(-1) + (nbr * b).sum(-1) + 0.05 * rng.normal(size=(len(xy), 3))
        out.append(SectionFeatures(f"synthetic{k}", feats, xy, y))
    return out, a, b


def test_head_recovers_a_planted_neighbour_effect() -> None:
    sections, a, b = _synthetic_sections(0)
    # σ 100 µm, radius 250 µm: the 4 nearest neighbours (200 µm), equally weighted
    setting = Setting("gauss", 100.0, False, alpha=1e-3)
    head = fit_head(sections[:3], setting)
    np.testing.assert_allclose(head.w[:, :2], a, atol=0.05)
    np.testing.assert_allclose(head.w[:, 2:], b, atol=0.05)
    held = sections[3]
    pred = head.predict(held.design(setting))
    own_only = fit_head(sections[:3], Setting("none", alpha=1e-3)).predict(
        held.design(Setting("none"))
    )
    r_ctx = [np.corrcoef(pred[:, g], held.labels[:, g])[0, 1] for g in range(3)]
    r_own = [np.corrcoef(own_only[:, g], held.labels[:, g])[0, 1] for g in range(3)]
    assert min(r_ctx) > 0.97
    assert max(r_own) < 0.9  # the neighbours carry signal the spot's own tile does not


def test_nested_choice_prefers_context_only_where_it_is_planted() -> None:
    settings = candidates(("none", "gauss"), sigmas=(100.0, 300.0), counts=(False,))
    with_effect, _, _ = _synthetic_sections(1)
    best, scores = choose(with_effect, settings)
    assert best.variant == "gauss" and best.sigma_um == 100.0
    assert scores[best] > max(v for s, v in scores.items() if s.variant == "none") + 0.1
    without, _, _ = _synthetic_sections(1, neighbour_effect=0.0)
    best_none, scores_none = choose(without, settings)
    gain = scores_none[best_none] - max(v for s, v in scores_none.items() if s.variant == "none")
    assert gain < 0.01  # nothing to gain from the neighbours when none was planted


def test_nested_never_reads_the_held_out_labels() -> None:
    sections, _, _ = _synthetic_sections(2)
    train, held = sections[:3], sections[3]
    settings = candidates(("none", "gauss", "rings"), sigmas=(100.0, 300.0))
    chosen, pred = nested(train, held, settings)
    rng = np.random.default_rng(99)
    for poison in (None, rng.normal(size=held.labels.shape) * 100, -held.labels):
        poisoned = SectionFeatures(held.name, held.feats, held.xy_um, poison)
        chosen_p, pred_p = nested(train, poisoned, settings)
        assert chosen_p == chosen
        np.testing.assert_array_equal(pred_p, pred)
    # the training sections' labels do drive the choice: the test above can fail
    shuffled = [
        SectionFeatures(s.name, s.feats, s.xy_um, rng.permutation(s.labels)) for s in train
    ]
    assert nested(shuffled, held, settings)[0] != chosen


def test_a_head_is_never_fitted_on_a_section_without_labels() -> None:
    sections, _, _ = _synthetic_sections(3, n_sections=2)
    blind = SectionFeatures("blind", sections[1].feats, sections[1].xy_um, None)
    with pytest.raises(ValueError, match="labelled"):
        fit_head([sections[0], blind], Setting("none"))


@pytest.mark.parametrize("variant", ["gauss", "rings"])
def test_isolated_and_edge_spots_use_their_own_features(variant: str) -> None:
    # synthetic: a 3×3 lattice and one spot 5 mm away from it
    xy = np.vstack([_lattice(3), [[5000.0, 5000.0]]])
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(len(xy), 2, 3))
    setting = Setting(variant, 100.0 if variant == "gauss" else None, counts=True)
    blocks, weights = neighbour_means(feats, xy, setting)
    isolated = len(xy) - 1
    for block, weight in zip(blocks, weights, strict=True):
        assert weight[isolated] == 0
        np.testing.assert_array_equal(block[isolated], feats[isolated])
        assert np.isfinite(block).all()
    # the corner spot (0, 0): its 200 µm neighbours are spots 1 and 3 only, renormalised
    np.testing.assert_allclose(blocks[0][0], (feats[1] + feats[3]) / 2)
    # the centre (spot 4) has 4 neighbours at 200 µm
    np.testing.assert_allclose(blocks[0][4], feats[[1, 3, 5, 7]].mean(0))
    x = design(feats, xy, setting)
    n_blocks = len(blocks)
    assert x.shape == (len(xy), 2, 3 * (1 + n_blocks) + n_blocks)
    np.testing.assert_array_equal(x[isolated, :, -n_blocks:], 0.0)  # counts say "alone"


def test_predictions_of_an_isolated_spot_are_finite_and_non_negative() -> None:
    sections, _, _ = _synthetic_sections(5, n_sections=3)
    head = fit_head(sections, Setting("gauss", 100.0, True, alpha=1.0))
    lone = SectionFeatures("synthetic_lone", sections[0].feats[:1], np.array([[0.0, 0.0]]), None)
    pred = predict_head(head, lone)
    assert pred.shape == (1, 3)
    assert np.isfinite(pred).all() and (pred >= 0).all()


def test_every_candidate_describes_itself() -> None:
    texts = {s.describe() for s in candidates()}
    assert len(texts) == len(candidates())
    assert "rings+count α10" in texts and "own α1" in texts


def test_own_only_head_is_the_colour_ridge_baseline_on_real_her2st() -> None:
    """On real data (HER2ST fold C2): the head with own features only and the baseline's
    penalty is the colour ridge baseline itself, so 'none' in the results is what it says."""
    from her2st import workshop_data

    data = workshop_data()
    from models.evaluate import N_GENES, TILE_PX, TILE_UM
    from models.folds import split
    from models.workshop.baselines import RidgeColour, colour_statistics

    sections = data.load_her2st(TILE_PX, TILE_UM)
    train, test = split(sections, "C2")
    genes = data.gene_panel(train, N_GENES, test.measured.genes)
    baseline = RidgeColour().fit(train, genes)

    def features(s: object) -> SectionFeatures:
        xy = s.measured.xy_fullres_px * s.mpp  # type: ignore[attr-defined]
        feats = colour_statistics(s.tiles)[:, None, :]  # type: ignore[attr-defined]
        return SectionFeatures(s.name, feats, xy, s.targets(genes))  # type: ignore[attr-defined]

    head = fit_head([features(s) for s in train], Setting("none", alpha=baseline.alpha_))
    held = features(test)
    np.testing.assert_allclose(
        head.predict(held.design(head.setting)), baseline.predict(test.tiles), atol=1e-5
    )


def test_extracting_features_writes_the_fold_cache_run_fold_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One training per fold serves both: ``extract`` writes the fold cache where it is missing,
    the same as ``python -m models.folds`` writes (real HER2ST, fold C3, the colour ridge), and
    leaves an existing one alone."""
    import models.feature_context as fc
    import models.folds as folds
    from her2st import workshop_data
    from models.evaluate import TILE_PX, TILE_UM

    data = workshop_data()
    sections = data.load_her2st(TILE_PX, TILE_UM)
    root = tmp_path
    monkeypatch.setattr(fc, "FEATURE_CACHE", root / "features")
    monkeypatch.setattr(folds, "FOLD_CACHE", root / "by_extract")
    fc.extract("ridge_colour", "C3", sections)
    by_extract = np.load(folds.fold_path("ridge_colour", "C3"))
    monkeypatch.setattr(folds, "FOLD_CACHE", root / "by_folds")
    by_folds = np.load(folds.run_fold("ridge_colour", "C3", sections))
    for key in ("genes", "pred", "pred_lowres", "tile_px"):
        np.testing.assert_array_equal(by_extract[key], by_folds[key], err_msg=key)
    # an existing fold cache is never rewritten by an extraction
    before = folds.fold_path("ridge_colour", "C3").stat().st_mtime_ns
    fc.extract("ridge_colour", "C3", sections)
    assert folds.fold_path("ridge_colour", "C3").stat().st_mtime_ns == before
    assert fc.reproduction("ridge_colour", "C3") == 0.0
