"""The ``virtual-st`` command line: info, predict (with resume after a kill), models, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.cli import main
from napari_virtual_st.registry import default_model
from napari_virtual_st.store import PredictionStore
from synthetic_models import write_mean_colour_model


def test_info_prints_format_levels_and_resolution_of_a_real_ndpi(
    ndpi_dapi: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(ndpi_dapi)]) == 0
    out = capsys.readouterr().out
    assert "hamamatsu" in out
    assert "levels:      7" in out
    assert "0.2282 µm/px (metadata)" in out
    assert "level 6: 62 × 76 px, downsample 64" in out


def test_info_json_describes_a_real_svs(
    cmu_small_svs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(cmu_small_svs), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "aperio"
    assert info["dimensions"] == [2220, 2967]
    assert info["mpp"] == pytest.approx(0.499)
    assert info["mpp_source"] == "metadata"


def test_info_of_a_png_without_resolution_says_it_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    path = tmp_path / "synthetic.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(path)
    assert main(["info", str(path)]) == 0
    assert "unknown (give --mpp)" in capsys.readouterr().out


def test_predict_writes_a_complete_store_on_a_real_svs(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmu.vst.zarr"
    code = main(
        [
            "predict",
            str(cmu_small_svs),
            "--model",
            str(synthetic_model),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    store = PredictionStore.open(out)
    assert store.is_complete
    assert store.attrs["status"] == "complete"
    assert store.attrs["slide"]["name"] == cmu_small_svs.name
    assert store.attrs["grid"]["kind"] == "visium"
    assert "written to" in capsys.readouterr().out


def test_predict_on_a_real_ndpi_with_the_st_grid(
    ndpi_dapi: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ndpi.vst.zarr"
    code = main(
        [
            "predict",
            str(ndpi_dapi),
            "--allow-non-brightfield",  # (a fluorescence scan: any slide format will do here)
            "--model",
            str(synthetic_model),
            "--grid",
            "st",
            "--min-tissue",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    store = PredictionStore.open(out)
    assert store.is_complete
    # 0.905 × 1.110 mm at 200 µm pitch: 4 columns × 5 rows of legacy-ST spots
    assert store.n_spots == 20


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--model", "no-such-model"], "neither an ONNX file nor a bundled model"),
        (["--model", "{model}", "--providers", "cuda"], "not available here"),
        (["--model", "{model}", "--mpp", "-1"], "must be a positive number"),
    ],
)
def test_predict_user_errors_print_one_line_and_exit_nonzero(
    argv_tail: list[str],
    message: str,
    cmu_small_svs: Path,
    synthetic_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["predict", str(cmu_small_svs), "--out", str(tmp_path / "x.vst.zarr")]
    argv += [a.replace("{model}", str(synthetic_model)) for a in argv_tail]
    with pytest.raises(SystemExit) if "-1" in argv_tail else _no_raise():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_predict_on_a_corrupt_slide_is_a_clear_error(
    tmp_path: Path, synthetic_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(b"II*\x00" + os.urandom(4000))
    assert main(["predict", str(bad), "--model", str(synthetic_model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("virtual-st: error:")
    assert err.count("\n") == 1


def test_predict_without_resolution_asks_for_mpp(
    tmp_path: Path, synthetic_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    path = tmp_path / "synthetic.png"
    Image.fromarray(np.full((400, 600, 3), 200, np.uint8)).save(path)
    assert main(["predict", str(path), "--model", str(synthetic_model), "--quiet"]) == 2
    assert "--mpp" in capsys.readouterr().err


def test_predict_refuses_to_resume_a_store_of_another_slide(
    cmu_small_svs: Path,
    ndpi_dapi: Path,
    synthetic_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "shared.vst.zarr"
    assert (
        main(
            [
                "predict",
                str(cmu_small_svs),
                "--model",
                str(synthetic_model),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    before = PredictionStore.open(out).expression()
    assert (
        main(
            [
                "predict",
                str(ndpi_dapi),
                "--allow-non-brightfield",  # (a fluorescence scan: any slide format will do here)
                "--model",
                str(synthetic_model),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "different slide" in capsys.readouterr().err
    np.testing.assert_array_equal(PredictionStore.open(out).expression(), before)
    assert (
        main(
            [
                "predict",
                str(ndpi_dapi),
                "--allow-non-brightfield",  # (a fluorescence scan: any slide format will do here)
                "--model",
                str(synthetic_model),
                "--out",
                str(out),
                "--quiet",
                "--overwrite",
            ]
        )
        == 0
    )
    assert PredictionStore.open(out).attrs["slide"]["name"] == ndpi_dapi.name


def test_models_lists_nothing_bundled_without_failing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list)
    for row in rows:
        assert "problem" not in row, row


def test_a_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    """SIGKILL mid-run, rerun the same command: finished chunks are kept, result is bit-identical."""
    model = write_mean_colour_model(tmp_path / "synthetic.onnx", tile_px=16, tile_um=50.0)
    common = [
        "predict",
        str(cmu_small_svs),
        "--model",
        str(model),
        "--grid",
        "dense",
        "--min-tissue",
        "0",
        "--batch-size",
        "2",
        "--quiet",
    ]
    reference = tmp_path / "reference.vst.zarr"
    assert main([*common, "--out", str(reference)]) == 0

    killed = tmp_path / "killed.vst.zarr"
    cmd = [sys.executable, "-m", "napari_virtual_st.cli", *common, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = PredictionStore.open(reference).n_spots
    deadline = time.monotonic() + 60
    done = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if (killed / "done").exists():
                done = int(PredictionStore.open(killed).done.sum())
                if done >= 60:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = PredictionStore.open(killed)
    assert 0 < partial.done.sum() < total
    assert partial.attrs["status"] == "running"

    assert main([*common, "--out", str(killed)]) == 0
    resumed = PredictionStore.open(killed)
    assert resumed.is_complete
    np.testing.assert_array_equal(
        resumed.expression(), PredictionStore.open(reference).expression()
    )


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_demo_predicts_the_bundled_slide_and_writes_a_heatmap_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    store = PredictionStore.open(tmp_path / "CMU-1-Small-Region.vst.zarr")
    assert store.is_complete and store.n_spots > 20
    assert store.attrs["model"]["family"] == default_model().info.family
    pngs = list(tmp_path.glob("CMU-1-Small-Region_*.png"))
    assert len(pngs) == 1 and str(pngs[0]) in out
    # the breast-cancer model on a slide that is not breast tissue is said, not left implied
    assert "note:    The sample slide is not HER2+ breast cancer" in out
    picture = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert picture.shape[0] > 500
    # viridis-coloured spots were drawn over the H&E thumbnail
    assert (np.abs(picture.astype(int) - [253, 231, 37]).sum(axis=-1) < 60).any() or (
        np.abs(picture.astype(int) - [68, 1, 84]).sum(axis=-1) < 60
    ).any()


def test_demo_with_a_gene_the_model_does_not_predict_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path), "--gene", "NOT_A_GENE", "--quiet"]) == 2
    assert "'NOT_A_GENE' is not predicted by this model" in capsys.readouterr().err


def test_models_marks_the_one_default_with_its_reason_card_and_terms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from napari_virtual_st.registry import (
        BUNDLED_MODEL_TERMS,
        DEFAULT_MODEL_NAME,
        DEFAULT_MODEL_REASON,
    )

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    defaults = [row for row in rows if row["default"] is True]
    assert [row["name"] for row in defaults] == [DEFAULT_MODEL_NAME]
    assert defaults[0]["default_reason"] == DEFAULT_MODEL_REASON
    for row in rows:
        assert row["terms"] == BUNDLED_MODEL_TERMS
        card = Path(row["card"])
        assert card.is_file(), row["name"]
        assert card.read_text(encoding="utf-8").startswith("# Model card"), card
        assert ("default_reason" in row) == row["default"]
    # what --precision auto runs for each, from its recorded int8 gate (nothing quantised)
    auto = {row["name"]: row["precision_auto"] for row in rows}
    assert auto["stem_her2st"]["runs"] == "int8" and "passed" in auto["stem_her2st"]["reason"]
    assert auto["nsl_lite0_multilayer_her2st"]["runs"] == "fp32"
    assert (
        "passed its accuracy gate, but int8 ran" in auto["nsl_lite0_multilayer_her2st"]["reason"]
    )
    # the default standardises its features per slide: int8 calibration cannot, so fp32
    assert auto[DEFAULT_MODEL_NAME]["runs"] == "fp32"
    assert "standardises its features per slide" in auto[DEFAULT_MODEL_NAME]["reason"]
    assert "failed its accuracy gate" in auto["nsl_lite0_her2st"]["reason"]
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "--precision auto: fp32: int8 failed its accuracy gate" in text
    assert "--precision auto: fp32: int8 passed its accuracy gate, but int8 ran" in text
    assert f"{DEFAULT_MODEL_NAME} (default):" in text
    assert text.count("(default)") == 1
    assert DEFAULT_MODEL_REASON in text and BUNDLED_MODEL_TERMS in text
    assert "model card: " in text


def test_predict_without_model_runs_the_default_bundled_model(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.registry import DEFAULT_MODEL_NAME

    out = tmp_path / "default.vst.zarr"
    assert main(["predict", str(cmu_small_svs), "--out", str(out), "--quiet"]) == 0
    assert PredictionStore.open(out).attrs["model"]["file"] == f"{DEFAULT_MODEL_NAME}.onnx"


def test_without_bundled_models_a_users_own_model_does_everything(
    cmu_small_svs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A package built without the HER2ST models: listing says so, a run without --model
    says what to pass, and the user's own contract model predicts, exports and runs the demo."""
    from napari_virtual_st import registry

    empty = tmp_path / "no_models"
    empty.mkdir()
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: empty)
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["models"]) == 0
    assert "No models are bundled" in capsys.readouterr().out

    out = tmp_path / "own.vst.zarr"
    assert main(["predict", str(cmu_small_svs), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "virtual-st: error: no usable model is bundled with this installation; "
        "pass an ONNX model with --model FILE.onnx"
    )
    assert not out.exists()

    model = write_mean_colour_model(tmp_path / "own.onnx", tile_px=16, tile_um=110.0)
    args = ["predict", str(cmu_small_svs), "--model", str(model), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert PredictionStore.open(out).attrs["model"]["file"] == "own.onnx"
    h5ad = tmp_path / "own.h5ad"
    assert main(["export", str(out), "--h5ad", str(h5ad), "--quiet"]) == 0
    assert h5ad.is_file()
    demo = tmp_path / "demo"
    assert main(["demo", "--model", str(model), "--out", str(demo), "--quiet"]) == 0
    assert list(demo.glob("*.png"))


def test_models_says_when_auto_precision_would_be_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose precision cannot be chosen is still listed, with the refusal a run
    would print, and never claims to run in fp32."""
    from napari_virtual_st import precision
    from napari_virtual_st.errors import ModelError

    def refuse(path: Path, requested: str = "fp32", **_: object) -> None:
        raise ModelError(f"{Path(path).name}: its int8 variant is damaged")

    monkeypatch.setattr(precision, "choose_model", refuse)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(row["precision_auto"]["runs"] is None for row in rows)
    assert rows[0]["precision_auto"]["reason"].startswith("refused: ")
    assert "its int8 variant is damaged" in rows[0]["precision_auto"]["reason"]


def test_predict_says_a_model_standardises_per_slide_and_on_which_spots(
    cmu_small_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "s.onnx", with_slide_statistics=True)
    out = tmp_path / "s.vst.zarr"
    assert (
        main(["predict", str(cmu_small_svs), "--model", str(model), "--out", str(out), "--quiet"])
        == 0
    )
    err = capsys.readouterr().err
    assert "values per-tile; features standardised per slide" in err
    assert "features standardised by the slide's statistics: 16 of the" in err
    assert main(["predict", str(cmu_small_svs), "--model", str(model), "--out",
                 str(tmp_path / "int8.vst.zarr"), "--precision", "int8"]) == 2  # fmt: skip
    assert "int8 calibration does not measure slide statistics" in capsys.readouterr().err
