"""One prediction run (``napari_virtual_st.run``): its events, preview, priorities, errors."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_virtual_st.errors import (
    CancelledError,
    MissingResolutionError,
    ModelError,
    ParameterError,
    StoreError,
)
from napari_virtual_st.run import (
    BatchEvent,
    PreviewEvent,
    RunSpec,
    StageEvent,
    StoreReadyEvent,
    engine,
    priority,
    run_events,
    run_outcome,
    visible_first,
)
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.store_view import StoreView
from runs import drain as _drain
from runs import run_request


def _request(slide: Path, model: Path, tmp_path: Path, **kwargs) -> RunSpec:
    return run_request(slide, model, tmp_path / "run.vst.zarr", **kwargs)


def test_events_carry_every_batch_the_store_holds(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    request = _request(cmu_small_svs, synthetic_model, tmp_path)
    events, store_path = _drain(run_events(request))
    assert store_path == request.store_path
    stages = [e.message for e in events if isinstance(e, StageEvent)]
    assert stages[:4] == [
        "opening the slide",
        "loading the model",
        "finding tissue",
        "laying out spots",
    ]
    ready = [e for e in events if isinstance(e, StoreReadyEvent)]
    assert len(ready) == 1 and ready[0].providers[-1] == "CPUExecutionProvider"
    view = ready[0].view
    assert view.spots_done == 0 and np.isnan(view.expression).all()
    batches = [e for e in events if isinstance(e, BatchEvent)]
    assert sum(b.progress.spots.stop - b.progress.spots.start for b in batches) == view.n_spots
    for b in batches:  # replaying the events rebuilds the store's contents
        view.update(b.progress.spots, b.expression, b.variance)
    store = PredictionStore.open(store_path)
    np.testing.assert_array_equal(view.expression, store.expression())
    assert store.is_complete


def test_cancel_stops_at_a_batch_boundary_and_a_rerun_resumes(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    request = _request(cmu_small_svs, synthetic_model, tmp_path, batch_size=4)
    cancel = threading.Event()
    gen = run_outcome(request, cancel)
    batches = 0
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            outcome = stop.value
            break
        if isinstance(event, BatchEvent):
            batches += 1
            if batches == 2:
                cancel.set()
    assert outcome.cancelled and outcome.store_path is None
    assert "run again to resume" in str(outcome.error)
    store = PredictionStore.open(request.store_path)
    done = int(store.done.sum())
    assert 0 < done < store.n_spots and store.attrs["status"] == "cancelled"
    # the rerun starts from what was saved and predicts only the rest
    events, _ = _drain(run_events(request))
    ready = next(e for e in events if isinstance(e, StoreReadyEvent))
    assert ready.progress.spots_done == done == ready.view.spots_done
    assert PredictionStore.open(request.store_path).is_complete


def test_closing_the_generator_stops_the_run(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    request = _request(cmu_small_svs, synthetic_model, tmp_path, batch_size=2)
    gen = run_events(request)
    while not isinstance(next(gen), BatchEvent):
        pass
    gen.close()  # as when the viewer closes mid-run: the helper thread ends too
    assert not [t for t in threading.enumerate() if t.name == "vst-predict"]
    assert not PredictionStore.open(request.store_path).is_complete


def test_engine_errors_become_an_outcome_with_their_message(
    synthetic_model: Path, tmp_path: Path
) -> None:
    png = tmp_path / "no_resolution.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(png)
    outcome = _drain(run_outcome(_request(png, synthetic_model, tmp_path)))[1]
    assert isinstance(outcome.error, MissingResolutionError)
    assert "does not record its resolution" in str(outcome.error)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError, match="before prediction started"):
        _drain(run_events(_request(png, synthetic_model, tmp_path, mpp=0.5), cancel))


def test_store_view_reads_a_store(cmu_small_svs: Path, tmp_path: Path) -> None:
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "var.onnx", with_variance=True)
    request = _request(cmu_small_svs, model, tmp_path, grid_kind="st", min_tissue_fraction=0.0)
    _, path = _drain(run_events(request))
    view = StoreView.open(path)
    store = PredictionStore.open(path)
    assert view.kind == "st" and view.has_variance and view.n_spots == store.n_spots
    np.testing.assert_allclose(view.sd("SYNTH1") ** 2, store.variance(["SYNTH1"])[:, 0], rtol=1e-6)
    table = view.features()
    assert list(table.columns) == ["spot", *view.genes] and len(table) == view.n_spots
    assert view.spot_at(view.yx_um[3]) == 3
    assert view.most_variable_gene() in view.genes


def test_a_moved_slide_is_found_beside_its_store_and_only_if_it_is_the_same_slide(
    cmu_small_svs: Path, tiny_svs: Path, tmp_path: Path
) -> None:
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "m.onnx")
    slide = Path(shutil.copy(cmu_small_svs, tmp_path / "case.svs"))
    request = _request(slide, model, tmp_path, grid_kind="st", min_tissue_fraction=0.0)
    _, path = _drain(run_events(request))
    assert StoreView.open(path).slide_path == slide.absolute()
    # The user moves slide and results to another folder together.
    moved = tmp_path / "archive"
    moved.mkdir()
    shutil.move(path, moved / path.name)
    shutil.move(slide, moved / slide.name)
    assert StoreView.open(moved / path.name).slide_path == (moved / slide.name).absolute()
    # Another slide under the same name is not taken for it.
    (moved / slide.name).unlink()
    shutil.copy(tiny_svs, moved / slide.name)
    assert StoreView.open(moved / path.name).slide_path is None


def test_visible_first_orders_spots_on_screen_from_the_middle_out() -> None:
    xy = np.array([[0.0, 0.0], [50.0, 50.0], [60.0, 40.0], [95.0, 95.0], [500.0, 500.0]])
    np.testing.assert_array_equal(visible_first(xy, (0.0, 0.0, 100.0, 100.0)), [1, 2, 3, 0])
    # without a region: every spot, from the middle of their extent (250, 250) out
    assert list(visible_first(xy, None)) == [3, 1, 2, 0, 4]
    assert len(visible_first(xy, (1000.0, 1000.0, 2000.0, 2000.0))) == 0


def test_spots_on_screen_are_predicted_first_and_the_store_is_the_same(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    plain = _request(cmu_small_svs, synthetic_model, tmp_path / "a", batch_size=4)
    _drain(run_events(plain))
    reference = PredictionStore.open(plain.store_path)
    xy = reference.xy_level0_px
    # a region around the spots of the last chunk: those come first
    last = xy[-4:]
    region = (*(last.min(axis=0) - 1), *(last.max(axis=0) + 1))
    inside = visible_first(xy, region)
    request = _request(
        cmu_small_svs,
        synthetic_model,
        tmp_path / "b",
        batch_size=4,
        visible_xy_level0_px=region,
    )
    events, path = _drain(run_events(request))
    chunks = [e.progress.chunk for e in events if isinstance(e, BatchEvent)]
    urgent = list(dict.fromkeys((inside // 4).tolist()))
    assert chunks[: len(urgent)] == urgent and urgent[0] >= reference.n_chunks - 2
    assert sorted(chunks) == list(range(reference.n_chunks))
    store = PredictionStore.open(path)
    np.testing.assert_array_equal(store.xy_level0_px, xy)
    np.testing.assert_array_equal(store.expression(), reference.expression())


def test_a_preview_on_a_coarse_mask_comes_first_and_the_grid_is_the_full_masks(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, monkeypatch
) -> None:
    no_preview = _request(cmu_small_svs, synthetic_model, tmp_path / "a", preview=False)
    events, _ = _drain(run_events(no_preview))
    assert not [e for e in events if isinstance(e, PreviewEvent)]  # small slide: no preview
    reference = PredictionStore.open(no_preview.store_path)

    monkeypatch.setattr(engine, "PREVIEW_MASK_PX", 64)  # as if the slide were large
    request = _request(cmu_small_svs, synthetic_model, tmp_path / "b")
    events, path = _drain(run_events(request))
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("PreviewEvent") < kinds.index("StoreReadyEvent")
    stages = [e.message for e in events if isinstance(e, StageEvent)]
    assert stages[2:5] == [
        "finding tissue",
        "finding tissue at full resolution",
        "laying out spots",
    ]
    (preview,) = [e.view for e in events if isinstance(e, PreviewEvent)]
    assert 0 < preview.n_spots <= min(request.batch_size, engine.PREVIEW_SPOTS)
    # a few spots only, so that a slow model's first values come soon
    monkeypatch.setattr(engine, "PREVIEW_SPOTS", 3)
    fewer = _request(cmu_small_svs, synthetic_model, tmp_path / "c")
    (small,) = [e.view for e in _drain(run_events(fewer))[0] if isinstance(e, PreviewEvent)]
    assert small.n_spots == 3
    assert preview.path == request.store_path and preview.geometry is not None
    assert np.isfinite(preview.expression).all()
    # preview spots sit on the run's lattice, and the grid is the one of the full mask
    store = PredictionStore.open(path)
    np.testing.assert_array_equal(store.xy_level0_px, reference.xy_level0_px)
    np.testing.assert_array_equal(store.lattice_rc, reference.lattice_rc)
    np.testing.assert_array_equal(store.expression(), reference.expression())
    on_grid = {tuple(rc) for rc in store.lattice_rc.tolist()}
    assert sum(tuple(rc) in on_grid for rc in preview.lattice_rc.tolist()) >= preview.n_spots // 2
    # its values are the model's for those tiles (as the run's own, for spots in both)
    index = {tuple(rc): i for i, rc in enumerate(store.lattice_rc.tolist())}
    both = [
        (i, index[tuple(rc)])
        for i, rc in enumerate(preview.lattice_rc.tolist())
        if tuple(rc) in index
    ]
    a, b = zip(*both, strict=True)
    np.testing.assert_allclose(preview.expression[list(a)], store.expression()[list(b)], rtol=1e-5)


def test_a_run_with_a_preview_checks_bright_field_on_the_previews_thumbnail(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """The bright-field check reads the thumbnail of the run's first tissue mask: the
    preview's coarse one when the run previews (so the preview waits for no larger read),
    the full one otherwise. (The real slide made 'large': a 2 µm/px full mask, 740 px.)"""
    from napari_virtual_st.slide import Slide

    monkeypatch.setattr(engine, "FULL_MASK_UM_PER_PX", 2.0)
    asked: list[int] = []
    original = Slide.thumbnail

    def thumbnail(self: Slide, max_px: int = 2048, *, keep: bool = True):
        asked.append(max_px)
        return original(self, max_px, keep=keep)

    monkeypatch.setattr(Slide, "thumbnail", thumbnail)
    events, _ = _drain(run_events(_request(cmu_small_svs, synthetic_model, tmp_path / "a")))
    assert any(isinstance(e, PreviewEvent) for e in events)
    full = asked[-1]
    assert full > engine.PREVIEW_MASK_PX  # the full mask's, last
    assert asked[:2] == [engine.PREVIEW_MASK_PX] * 2  # the check's, then the preview's
    asked.clear()
    plain = _request(cmu_small_svs, synthetic_model, tmp_path / "b", preview=False)
    _drain(run_events(plain))
    assert asked[:2] == [full, full]  # no preview: the check reads the full mask's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lowering_priority_affects_the_calling_thread_and_threads_it_starts() -> None:
    seen: dict[str, int] = {}

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def child() -> None:
        seen["child"] = niceness()

    def lowered() -> None:
        seen["lowered"] = niceness() if priority.lower_thread_priority(12) else -1
        started = threading.Thread(target=child)
        started.start()
        started.join()

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen == {"lowered": 12, "child": 12}
    assert niceness() < 12  # the caller of the test (GUI thread in a viewer) is untouched


def test_a_run_that_yields_the_cpu_lowers_its_threads_and_writes_the_same_store(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lowered: list[str] = []
    real = priority.lower_thread_priority

    by_predict: set[int] = set()

    def recording(*args: int, thread_id: int | None = None) -> bool:
        name = threading.current_thread().name
        lowered.append(name)
        if name == "vst-predict":
            by_predict.add(threading.get_native_id() if thread_id is None else thread_id)
        return real(*args, thread_id=thread_id)

    monkeypatch.setattr(priority, "lower_thread_priority", recording)
    stores = []
    for yield_cpu in (False, True):
        request = _request(
            cmu_small_svs, synthetic_model, tmp_path / str(yield_cpu), yield_cpu=yield_cpu
        )
        store_path = _drain(run_events(request))[1]
        stores.append(PredictionStore.open(store_path).expression())
        if not yield_cpu:
            assert lowered == []
    np.testing.assert_array_equal(stores[0], stores[1])
    # every tile reader as it starts, and the run's own thread with ONNX Runtime's pool once
    # its first batch was sent
    assert any(name.startswith("vst-read") for name in lowered)
    assert len(by_predict) >= (2 if (os.cpu_count() or 1) > 1 else 1)


def test_a_broken_model_is_refused_with_its_message_when_loaded_on_a_lowered_thread(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    outcome = _drain(run_outcome(_request(cmu_small_svs, broken, tmp_path)))[1]
    assert isinstance(outcome.error, ModelError)
    assert "broken.onnx is not a loadable ONNX model" in str(outcome.error)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="ONNX Runtime starts no pool on one core")
def test_onnx_runtimes_pool_threads_are_found_when_the_model_loads_and_can_be_lowered(
    synthetic_model: Path, tmp_path: Path
) -> None:
    before = priority.python_thread_ids()
    predictor, started = engine.load_predictor(synthetic_model, spin=False)
    assert started and not started & before  # new threads: ONNX Runtime's CPU pool
    for tid in started:
        assert priority.lower_thread_priority(13, thread_id=tid)
        assert os.getpriority(os.PRIO_PROCESS, tid) == 13
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 13
    assert predictor.genes  # (and the model is the one asked for)


# -- the one run: its parameters and the faces' options ------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("min_tissue_fraction", 1.5, "minimum tissue fraction"),
        ("batch_size", 0, "batch size"),
        ("read_threads", 0, "read threads"),
        ("intra_op_threads", 0, "model threads"),
        ("mpp", -0.5, "µm per pixel"),
        ("fallback_mpp", 0.0, "µm per pixel"),
    ],
)
def test_a_run_spec_refuses_out_of_range_parameters_naming_them(
    option: str, value: float, message: str, tmp_path: Path
) -> None:
    from napari_virtual_st.errors import ParameterError
    from napari_virtual_st.run import RunSpec

    with pytest.raises(ParameterError, match=message):
        RunSpec(
            tmp_path / "s.svs", tmp_path / "m.onnx", tmp_path / "o.vst.zarr", **{option: value}
        )


def test_a_run_at_given_spots_predicts_exactly_them_and_keeps_the_alignment(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.align import from_scale
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.run import RunSpec, run

    xy = np.array([[600.0, 800.0], [900.0, 1200.0], [1500.0, 2000.0]])
    spots = SpotGrid.from_coordinates(
        xy, mpp=0.499, spot_diameter_um=55.0, spot_ids=["AAAC-1", "CCCG-1", "TTTA-1"]
    )
    transform = from_scale(2.0)
    spec = RunSpec(
        cmu_small_svs, synthetic_model, tmp_path / "m.vst.zarr", spots=spots, transform=transform
    )
    store = run(spec)
    assert store.is_complete
    assert store.spot_ids == ["AAAC-1", "CCCG-1", "TTTA-1"]
    np.testing.assert_array_equal(store.xy_level0_px, xy)
    saved = store.load_transform()
    assert saved is not None
    np.testing.assert_array_equal(saved.matrix, transform.matrix)
    assert spec.grid_name == "measured"


def test_no_spots_on_tissue_is_one_message_naming_the_setting(
    synthetic_model: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.errors import ParameterError
    from napari_virtual_st.run import RunSpec, run

    blank = tmp_path / "synthetic_blank.png"  # SYNTHETIC: a white image, no tissue at all
    Image.fromarray(np.full((600, 800, 3), 250, np.uint8)).save(blank)
    with pytest.raises(ParameterError, match=r"no visium spots .*--min-tissue"):
        run(RunSpec(blank, synthetic_model, tmp_path / "b.vst.zarr", mpp=1.0))
    assert not (tmp_path / "b.vst.zarr").exists()


def test_a_model_session_is_kept_for_the_next_run_and_reloaded_when_the_file_changes(
    tmp_path: Path,
) -> None:
    from napari_virtual_st.run import engine
    from synthetic_models import write_mean_colour_model

    path = write_mean_colour_model(tmp_path / "m.onnx", n_genes=3)
    first, _ = engine.load_predictor(path)
    again, _ = engine.load_predictor(path)
    assert again is first
    write_mean_colour_model(path, n_genes=4)  # the user exported a new version in place
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    changed, _ = engine.load_predictor(path)
    assert changed is not first
    assert len(changed.genes) == 4


def test_kept_sessions_are_freed_on_request_and_a_later_run_loads_the_model_again(
    tmp_path: Path,
) -> None:
    from napari_virtual_st.run import engine
    from synthetic_models import write_mean_colour_model

    path = write_mean_colour_model(tmp_path / "m.onnx", n_genes=3)
    first, _ = engine.load_predictor(path)
    released = weakref.ref(first)
    engine.release_kept_models()
    del first
    gc.collect()
    assert released() is None  # the session (and its ONNX Runtime threads) is gone
    again, _ = engine.load_predictor(path)
    assert len(again.genes) == 3


EXIT_SCRIPT = """
import atexit, sys
from pathlib import Path

# Registered before the engine is imported, so it runs after the engine's own exit handler.
atexit.register(lambda: print("sessions kept at exit:", len(engine._MODELS), flush=True))

from napari_virtual_st.run import engine
from napari_virtual_st.run.spec import RunSpec

slide, model, out = (Path(a) for a in sys.argv[1:4])
for name in ("a", "b"):
    engine.run(RunSpec(slide, model, out / f"{name}.vst.zarr", mpp=1.0))
print("runs done", flush=True)
"""


def test_a_script_that_runs_predictions_exits_cleanly_having_freed_its_sessions_first(
    tmp_path: Path, synthetic_model: Path
) -> None:
    slide = tmp_path / "tissue.png"
    image = np.full((600, 800, 3), 245, np.uint8)
    image[100:500, 150:650] = (170, 90, 150)  # synthetic pink "tissue"
    Image.fromarray(image).save(slide)
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-c",
            EXIT_SCRIPT,
            slide,
            synthetic_model,
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert "Fatal Python error" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["runs done", "sessions kept at exit: 0"]


def test_a_slide_far_coarser_than_the_model_reads_is_refused_naming_both(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.errors import ParameterError
    from napari_virtual_st.run import RunSpec, run
    from synthetic_models import write_mean_colour_model

    fine = write_mean_colour_model(tmp_path / "fine.onnx", tile_px=32, tile_um=1.6)  # 0.05 µm/px
    spec = RunSpec(cmu_small_svs, fine, tmp_path / "x.vst.zarr")  # the slide: 0.499 µm/px
    with pytest.raises(ParameterError, match=r"0\.499 µm per pixel .* 0\.05 µm per pixel"):
        run(spec)
    assert not spec.store_path.exists()


def _standardising(tmp_path: Path) -> Path:
    from synthetic_models import write_mean_colour_model

    return write_mean_colour_model(tmp_path / "standardising.onnx", with_slide_statistics=True)


def test_slide_statistics_come_from_the_slides_tissue_whatever_spots_a_run_predicts(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.run import run
    from napari_virtual_st.slide import Slide
    from synthetic_models import STATISTICS_SPEC, expected_standardised

    model = _standardising(tmp_path)
    whole = run(RunSpec(cmu_small_svs, model, tmp_path / "whole.vst.zarr", batch_size=16))
    stats = whole.slide_statistics
    assert stats is not None and 2 <= stats.n_spots <= STATISTICS_SPEC["spots"]
    assert "tissue" in stats.sampled_from
    with Slide(cmu_small_svs) as slide:
        tiles = np.stack([slide.read_tile((x, y), 32, 55.0) for x, y in whole.xy_level0_px[:6]])
    np.testing.assert_allclose(
        whole.expression()[:6],
        expected_standardised(tiles, stats.mean, stats.std, 5),
        rtol=1e-4,
        atol=1e-5,
    )
    # a run at three of those spots (a drawn region, measured spots) gives them the same values
    some = whole.grid.subset(np.array([0, 5, 9]))
    part = run(RunSpec(cmu_small_svs, model, tmp_path / "part.vst.zarr", spots=some))
    assert part.slide_statistics == stats
    np.testing.assert_allclose(part.expression(), whole.expression()[[0, 5, 9]], rtol=1e-6)


def test_a_resumed_run_feeds_its_stores_statistics_and_ends_as_an_uninterrupted_one(
    cmu_small_svs: Path, tmp_path: Path, monkeypatch
) -> None:
    from napari_virtual_st.run import run

    model = _standardising(tmp_path)
    straight = run(RunSpec(cmu_small_svs, model, tmp_path / "a.vst.zarr", batch_size=4))
    spec = RunSpec(cmu_small_svs, model, tmp_path / "b.vst.zarr", batch_size=4)
    batches: list[BatchEvent] = []
    with pytest.raises(CancelledError):
        run(spec, progress=lambda e: batches.append(e) if isinstance(e, BatchEvent) else None,
            should_cancel=lambda: len(batches) >= 2)  # fmt: skip
    assert not PredictionStore.open(spec.store_path).is_complete
    # were the statistics measured again they would differ (as if the slide's sample had)
    monkeypatch.setattr(engine, "sample_evenly", lambda n, k: np.arange(2))
    stages: list[str] = []
    resumed = run(spec, progress=lambda e: stages.append(getattr(e, "message", "")))
    assert not [s for s in stages if "statistics" in s]
    assert resumed.is_complete and resumed.slide_statistics == straight.slide_statistics
    np.testing.assert_array_equal(resumed.expression(), straight.expression())


def test_a_large_slides_statistics_come_first_on_its_coarse_mask_and_its_preview_uses_them(
    cmu_small_svs: Path, tmp_path: Path, monkeypatch
) -> None:
    """On a large slide a model that needs slide statistics gets them on the preview's
    coarse mask before anything else, so its preview shows values before the full mask is
    made; the preview's values are the run's own for the spots in both."""
    from napari_virtual_st.slide import Slide

    monkeypatch.setattr(engine, "PREVIEW_MASK_PX", 64)  # as if the slide were large
    made: list[float] = []
    detect = engine.detect_tissue

    def detect_and_note(slide: Slide, mask_um_per_px: float):  # the masks the run makes
        made.append(mask_um_per_px)
        return detect(slide, mask_um_per_px=mask_um_per_px)

    monkeypatch.setattr(engine, "detect_tissue", detect_and_note)
    request = _request(cmu_small_svs, _standardising(tmp_path), tmp_path)
    events, path = _drain(run_events(request))
    stages = [e.message for e in events if isinstance(e, StageEvent)]
    measuring = [i for i, s in enumerate(stages) if s.startswith("measuring the slide's")]
    assert measuring and measuring[0] < stages.index("finding tissue")
    with Slide(cmu_small_svs) as slide:
        coarse = engine.statistics_mask_um_per_px(slide)
    assert coarse > engine.FULL_MASK_UM_PER_PX and made[0] == coarse  # the coarse mask first
    assert made[-1] == engine.FULL_MASK_UM_PER_PX  # the grid's, last
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("PreviewEvent") < kinds.index("StoreReadyEvent")
    (preview,) = [e.view for e in events if isinstance(e, PreviewEvent)]
    store = PredictionStore.open(path)
    assert store.is_complete and store.slide_statistics is not None
    index = {tuple(rc): i for i, rc in enumerate(store.lattice_rc.tolist())}
    both = [(i, index[tuple(rc)]) for i, rc in enumerate(preview.lattice_rc.tolist())
            if tuple(rc) in index]  # fmt: skip
    assert both
    a, b = zip(*both, strict=True)
    np.testing.assert_allclose(preview.expression[list(a)], store.expression()[list(b)], rtol=1e-5)


def test_cancelling_while_the_statistics_are_measured_stops_there_and_writes_nothing(
    cmu_small_svs: Path, tmp_path: Path, monkeypatch
) -> None:
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.run import run

    batches: list[int] = []
    features = Predictor.slide_features
    monkeypatch.setattr(Predictor, "slide_features",
                        lambda self, tiles, *a: batches.append(len(tiles)) or features(self, tiles, *a))  # fmt: skip
    spec = RunSpec(cmu_small_svs, _standardising(tmp_path), tmp_path / "c.vst.zarr", batch_size=4)
    stages: list[str] = []

    def measuring() -> bool:  # the user presses Cancel once the statistics are under way
        return any(s.startswith("measuring the slide's statistics") for s in stages)

    with pytest.raises(CancelledError, match="nothing was saved"):
        run(spec, progress=lambda e: stages.append(getattr(e, "message", "")),
            should_cancel=measuring)  # fmt: skip
    assert stages[-1].startswith("measuring the slide's statistics")
    assert batches == []  # stopped between its batches, before reading any more tiles
    assert not spec.store_path.exists()


def test_a_store_whose_statistics_record_is_damaged_is_not_resumed_and_is_left_as_it_is(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    import json

    from napari_virtual_st.run import run

    spec = RunSpec(cmu_small_svs, _standardising(tmp_path), tmp_path / "d.vst.zarr", batch_size=4)
    batches: list[BatchEvent] = []
    with pytest.raises(CancelledError):
        run(spec, progress=lambda e: batches.append(e) if isinstance(e, BatchEvent) else None,
            should_cancel=lambda: len(batches) >= 2)  # fmt: skip
    meta = spec.store_path / "zarr.json"  # the store's attributes (zarr v3)
    record = json.loads(meta.read_text())
    record["attributes"]["slide_statistics"]["std"][0] = 0.0  # damaged: a spread of 0
    meta.write_text(json.dumps(record))
    before = PredictionStore.open(spec.store_path).expression()
    with pytest.raises(
        StoreError, match=r"d\.vst\.zarr cannot be resumed: .*damaged.*--overwrite"
    ):
        run(spec)
    after = PredictionStore.open(spec.store_path)
    np.testing.assert_array_equal(after.expression(), before)  # nothing computed is lost


def test_a_slide_without_tissue_for_the_statistics_is_refused_naming_why(tmp_path: Path) -> None:
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.run import run

    blank = tmp_path / "blank.png"  # synthetic: white glass, no tissue
    Image.fromarray(np.full((400, 400, 3), 250, np.uint8)).save(blank)
    spots = SpotGrid.from_coordinates(np.array([[100.0, 100.0], [200.0, 200.0]]), mpp=2.0,
                                      spot_diameter_um=55.0)  # fmt: skip
    spec = RunSpec(blank, _standardising(tmp_path), tmp_path / "b.vst.zarr", spots=spots,
                   mpp=2.0, allow_non_brightfield=True)  # fmt: skip
    with pytest.raises(
        ParameterError, match="standardises its features over the slide's tissue"
    ) as err:
        run(spec)
    assert "a model that does not standardise per slide can still predict it" in str(err.value)
    assert not spec.store_path.exists()  # nothing written
