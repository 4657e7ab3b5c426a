"""predict_slide: every spot gets the model's value for its tile; progress, cancel, resume,
failures and memory behave as a user running a long slide relies on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from napari_virtual_st.errors import (
    CancelledError,
    MissingResolutionError,
    ParameterError,
    SlideError,
    StoreError,
    StoreMismatchError,
)
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.pipeline import Progress, build_grid, predict_slide
from napari_virtual_st.predictor import Prediction, Predictor
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.tissue import TissueMask
from synthetic_models import expected_mean_colour, expected_noise, write_mean_colour_model

N_GENES = 5
TILE_PX, TILE_UM = 32, 55.0
PNG_MPP = 1.0
BATCH = 8


def write_png(path: Path, seed: int, size: tuple[int, int] = (600, 400)) -> Path:
    """A synthetic slide: blocks of random colour with pixel noise, so tile means differ."""
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(40, 230, (height // 40 + 1, width // 40 + 1, 3))
    image = np.repeat(np.repeat(blocks, 40, axis=0), 40, axis=1)[:height, :width]
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def png_path(tmp_path: Path) -> Path:
    return write_png(tmp_path / "synthetic_slide.png", seed=1)


@pytest.fixture
def slide(png_path: Path) -> Iterator[Slide]:
    with Slide(png_path, mpp=PNG_MPP) as opened:
        yield opened


@pytest.fixture
def grid() -> SpotGrid:
    """11 × 7 = 77 spots 55 µm apart over the synthetic slide (10 chunks of 8).

    Explicit centres, so these tests do not depend on how the grid builders lay lattices.
    """
    cols, rows = np.meshgrid(np.arange(11), np.arange(7))
    xy_um = np.stack([27.5 + 55.0 * cols.ravel(), 27.5 + 55.0 * rows.ravel()], axis=1)
    return SpotGrid.from_coordinates(
        xy_um / PNG_MPP,
        mpp=PNG_MPP,
        spot_diameter_um=TILE_UM,
        lattice_rc=np.stack([rows.ravel(), cols.ravel()], axis=1),
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A synthetic model with per-spot noise and a variance output."""
    return write_mean_colour_model(tmp_path / "noisy.onnx", with_noise=True, with_variance=True)


def tiles_of(slide: Slide, grid: SpotGrid) -> np.ndarray:
    return np.stack([slide.read_tile(tuple(xy), TILE_PX, TILE_UM) for xy in grid.xy_level0_px])


def expected_for(slide: Slide, grid: SpotGrid, *, noise: bool) -> np.ndarray:
    """The synthetic model's output for every spot, computed in NumPy from Slide.read_tile."""
    values = expected_mean_colour(tiles_of(slide, grid), N_GENES)
    return values + expected_noise(np.arange(len(grid))) if noise else values


class PredictSpy:
    """Replaces ``Predictor.predict``, recording the spots of each call (optionally slowly)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> None:
        self.calls: list[np.ndarray] = []
        self.delay_s = delay_s
        self.started = 0
        self.finished = 0
        original = Predictor.predict
        spy = self

        def predict(self: Predictor, tiles: Any, spot_index: Any = None) -> Prediction:
            spy.started += 1
            spy.calls.append(np.asarray(spot_index))
            time.sleep(spy.delay_s)
            result = original(self, tiles, spot_index)
            spy.finished += 1
            return result

        monkeypatch.setattr(Predictor, "predict", predict)

    @property
    def spots(self) -> list[int]:
        return [int(s) for call in self.calls for s in call]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cancel_after(batches: int) -> Any:
    """A ``should_cancel`` that lets ``batches`` batches through, then asks to stop."""
    polls = {"n": 0}

    def should_cancel() -> bool:
        polls["n"] += 1
        return polls["n"] > batches

    return should_cancel


# -- values ------------------------------------------------------------------------------------
def test_a_real_svs_gets_the_models_value_for_every_tissue_spot(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    with Slide(cmu_small_svs) as real:
        grid = build_grid(real, "visium", tile_um=TILE_UM)
        assert 0 < len(grid) < len(SpotGrid.visium(real.dimensions, real.mpp))
        store = predict_slide(
            real, Predictor(synthetic_model), grid, tmp_path / "cmu.vst.zarr", batch_size=16
        )
        expected = expected_for(real, grid, noise=False)
    assert store.is_complete
    assert store.attrs["status"] == "complete"
    assert store.attrs["slide"]["name"] == "CMU-1-Small-Region.svs"
    assert store.attrs["model"]["file"] == synthetic_model.name
    assert store.genes == tuple(f"SYNTH{i}" for i in range(N_GENES))
    np.testing.assert_array_equal(store.xy_level0_px, grid.xy_level0_px)
    np.testing.assert_allclose(store.expression(), expected, rtol=1e-5, atol=1e-5)
    assert not store.has_variance


def test_a_synthetic_slide_gets_values_and_variance_for_every_spot(
    slide: Slide, grid: SpotGrid, model: Path, tmp_path: Path
) -> None:
    store = predict_slide(slide, Predictor(model), grid, tmp_path / "s.vst.zarr", batch_size=BATCH)
    assert store.is_complete
    assert (store.n_spots, store.chunk_spots, store.n_chunks) == (77, BATCH, 10)
    assert store.attrs["slide"]["mpp"] == PNG_MPP
    assert store.attrs["slide"]["mpp_source"] == "override"
    assert store.attrs["grid"]["kind"] == "explicit"
    assert store.spot_ids[:2] == ["0_0", "0_1"]
    np.testing.assert_allclose(
        store.expression(), expected_for(slide, grid, noise=True), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        store.variance(), expected_for(slide, grid, noise=False) ** 2, rtol=1e-4, atol=1e-5
    )
    reopened = PredictionStore.open(tmp_path / "s.vst.zarr")
    np.testing.assert_array_equal(reopened.expression(), store.expression())


def test_a_fixed_batch_size_model_predicts_in_whole_model_batches(
    slide: Slide, grid: SpotGrid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_mean_colour_model(tmp_path / "fixed.onnx", image_shape=[3, TILE_PX, TILE_PX, 3])
    spy = PredictSpy(monkeypatch)
    store = predict_slide(
        slide, Predictor(path), grid, tmp_path / "fixed.vst.zarr", batch_size=BATCH
    )
    assert store.chunk_spots == 9  # 8 rounded up to a multiple of the model's 3
    assert [len(c) for c in spy.calls] == [9] * 8 + [5]
    np.testing.assert_allclose(
        store.expression(), expected_for(slide, grid, noise=False), rtol=1e-5, atol=1e-5
    )


# -- progress and cancel -----------------------------------------------------------------------
def test_progress_is_reported_after_every_batch_up_to_the_total(
    slide: Slide, grid: SpotGrid, synthetic_model: Path, tmp_path: Path
) -> None:
    reports: list[Progress] = []
    predict_slide(
        slide,
        Predictor(synthetic_model),
        grid,
        tmp_path / "p.vst.zarr",
        batch_size=BATCH,
        progress=reports.append,
    )
    assert len(reports) == 1 + 10
    first, *batches = reports
    assert (first.spots_done, first.spots_total, first.chunk, first.spots) == (0, 77, None, None)
    done = [r.spots_done for r in reports]
    assert done == sorted(done)
    assert done[1:] == [min(8 * (i + 1), 77) for i in range(10)]
    assert [r.chunk for r in batches] == list(range(10))
    assert [r.spots for r in batches][-1] == slice(72, 77)
    assert all(r.spots_total == 77 for r in reports)
    elapsed = [r.elapsed_s for r in reports]
    assert elapsed == sorted(elapsed)
    assert reports[-1].fraction == 1.0
    assert all(r.tiles_per_s > 0 for r in batches)


@pytest.mark.parametrize("k", [0, 3])
def test_cancel_after_k_batches_keeps_exactly_k_chunks(
    slide: Slide, grid: SpotGrid, synthetic_model: Path, tmp_path: Path, k: int
) -> None:
    path = tmp_path / "c.vst.zarr"
    with pytest.raises(CancelledError, match=f"{8 * k} of 77 spots are saved") as info:
        predict_slide(
            slide,
            Predictor(synthetic_model),
            grid,
            path,
            batch_size=BATCH,
            should_cancel=cancel_after(k),
        )
    assert "run again to resume" in str(info.value)
    store = PredictionStore.open(path)
    assert store.done_chunks().tolist() == [True] * k + [False] * (10 - k)
    assert store.attrs["status"] == "cancelled"
    assert store.attrs["spots_done"] == 8 * k
    assert np.isnan(store.expression()[8 * k :]).all()


def test_resume_after_cancel_computes_only_the_missing_chunks_bit_identically(
    png_path: Path, grid: SpotGrid, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = predict_slide(
        Slide(png_path, mpp=PNG_MPP),
        Predictor(model),
        grid,
        tmp_path / "ref.vst.zarr",
        batch_size=BATCH,
    )
    path = tmp_path / "resumed.vst.zarr"
    with pytest.raises(CancelledError):
        predict_slide(
            Slide(png_path, mpp=PNG_MPP),
            Predictor(model),
            grid,
            path,
            batch_size=BATCH,
            should_cancel=cancel_after(4),
        )
    spy = PredictSpy(monkeypatch)
    reports: list[Progress] = []
    # a new session: the slide and model opened again
    store = predict_slide(
        Slide(png_path, mpp=PNG_MPP),
        Predictor(model),
        grid,
        path,
        batch_size=BATCH,
        progress=reports.append,
    )
    assert spy.spots == list(range(32, 77))
    assert len(spy.calls) == 6
    assert reports[0].spots_done == 32
    assert reports[-1].spots_done == 77
    assert store.is_complete
    assert store.attrs["status"] == "complete"
    assert np.array_equal(store.expression(), reference.expression())
    assert np.array_equal(store.variance(), reference.variance())


def test_resuming_with_another_batch_size_keeps_the_stored_chunking(
    slide: Slide, grid: SpotGrid, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = Predictor(model)
    reference = predict_slide(slide, predictor, grid, tmp_path / "ref.vst.zarr", batch_size=BATCH)
    path = tmp_path / "r.vst.zarr"
    with pytest.raises(CancelledError):
        predict_slide(
            slide, predictor, grid, path, batch_size=BATCH, should_cancel=cancel_after(1)
        )
    spy = PredictSpy(monkeypatch)
    store = predict_slide(slide, predictor, grid, path, batch_size=20)
    assert store.chunk_spots == BATCH
    assert [len(c) for c in spy.calls] == [8] * 8 + [5]
    assert np.array_equal(store.expression(), reference.expression())
    assert np.array_equal(store.variance(), reference.variance())


def test_a_finished_store_returns_at_once_without_running_the_model(
    slide: Slide,
    grid: SpotGrid,
    synthetic_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    predictor = Predictor(synthetic_model)
    path = tmp_path / "f.vst.zarr"
    first = predict_slide(slide, predictor, grid, path, batch_size=BATCH).expression()
    spy = PredictSpy(monkeypatch)

    def no_reading(*args: Any) -> np.ndarray:
        raise AssertionError("a finished store must not read the slide")

    monkeypatch.setattr(Slide, "read_tile", no_reading)
    reports: list[Progress] = []
    store = predict_slide(slide, predictor, grid, path, batch_size=BATCH, progress=reports.append)
    assert spy.calls == []
    assert [(r.spots_done, r.spots_total) for r in reports] == [(77, 77)]
    assert np.array_equal(store.expression(), first)


# -- refusing to resume onto something else ----------------------------------------------------
@pytest.fixture
def cancelled_store(slide: Slide, grid: SpotGrid, synthetic_model: Path, tmp_path: Path) -> Path:
    path = tmp_path / "kept.vst.zarr"
    with pytest.raises(CancelledError):
        predict_slide(
            slide,
            Predictor(synthetic_model),
            grid,
            path,
            batch_size=BATCH,
            should_cancel=cancel_after(2),
        )
    return path


def test_resuming_onto_another_slide_is_refused_and_the_store_kept(
    cancelled_store: Path, grid: SpotGrid, synthetic_model: Path, tmp_path: Path
) -> None:
    before = snapshot(cancelled_store)
    other = Slide(write_png(tmp_path / "other_slide.png", seed=2), mpp=PNG_MPP)
    with pytest.raises(
        StoreMismatchError,
        match=r"kept\.vst\.zarr holds predictions for a different slide "
        r"\(synthetic_slide\.png\), not other_slide\.png",
    ):
        predict_slide(other, Predictor(synthetic_model), grid, cancelled_store, batch_size=BATCH)
    assert snapshot(cancelled_store) == before


def test_resuming_with_another_model_is_refused_and_the_store_kept(
    cancelled_store: Path, slide: Slide, grid: SpotGrid, tmp_path: Path
) -> None:
    before = snapshot(cancelled_store)
    other = write_mean_colour_model(tmp_path / "other_model.onnx", seed=3)
    with pytest.raises(
        StoreMismatchError,
        match=r"was made with a different model \(synthetic_mean_colour\.onnx\), not other_model",
    ):
        predict_slide(slide, Predictor(other), grid, cancelled_store, batch_size=BATCH)
    assert snapshot(cancelled_store) == before


def test_resuming_on_another_grid_is_refused_and_the_store_kept(
    cancelled_store: Path, slide: Slide, grid: SpotGrid, synthetic_model: Path
) -> None:
    before = snapshot(cancelled_store)
    visium = build_grid(slide, "visium", tile_um=TILE_UM, min_tissue_fraction=0)
    shifted = SpotGrid.from_coordinates(
        grid.xy_level0_px + 1.0, mpp=PNG_MPP, spot_diameter_um=TILE_UM
    )
    for other in (visium, grid.subset(np.arange(76)), shifted):
        with pytest.raises(StoreMismatchError, match="different spot grid settings"):
            predict_slide(slide, Predictor(synthetic_model), other, cancelled_store)
    assert snapshot(cancelled_store) == before


def test_overwrite_replaces_a_store_of_another_slide(
    cancelled_store: Path, grid: SpotGrid, synthetic_model: Path, tmp_path: Path
) -> None:
    other = Slide(write_png(tmp_path / "other_slide.png", seed=2), mpp=PNG_MPP)
    store = predict_slide(
        other, Predictor(synthetic_model), grid, cancelled_store, batch_size=5, overwrite=True
    )
    assert store.is_complete
    assert store.chunk_spots == 5
    assert store.attrs["slide"]["name"] == "other_slide.png"
    np.testing.assert_allclose(
        store.expression(), expected_for(other, grid, noise=False), rtol=1e-5, atol=1e-5
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("zarr")) == [
        "kept.vst.zarr"
    ]


def test_a_folder_that_is_not_a_store_is_not_touched(
    slide: Slide, grid: SpotGrid, synthetic_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a readable prediction store"):
        predict_slide(slide, Predictor(synthetic_model), grid, folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


# -- failures ----------------------------------------------------------------------------------
def test_a_read_error_keeps_earlier_chunks_and_a_rerun_finishes(
    slide: Slide,
    grid: SpotGrid,
    synthetic_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunk_of = {tuple(xy): i // BATCH for i, xy in enumerate(grid.xy_level0_px)}
    original = Slide.read_tile

    def failing(self: Slide, center: Any, tile_px: int, tile_um: float, **kw: Any) -> np.ndarray:
        if chunk_of[tuple(center)] == 2:
            raise SlideError("synthetic_slide.png: corrupt tile")
        return original(self, center, tile_px, tile_um, **kw)

    monkeypatch.setattr(Slide, "read_tile", failing)
    path = tmp_path / "e.vst.zarr"
    predictor = Predictor(synthetic_model)
    with pytest.raises(SlideError, match="corrupt tile"):
        predict_slide(slide, predictor, grid, path, batch_size=BATCH, read_threads=2)
    store = PredictionStore.open(path)
    assert store.done_chunks().tolist() == [True, True] + [False] * 8
    assert store.attrs["status"] == "failed"
    assert "corrupt tile" in store.attrs["error"]

    monkeypatch.setattr(Slide, "read_tile", original)
    spy = PredictSpy(monkeypatch)
    store = predict_slide(slide, predictor, grid, path, batch_size=BATCH)
    assert spy.spots == list(range(16, 77))
    assert store.is_complete
    assert store.attrs["status"] == "complete"
    np.testing.assert_allclose(
        store.expression(), expected_for(slide, grid, noise=False), rtol=1e-5, atol=1e-5
    )


def test_an_unexpected_error_is_recorded_in_the_store(
    slide: Slide, grid: SpotGrid, synthetic_model: Path, tmp_path: Path
) -> None:
    def broken_progress(progress: Progress) -> None:
        if progress.chunk == 1:
            raise RuntimeError("viewer went away")

    path = tmp_path / "u.vst.zarr"
    with pytest.raises(RuntimeError, match="viewer went away"):
        predict_slide(
            slide,
            Predictor(synthetic_model),
            grid,
            path,
            batch_size=BATCH,
            progress=broken_progress,
        )
    store = PredictionStore.open(path)
    assert store.attrs["status"] == "failed"
    assert store.attrs["error"] == "RuntimeError: viewer went away"
    assert store.done_chunks()[:2].all()


# -- memory ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prefetch", "read_threads"), [(1, 1), (3, 2)])
def test_reading_runs_at_most_prefetch_batches_ahead_of_the_model(
    slide: Slide,
    grid: SpotGrid,
    synthetic_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefetch: int,
    read_threads: int,
) -> None:
    chunk_of = {tuple(xy): i // BATCH for i, xy in enumerate(grid.xy_level0_px)}
    spy = PredictSpy(monkeypatch, delay_s=0.02)  # a model slower than reading
    original = Slide.read_tile
    lock = threading.Lock()
    started: set[int] = set()
    in_memory: list[int] = []

    def counting(self: Slide, center: Any, tile_px: int, tile_um: float, **kw: Any) -> np.ndarray:
        with lock:
            started.add(chunk_of[tuple(center)])
            # batches read or being read, less those the model has finished with
            in_memory.append(len(started) - spy.finished)
        return original(self, center, tile_px, tile_um, **kw)

    monkeypatch.setattr(Slide, "read_tile", counting)
    store = predict_slide(
        slide,
        Predictor(synthetic_model),
        grid,
        tmp_path / "m.vst.zarr",
        batch_size=BATCH,
        read_threads=read_threads,
        prefetch=prefetch,
    )
    assert store.is_complete
    # the batch in the model plus at most `prefetch` read ahead of it
    assert max(in_memory) == prefetch + 1
    assert len(spy.calls) == 10


# -- refusals before any work ------------------------------------------------------------------
def test_an_empty_grid_is_refused(slide: Slide, synthetic_model: Path, tmp_path: Path) -> None:
    empty = SpotGrid.from_coordinates(np.empty((0, 2)), mpp=PNG_MPP, spot_diameter_um=55)
    with pytest.raises(ParameterError, match="no spots"):
        predict_slide(slide, Predictor(synthetic_model), empty, tmp_path / "e.vst.zarr")
    assert not (tmp_path / "e.vst.zarr").exists()


def test_a_slide_of_unknown_resolution_is_refused(
    png_path: Path, grid: SpotGrid, synthetic_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(MissingResolutionError, match="does not record its resolution"):
        predict_slide(Slide(png_path), Predictor(synthetic_model), grid, tmp_path / "u.vst.zarr")
    assert not (tmp_path / "u.vst.zarr").exists()


@pytest.mark.parametrize("option", ["batch_size", "read_threads", "prefetch"])
def test_sizes_below_one_are_refused(
    slide: Slide, grid: SpotGrid, synthetic_model: Path, tmp_path: Path, option: str
) -> None:
    with pytest.raises(ParameterError, match="at least 1"):
        predict_slide(
            slide, Predictor(synthetic_model), grid, tmp_path / "z.vst.zarr", **{option: 0}
        )
    assert not (tmp_path / "z.vst.zarr").exists()


# -- grids -------------------------------------------------------------------------------------
def test_build_grid_lays_each_kind_and_keeps_spots_on_tissue(slide: Slide) -> None:
    visium = build_grid(slide, "visium", tile_um=TILE_UM, min_tissue_fraction=0)
    st = build_grid(slide, "st", tile_um=TILE_UM, min_tissue_fraction=0)
    dense = build_grid(slide, "dense", tile_um=TILE_UM, min_tissue_fraction=0)
    assert (visium.kind, visium.pitch_um, visium.spot_diameter_um) == ("visium", 100.0, 55.0)
    assert (st.kind, st.pitch_um, st.spot_diameter_um) == ("st", 200.0, 100.0)
    assert (dense.kind, dense.pitch_um, dense.spot_diameter_um) == ("dense", 55.0, 55.0)
    assert len(visium) > 0 and len(st) > 0 and len(dense) > 0
    mask = np.zeros((40, 60), bool)
    mask[:, :33] = True  # tissue left of x = 330 level-0 px: the first six tile columns
    kept = build_grid(slide, "dense", tile_um=TILE_UM, tissue=TissueMask(mask, (10.0, 10.0)))
    assert 0 < len(kept) < len(dense)
    columns = {round(x, 6) for x in kept.xy_level0_px[:, 0]}
    assert columns == {27.5 + 55.0 * i for i in range(6)}
    assert kept.params["min_tissue_fraction"] == 0.5


def test_build_grid_refuses_an_unknown_kind(slide: Slide) -> None:
    with pytest.raises(ParameterError, match="grid must be visium, st or dense; got 'hex'"):
        build_grid(slide, "hex", tile_um=TILE_UM)  # type: ignore[arg-type]


def test_resuming_with_other_slide_statistics_is_refused_and_the_store_kept(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.errors import StoreMismatchError

    model = write_mean_colour_model(tmp_path / "s.onnx", with_slide_statistics=True)
    predictor = Predictor(model)
    with Slide(cmu_small_svs) as slide:
        grid = build_grid(slide, "visium", tile_um=55.0)
        tiles = np.stack([slide.read_tile((x, y), 32, 55.0) for x, y in grid.xy_level0_px[:20]])
        first = predictor.standardised_on(tiles)
        with pytest.raises(CancelledError):
            predict_slide(slide, first, grid, tmp_path / "s.vst.zarr", batch_size=8,
                          should_cancel=iter([False, True]).__next__)  # fmt: skip
        before = PredictionStore.open(tmp_path / "s.vst.zarr").expression()
        other = predictor.standardised_on(tiles[:10])
        with pytest.raises(StoreMismatchError, match="other slide statistics"):
            predict_slide(slide, other, grid, tmp_path / "s.vst.zarr", batch_size=8)
        with pytest.raises(StoreMismatchError, match="none are given now"):
            predict_slide(slide, predictor, grid, tmp_path / "s.vst.zarr", batch_size=8)
        kept = PredictionStore.open(tmp_path / "s.vst.zarr")
        np.testing.assert_array_equal(kept.expression(), before)
        assert kept.slide_statistics == first.slide_statistics
