"""Predicted vs measured: joining spots and genes, per-gene scores, and the evaluate command."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.cli import main
from napari_virtual_st.compare import ComparisonError, compare
from napari_virtual_st.measured import read_legacy_st
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.registry import bundled_models
from napari_virtual_st.store import PredictionStore


def _measured_args(a1) -> list[str]:
    """The CLI's measured-data arguments for HER2ST A1 (legacy ST counts + spot file)."""
    return [
        *("--measured", str(a1.counts), "--spots", str(a1.spots)),
        *("--pixel-scale", repr(a1.pixel_scale)),
    ]


@pytest.fixture(scope="module")
def a1_prediction(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PredictionStore, object, dict]:
    """The bundled NSL model run by the CLI at the measured spots of HER2ST A1 (real data)."""
    from models.workshop import data

    if not data.data_available():
        pytest.skip(
            "HER2ST data not available: ../shared/data/her2st_subset is absent beside the checkout"
        )
    a1 = next(s for s in data.her2st_sections() if s.name == "A1")
    measured = read_legacy_st(a1.counts, a1.spots, a1.image, pixel_scale=a1.pixel_scale)
    mpp = data.mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    image = data._cleaned_copy(a1.image, a1.mask_boxes, a1.black_background)
    model = next(m for m in bundled_models() if m.info is not None and m.info.family == "nsl")
    out = tmp_path_factory.mktemp("a1") / "a1.vst.zarr"
    argv = [
        "predict",
        str(image),
        "--model",
        str(model.path),
        "--mpp",
        repr(mpp),
        "--out",
        str(out),
        "--quiet",
    ]
    argv += _measured_args(a1)
    assert main(argv) == 0
    recorded = Predictor(model.path).info.metadata["metrics"]
    return PredictionStore.open(out), measured, {"a1": a1, "recorded": recorded}


def test_the_cli_evaluation_of_her2st_a1_agrees_with_the_workshop_harness(
    a1_prediction: tuple,
) -> None:
    store, measured, extra = a1_prediction
    result = compare(store, measured)
    assert result.spot_match == "id"
    assert result.n_spots == 346
    assert len(result.genes) == 250 and not result.missing_genes
    pearson = np.nan_to_num(
        [g.pearson for g in result.genes]
    )  # the harness counts constant genes as 0
    # a model declaring spot context (vst.context) records its contextual scores, and its
    # per-tile ones under "per_tile"; the store reads contextual values for such a model
    recorded = extra["recorded"]
    assert (store.model.context is not None) == ("per_tile" in recorded)
    assert result.values.startswith("contextual") == (store.model.context is not None)
    expected = recorded
    assert pearson.mean() == pytest.approx(expected["raw"]["PCC-ALL"], abs=1e-3)
    assert all(-1 <= g.ssim <= 1 for g in result.genes if np.isfinite(g.ssim))


def test_evaluate_command_prints_the_summary_and_writes_a_sorted_csv(
    a1_prediction: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, extra = a1_prediction
    a1 = extra["a1"]
    out = tmp_path / "genes.csv"
    argv = [
        "evaluate",
        str(store.path),
        *_measured_args(a1),
        "--csv",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "346 spots matched by id, 250 genes compared" in printed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 250
    values = [float(r["pearson"]) for r in rows]
    assert values == sorted(values, reverse=True)


def test_partly_shared_genes_are_reported_and_none_shared_is_a_clear_error(
    a1_prediction: tuple,
) -> None:
    store, measured, _ = a1_prediction
    renamed = tuple(g if i % 2 else f"{g}_OTHER" for i, g in enumerate(measured.genes))
    partial = compare(store, replace(measured, genes=renamed))
    assert 0 < len(partial.missing_genes) < 250
    assert len(partial.genes) + len(partial.missing_genes) == 250
    with pytest.raises(ComparisonError, match="none of the model's 250 genes"):
        compare(
            store,
            replace(measured, genes=tuple(f"ENSG{i:011d}" for i in range(len(measured.genes)))),
        )


def test_spots_are_matched_by_nearest_centre_when_ids_differ(a1_prediction: tuple) -> None:
    store, measured, _ = a1_prediction
    anonymous = replace(measured, spot_ids=tuple(f"s{i}" for i in range(measured.n_spots)))
    result = compare(store, anonymous)
    assert result.spot_match == "nearest" and result.n_spots == 346
    far = replace(anonymous, xy_fullres_px=anonymous.xy_fullres_px + 10_000)
    with pytest.raises(ComparisonError, match="no predicted spot lies on a measured spot"):
        compare(store, far)


def test_evaluate_uses_the_alignment_saved_with_the_store_unless_given_one(
    a1_prediction: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import zarr

    from napari_virtual_st.align import Transform, from_scale

    store, _, extra = a1_prediction
    a1 = extra["a1"]
    # a copy whose spots carry other names: it is joined to the measured spots by position,
    # so the alignment decides which spots meet
    copy = tmp_path / "renamed.vst.zarr"
    shutil.copytree(store.path, copy)
    group = zarr.open_group(str(copy), mode="r+", zarr_format=3)
    group.attrs["spot_ids"] = [f"s{i}" for i in range(store.n_spots)]
    argv = [
        "evaluate",
        str(copy),
        *_measured_args(a1),
    ]
    away = Transform(np.array([[1.0, 0, 10_000.0], [0, 1.0, 0], [0, 0, 1.0]]))
    PredictionStore.open(copy).save_transform(away)
    assert main(argv) != 0  # the saved alignment puts every measured spot off the prediction
    err = capsys.readouterr().err
    assert "the transform saved with the store (renamed.vst.zarr/transform.json)" in err
    assert "no predicted spot lies on a measured spot" in err

    PredictionStore.open(copy).save_transform(from_scale(1.0, (2.0, -1.5)))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "transform saved with the store" in captured.err
    assert "346 spots matched by nearest, 250 genes compared" in captured.out

    given = tmp_path / "identity.json"
    given.write_text(from_scale(1.0).to_json())
    PredictionStore.open(copy).save_transform(away)
    assert main([*argv, "--transform", str(given)]) == 0  # an explicit one wins
    captured = capsys.readouterr()
    assert "transform saved with the store" not in captured.err
    assert "346 spots matched by nearest" in captured.out


def test_predict_at_measured_spots_keeps_the_given_alignment_with_the_store(
    a1_prediction: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.workshop import data

    store, measured, extra = a1_prediction
    a1 = extra["a1"]
    from napari_virtual_st.align import from_scale

    shifted = from_scale(1.0, (2.0, -1.5))
    given = tmp_path / "shift.json"
    given.write_text(shifted.to_json())
    out = tmp_path / "aligned.vst.zarr"
    image = data._cleaned_copy(a1.image, a1.mask_boxes, a1.black_background)
    measured_args = _measured_args(a1)
    model = next(m for m in bundled_models() if m.info is not None and m.info.family == "nsl")
    mpp = data.mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    argv = ["predict", str(image), "--model", str(model.path), "--mpp", repr(mpp)]
    argv += ["--out", str(out), "--quiet", *measured_args]
    assert main([*argv, "--transform", str(given)]) == 0
    saved = PredictionStore.open(out).load_transform()
    assert saved is not None
    np.testing.assert_allclose(saved.matrix, shifted.matrix)
    # the spots were placed through it: each lies at its measured centre moved by the shift
    np.testing.assert_allclose(
        PredictionStore.open(out).xy_level0_px,
        store.xy_level0_px + np.array([2.0, -1.5]),
        atol=1e-6,
    )
    capsys.readouterr()
    # and `evaluate` without --transform uses it
    assert main(["evaluate", str(out), *measured_args]) == 0
    captured = capsys.readouterr()
    assert "the transform saved with the store (aligned.vst.zarr/transform.json)" in captured.err
    assert "346 spots matched by id" in captured.out
