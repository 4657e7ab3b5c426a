"""Cohorts on dask.distributed: one store per slide, failures isolated, reruns skip or resume.

The cluster tests run a ``LocalCluster`` with thread workers (``processes=False``; quick to
start, and monkeypatches reach the tasks); one CLI test runs real worker processes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from napari_virtual_st import cohort
from napari_virtual_st.cli import main
from napari_virtual_st.cohort import (
    SUMMARY_COLUMNS,
    SUMMARY_NAME,
    CohortProgress,
    CohortSlide,
    CohortSpec,
    SlideResult,
    find_slides,
    read_slide_list,
    read_summary,
    run_cohort,
    store_names,
    write_summary,
)
from napari_virtual_st.errors import ModelError, ParameterError
from napari_virtual_st.pipeline import build_grid, predict_slide
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.run import engine as run_engine
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore
from synthetic_models import write_mean_colour_model

PNG_MPP = 2.0


def write_tissue_png(path: Path, seed: int = 0) -> Path:
    """A synthetic 'slide' without resolution: a pink, noisy ellipse of tissue on white."""
    rng = np.random.default_rng(seed)
    h, w = 500, 700
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (w * 0.4)) ** 2 + ((yy - h / 2) / (h * 0.4)) ** 2 < 1
    image = np.full((h, w, 3), 245, np.int16)
    image[inside] = (200, 110, 170)
    image += rng.integers(-25, 26, image.shape, dtype=np.int16)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_mean_colour_model(tmp_path / "synthetic_mean_colour.onnx")


@pytest.fixture
def corrupt_svs(cmu_small_svs: Path, tmp_path: Path) -> Path:
    """The first 40 kB of a real SVS: a truncated copy, as an interrupted download leaves."""
    path = tmp_path / "truncated.svs"
    path.write_bytes(cmu_small_svs.read_bytes()[:40_000])
    return path


@pytest.fixture
def png_slide(tmp_path: Path) -> Path:
    return write_tissue_png(tmp_path / "synthetic_tissue.png")


@pytest.fixture
def local_scheduler() -> Iterator[str]:
    """A running thread-worker cluster, reached by its address like a real one."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def reference_expression(
    slide_path: Path, model: Path, tmp_path: Path, mpp: float | None = None
) -> Any:
    """The expression ``predict_slide`` writes for this slide in one uninterrupted run."""
    with Slide(slide_path, mpp=mpp) as slide:
        predictor = Predictor(model)
        grid = build_grid(slide, "visium", tile_um=predictor.info.tile_um)
        return predict_slide(
            slide, predictor, grid, tmp_path / f"ref-{slide_path.stem}.vst.zarr"
        ).expression()


def by_name(results: list[SlideResult]) -> dict[str, SlideResult]:
    return {Path(r.slide).name: r for r in results}


# -- the cohort runs ---------------------------------------------------------------------------
def test_a_corrupt_slide_is_reported_the_others_finish_and_a_rerun_skips_them(
    cmu_small_svs: Path,
    ndpi_dapi: Path,
    png_slide: Path,
    corrupt_svs: Path,
    model: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    slides = [
        CohortSlide(cmu_small_svs),
        CohortSlide(ndpi_dapi),
        CohortSlide(png_slide, mpp=PNG_MPP),
        CohortSlide(corrupt_svs),
    ]
    reports: list[CohortProgress] = []
    results = run_cohort(
        slides,
        CohortSpec(
            model,
            out,
            workers=2,
            processes=False,
            retries=2,
            allow_non_brightfield=True,  # (the NDPI is a fluorescence scan: any format will do)
        ),
        progress=reports.append,
    )

    assert [r.slide for r in results] == [str(s.path) for s in slides]
    got = by_name(results)
    for name in (cmu_small_svs.name, ndpi_dapi.name, png_slide.name):
        result = got[name]
        assert result.status == "done", result.error
        assert result.spots > 0
        assert result.spots_new == result.spots
        assert result.tiles_per_s > 0
        assert result.provider == "CPUExecutionProvider"
        store = PredictionStore.open(result.store)
        assert store.is_complete
        assert store.n_spots == result.spots
    assert Path(got[png_slide.name].store).name == "synthetic_tissue.vst.zarr"
    np.testing.assert_array_equal(
        PredictionStore.open(got[ndpi_dapi.name].store).expression(),
        reference_expression(ndpi_dapi, model, tmp_path),
    )
    bad = got[corrupt_svs.name]
    assert bad.status == "failed"
    assert "truncated.svs cannot be opened" in bad.error
    assert bad.attempts == 1  # a user error is the slide's answer: not retried
    assert not Path(bad.store).exists()

    final = reports[-1]
    assert (final.slides_done, final.slides_total, final.failed) == (4, 4, 1)
    assert final.spots_done == final.spots_total == sum(r.spots for r in results)
    assert [r.slides_done for r in reports if r.result is not None] == [1, 2, 3, 4]

    summary = out / SUMMARY_NAME
    assert summary.read_text().splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    assert read_summary(summary) == [
        replace(r, seconds=round(r.seconds, 2), tiles_per_s=round(r.tiles_per_s, 1))
        for r in results
    ]

    stamps = {
        name: os.stat(Path(r.store) / "expression" / "zarr.json").st_mtime_ns
        for name, r in got.items()
        if r.status == "done"
    }
    rerun = by_name(
        run_cohort(
            slides, CohortSpec(model, out, workers=2, processes=False, allow_non_brightfield=True)
        )
    )
    for name, stamp in stamps.items():
        assert rerun[name].status == "skipped"
        assert rerun[name].spots == got[name].spots
        assert rerun[name].spots_new == 0
        assert os.stat(Path(rerun[name].store) / "expression" / "zarr.json").st_mtime_ns == stamp
    assert rerun[corrupt_svs.name].status == "failed"
    assert {r.status for r in read_summary(summary)} == {"skipped", "failed"}


def test_cancel_keeps_finished_batches_and_a_rerun_resumes_bit_identically(
    ndpi_dapi: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cohort, "_CANCEL_POLL_S", 0.0)
    two_batches_done = threading.Event()
    batches = []
    original = Predictor.predict

    def slow_predict(self: Predictor, tiles: Any, spot_index: Any = None) -> Any:
        batches.append(len(tiles))
        if len(batches) >= 2:
            two_batches_done.set()
        time.sleep(0.05)
        return original(self, tiles, spot_index)

    monkeypatch.setattr(Predictor, "predict", slow_predict)
    out = tmp_path / "out"
    (first,) = run_cohort(
        [ndpi_dapi],
        CohortSpec(
            model, out, workers=1, processes=False, batch_size=4, allow_non_brightfield=True
        ),
        should_cancel=two_batches_done.is_set,
    )
    assert first.status == "cancelled"
    assert 2 * 4 <= first.spots_new < first.spots
    store = PredictionStore.open(first.store)
    assert store.done.sum() == first.spots_new
    assert store.attrs["status"] == "cancelled"

    monkeypatch.setattr(Predictor, "predict", original)
    (second,) = run_cohort(
        [ndpi_dapi],
        CohortSpec(
            model, out, workers=1, processes=False, batch_size=32, allow_non_brightfield=True
        ),
    )
    assert second.status == "resumed"
    assert second.spots_new == second.spots - first.spots_new
    store = PredictionStore.open(second.store)
    assert store.chunk_spots == 4  # the stored chunking is kept
    np.testing.assert_array_equal(
        store.expression(), reference_expression(ndpi_dapi, model, tmp_path)
    )


def test_unexpected_errors_are_retried_on_a_scheduler_given_by_address(
    ndpi_dapi: Path,
    png_slide: Path,
    model: Path,
    tmp_path: Path,
    local_scheduler: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: dict[str, int] = {}
    original = run_engine.predict_slide

    def flaky(slide: Slide, *args: Any, **kwargs: Any) -> Any:
        calls[slide.path.name] = calls.get(slide.path.name, 0) + 1
        if slide.path.name == png_slide.name:
            raise RuntimeError("disk quota exceeded\nsecond line")
        if calls[slide.path.name] == 1:
            raise MemoryError("first attempt")
        return original(slide, *args, **kwargs)

    monkeypatch.setattr(run_engine, "predict_slide", flaky)
    results = by_name(
        run_cohort(
            [ndpi_dapi, png_slide],
            CohortSpec(
                model,
                tmp_path / "out",
                scheduler=local_scheduler,
                mpp=PNG_MPP,  # the PNG records no resolution
                retries=1,
                allow_non_brightfield=True,
            ),
        )
    )
    recovered = results[ndpi_dapi.name]
    assert (recovered.status, recovered.attempts) == ("done", 2)
    assert PredictionStore.open(recovered.store).is_complete
    failed = results[png_slide.name]
    assert (failed.status, failed.attempts) == ("failed", 2)
    assert failed.error == "unexpected RuntimeError: disk quota exceeded second line"
    assert calls == {ndpi_dapi.name: 2, png_slide.name: 2}


def test_cli_cohort_of_a_folder_on_worker_processes_reports_the_corrupt_slide_and_exits_1(
    cmu_small_svs: Path,
    ndpi_dapi: Path,
    corrupt_svs: Path,
    model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for path in (cmu_small_svs, ndpi_dapi, corrupt_svs):
        (folder / path.name).symlink_to(path)
    (folder / "notes.txt").write_text("not a slide")
    out = tmp_path / "out"
    code = main(
        [
            "cohort",
            str(folder),
            "--model",
            str(model),
            "--out",
            str(out),
            "--workers",
            "2",
            "--allow-non-brightfield",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "3 slides in" in captured.out
    assert "2 done, 1 failed" in captured.out
    assert f"virtual-st: failed: {folder / corrupt_svs.name}: truncated.svs" in captured.err
    rows = read_summary(out / SUMMARY_NAME)
    assert [(Path(r.slide).name, r.status) for r in rows] == [
        (cmu_small_svs.name, "done"),
        (ndpi_dapi.name, "done"),
        (corrupt_svs.name, "failed"),
    ]
    assert all(r.worker.startswith("tcp://") for r in rows)  # real worker processes


# -- the command line without a cluster ------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give either slide files/folders or --list"),
        (["a.svs", "--list", "slides.csv"], "give either slide files/folders or --list"),
        (["--list", "missing.csv"], "cannot read the slide list"),
        (["a.svs", "--retries", "-1"], "--retries must be 0 or more"),
    ],
)
def test_cli_cohort_argument_errors_exit_2(
    extra: list[str], message: str, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cohort", *extra, "--model", str(model), "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_cohort_with_an_unreachable_scheduler_exits_2(
    model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cohort, "_CONNECT_TIMEOUT_S", 0.5)
    code = main(
        [
            "cohort",
            str(tmp_path / "a.svs"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "out"),
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--quiet",
        ]
    )
    assert code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_an_unavailable_provider_is_refused_before_a_local_cluster_starts(
    model: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelError, match="execution provider 'cuda' is not available"):
        run_cohort([tmp_path / "a.svs"], CohortSpec(model, tmp_path / "out", providers=["cuda"]))


def test_a_broken_model_is_refused_before_any_cluster_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        run_cohort([tmp_path / "a.svs"], CohortSpec(bad, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- slide lists, names and the summary --------------------------------------------------------------
def test_a_slide_list_resolves_paths_beside_it_and_reads_optional_mpp(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "slides.csv"
    listing.write_text("Slide,MPP\nscans/a.svs,\n/abs/b.png,0.25\n\n , \n")
    assert read_slide_list(listing) == [
        CohortSlide(tmp_path / "lists" / "scans" / "a.svs"),
        CohortSlide(Path("/abs/b.png"), 0.25),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path\na.svs\n", "needs a header line with a 'slide' column"),
        ("slide,mpp\na.svs,fast\n", "line 2: mpp must be a positive number; got 'fast'"),
        ("slide,mpp\na.svs,-1\n", "line 2: mpp must be a positive number"),
        ("slide\n", "lists no slides"),
    ],
)
def test_a_bad_slide_list_is_refused_naming_the_problem(
    text: str, message: str, tmp_path: Path
) -> None:
    listing = tmp_path / "slides.csv"
    listing.write_text(text)
    with pytest.raises(ParameterError, match=message):
        read_slide_list(listing)


def test_a_folder_contributes_its_slide_files_sorted(tmp_path: Path) -> None:
    for name in ("b.svs", "a.ndpi", "c.ome.tiff", "notes.txt", "d.PNG"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "old.vst.zarr").mkdir()
    assert [s.path.name for s in find_slides([tmp_path])] == [
        "a.ndpi",
        "b.svs",
        "c.ome.tiff",
        "d.PNG",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ParameterError, match="holds no slide files"):
        find_slides([empty])


def test_store_names_are_unique_and_stable_for_duplicate_stems(tmp_path: Path) -> None:
    slides = [
        CohortSlide(tmp_path / "x" / "s1.svs"),
        CohortSlide(tmp_path / "y" / "s1.svs"),
        CohortSlide(tmp_path / "y" / "s2.ome.tif"),
    ]
    names = store_names(slides)
    assert names[0] == "s1.vst.zarr"
    assert names[1].startswith("s1-") and names[1].endswith(".vst.zarr")
    assert names[2] == "s2.vst.zarr"
    assert len(set(names)) == 3
    assert store_names(slides) == names


def test_the_summary_is_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / SUMMARY_NAME
    rows = [
        SlideResult(slide="/a.svs", store="/o/a.vst.zarr", status="done", spots=3, seconds=1.5)
    ]
    write_summary(rows, path)
    before = path.read_text()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cohort.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_summary([*rows, *rows], path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_NAME]


def test_slides_of_a_cohort_each_get_their_own_slide_statistics_as_alone(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.run import RunSpec, run

    standardising = write_mean_colour_model(tmp_path / "s.onnx", with_slide_statistics=True)
    png = write_tissue_png(tmp_path / "synthetic_tissue.png")
    slides = [CohortSlide(cmu_small_svs), CohortSlide(png, mpp=PNG_MPP)]
    results = run_cohort(
        slides, CohortSpec(standardising, tmp_path / "out", workers=2, processes=False)
    )
    assert all(r.status == "done" for r in results), results
    stores = [PredictionStore.open(r.store) for r in results]
    alone = [
        run(RunSpec(s.path, standardising, tmp_path / f"alone{i}.vst.zarr", mpp=s.mpp))
        for i, s in enumerate(slides)
    ]
    assert stores[0].slide_statistics != stores[1].slide_statistics  # (two different slides)
    for store, reference in zip(stores, alone, strict=True):  # threads side by side
        assert store.slide_statistics == reference.slide_statistics
        np.testing.assert_allclose(store.expression(), reference.expression(), rtol=1e-6)
