"""Nothing a user saved is lost or mixed: ``--overwrite`` only ever replaces a prediction store,
and a store has one writer at a time (the careless/hostile-user sweep of issue 18, items 1-2).

Every case goes through the real ``virtual-st`` command line and checks the exit status, the
one-line message and that what was on disk before is still there, unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import test_slide
from napari_virtual_st.cli import main
from napari_virtual_st.store import PredictionStore, is_prediction_store
from napari_virtual_st.writer_lock import StoreInUseError, holder_of, writer_lock
from synthetic_models import write_mean_colour_model


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name → sha256), to tell that nothing changed."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def one_line_error(err: str) -> str:
    """The CLI's error line; fails the test if there is a traceback or more than one line."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("virtual-st: error:")]
    assert len(lines) == 1, err
    return lines[0]


def predict_argv(slide: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", str(slide), "--model", str(model), "--out", str(out), "--quiet", *extra]


# -- 1. --overwrite never removes what is not a prediction store --------------------------------
def test_overwrite_refuses_an_ordinary_folder_and_leaves_every_file(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "my_thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "chapters" / "one.txt").write_text("months of work")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    before = tree_digest(folder)

    code = main(predict_argv(cmu_small_svs, synthetic_model, folder, "--overwrite"))

    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(folder) in line
    assert "not a prediction store" in line
    assert tree_digest(folder) == before


def test_overwrite_refuses_a_file_and_a_link_to_a_store(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "notes.vst.zarr"
    a_file.write_text("not a store")
    assert main(predict_argv(cmu_small_svs, synthetic_model, a_file, "--overwrite")) == 2
    assert "it is a file" in one_line_error(capsys.readouterr().err)
    assert a_file.read_text() == "not a store"

    real = tmp_path / "real.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, real)) == 0
    link = tmp_path / "link.vst.zarr"
    link.symlink_to(real, target_is_directory=True)
    before = tree_digest(real)
    capsys.readouterr()
    assert main(predict_argv(cmu_small_svs, synthetic_model, link, "--overwrite")) == 2
    assert "symbolic link" in one_line_error(capsys.readouterr().err)
    assert link.is_symlink()
    assert tree_digest(real) == before


def test_overwrite_replaces_a_store_of_ours(
    cmu_small_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_mean_colour_model(tmp_path / "first.onnx", n_genes=3)
    second = write_mean_colour_model(tmp_path / "second.onnx", n_genes=4)
    out = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, first, out)) == 0
    assert main(predict_argv(cmu_small_svs, second, out, "--overwrite")) == 0
    store = PredictionStore.open(out)
    assert store.attrs["model"]["file"] == "second.onnx"
    assert len(store.genes) == 4
    assert store.is_complete


def test_out_dot_is_a_one_line_error_that_leaves_the_folder(
    cmu_small_svs: Path,
    synthetic_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    for extra in ((), ("--overwrite",)):
        before = tree_digest(tmp_path)
        assert main(predict_argv(cmu_small_svs, synthetic_model, Path("."), *extra)) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "prediction store" in line
        assert tree_digest(tmp_path) == before


def test_is_prediction_store_reads_only_the_stores_own_record(tmp_path: Path) -> None:
    foreign = tmp_path / "other.zarr"
    foreign.mkdir()
    (foreign / "zarr.json").write_text('{"attributes": {"format": "something else"}}')
    assert not is_prediction_store(foreign)
    (foreign / "zarr.json").write_text("")  # damaged: cannot tell, so it is not ours
    assert not is_prediction_store(foreign)
    assert not is_prediction_store(tmp_path / "missing.vst.zarr")


# -- 2. one writer at a time ---------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from napari_virtual_st.writer_lock import writer_lock
with writer_lock(sys.argv[1], "a test holding the lock"):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def lock_held_by_another_process(store: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``store``'s writer lock until the block ends, when it is
    killed (a crash: the operating system releases the lock)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_naming_the_process_and_a_crash_frees_the_store(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, out)) == 0
    before = tree_digest(out)
    with lock_held_by_another_process(out) as holder:
        held_by = holder_of(out)
        assert held_by is not None
        assert (held_by["pid"], held_by["purpose"]) == (holder.pid, "a test holding the lock")
        capsys.readouterr()
        other = write_mean_colour_model(tmp_path / "other.onnx", n_genes=2)
        assert main(predict_argv(cmu_small_svs, other, out, "--overwrite")) == 2
        line = one_line_error(capsys.readouterr().err)
        assert f"in use by process {holder.pid}" in line
        assert tree_digest(out) == before
    assert holder_of(out) is None  # the holder crashed: the lock is free
    assert main(predict_argv(cmu_small_svs, other, out, "--overwrite")) == 0
    assert PredictionStore.open(out).attrs["model"]["file"] == "other.onnx"


def test_two_cli_runs_on_one_store_never_mix_models(cmu_small_svs: Path, tmp_path: Path) -> None:
    """Process A predicts model X (with variance); B tries model Y with --overwrite meanwhile."""
    model_x = write_mean_colour_model(
        tmp_path / "x.onnx", tile_px=16, tile_um=50.0, with_variance=True
    )
    model_y = write_mean_colour_model(tmp_path / "y.onnx", tile_px=16, tile_um=50.0, n_genes=3)
    out = tmp_path / "shared.vst.zarr"
    slow = ["--grid", "dense", "--min-tissue", "0", "--batch-size", "1"]
    cli = [sys.executable, "-m", "napari_virtual_st.cli"]
    run_a = subprocess.Popen(
        [*cli, *predict_argv(cmu_small_svs, model_x, out, *slow)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "done").exists() and time.monotonic() < deadline:
            assert run_a.poll() is None, "run A ended before run B could start"
            time.sleep(0.05)
        run_b = subprocess.run(
            [*cli, *predict_argv(cmu_small_svs, model_y, out, *slow, "--overwrite")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run_a.poll() is None, "run A ended before run B was refused: nothing was tested"
    finally:
        _, err_a = run_a.communicate(timeout=300)
    assert run_b.returncode == 2
    assert f"in use by process {run_a.pid}" in one_line_error(run_b.stderr)
    assert run_a.returncode == 0, err_a
    store = PredictionStore.open(out)
    assert store.attrs["model"]["file"] == "x.onnx"
    assert store.attrs["status"] == "complete"
    assert store.has_variance
    assert len(store.genes) == 5
    assert store.is_complete
    assert np.isfinite(store.expression()).all()
    assert not store.path.with_name(f".{out.name}.lock").exists()


def test_another_thread_of_the_same_process_is_refused_the_same_thread_nests(
    tmp_path: Path,
) -> None:
    import threading

    store = tmp_path / "s.vst.zarr"
    errors: list[BaseException] = []
    with writer_lock(store):
        with writer_lock(store):  # e.g. saving the alignment at the end of one's own run
            pass

        def second_writer() -> None:
            try:
                with writer_lock(store):
                    pass
            except StoreInUseError as exc:
                errors.append(exc)

        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join()
    assert len(errors) == 1
    assert f"process {os.getpid()}" in str(errors[0])
    with writer_lock(store):  # free again once released
        pass


def test_a_read_only_folder_is_a_clear_error(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(predict_argv(cmu_small_svs, synthetic_model, locked / "x.vst.zarr")) == 2
        assert "cannot write" in one_line_error(capsys.readouterr().err)
    finally:
        locked.chmod(0o755)


# -- 5. a model that outputs NaN or ±inf ----------------------------------------------------------
def test_a_model_giving_nan_or_inf_stops_the_run_naming_it_and_nothing_looks_complete(
    cmu_small_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    from onnx import numpy_helper

    path = write_mean_colour_model(tmp_path / "broken_bias.onnx", n_genes=5)
    model = onnx.load(path)  # SYNTHETIC: the bias of genes 1 and 3 made NaN and +inf
    for init in model.graph.initializer:
        if init.name == "b":
            bias = numpy_helper.to_array(init).copy()
            bias[1], bias[3] = np.nan, np.inf
            init.CopyFrom(numpy_helper.from_array(bias, "b"))
    onnx.save(model, path)
    out = tmp_path / "nan.vst.zarr"

    assert main(predict_argv(cmu_small_svs, path, out)) == 2

    line = one_line_error(capsys.readouterr().err)
    assert "broken_bias.onnx gave non-finite expression (NaN or ±inf)" in line
    assert "SYNTH1, SYNTH3" in line
    store = PredictionStore.open(out)
    assert store.attrs["status"] == "failed"
    assert not store.done.any()
    assert not np.isfinite(store.expression()).any()  # nothing of the model's output stored


# -- 7. a damaged store is seen, said and repaired -------------------------------------------------
def test_a_store_that_lost_chunks_is_reported_and_a_rerun_repairs_it_bit_identical(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--batch-size", "8")
    reference = tmp_path / "reference.vst.zarr"
    damaged = tmp_path / "damaged.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, reference, *args)) == 0
    assert main(predict_argv(cmu_small_svs, synthetic_model, damaged, *args)) == 0
    assert main(["check", str(damaged)]) == 0
    capsys.readouterr()
    chunks = damaged / "expression" / "c"
    (chunks / "1" / "0").unlink()  # a deleted chunk (a sync tool, a bad copy)
    truncated = chunks / "3" / "0"
    truncated.write_bytes(truncated.read_bytes()[:10])  # a truncated one (a full disk)

    assert main(["check", str(damaged)]) == 1
    report = capsys.readouterr().out
    assert "16 spots lost their saved values" in report
    assert "spots 8–15, 24–31" in report
    assert PredictionStore.open(damaged).is_complete  # the flags alone still say "done"

    export_to = tmp_path / "out.h5ad"
    assert main(["export", str(damaged), "--h5ad", str(export_to), "--quiet"]) == 0
    assert "16 spots lost their saved values" in capsys.readouterr().err

    assert main(predict_argv(cmu_small_svs, synthetic_model, damaged, *args)) == 0
    assert "repaired: 16 spots" in capsys.readouterr().err
    np.testing.assert_array_equal(
        PredictionStore.open(damaged).expression(), PredictionStore.open(reference).expression()
    )
    assert main(["check", str(damaged)]) == 0


def test_check_says_an_unfinished_store_is_unfinished(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "part.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, out, "--batch-size", "8")) == 0
    store = PredictionStore.open(out, mode="r+")
    store.forget_chunks([0, 2])  # as a cancelled run leaves it
    store.set_status("cancelled")
    capsys.readouterr()
    assert main(["check", str(out)]) == 1
    out_text = capsys.readouterr().out
    assert f"{store.n_spots - 16} of {store.n_spots} spots have predicted values" in out_text
    assert "unfinished (cancelled)" in out_text


# -- 9. measured values that are not counts ------------------------------------------------------
def test_negative_or_nan_measured_counts_are_refused_naming_the_file_and_how_many(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anndata = pytest.importorskip("anndata")
    from napari_virtual_st.errors import VirtualSTError
    from napari_virtual_st.measured import read_measured

    # SYNTHETIC: 3 spots × 2 genes of log-normalised-looking values, as a user might pass
    values = np.array([[1.0, -0.5], [np.nan, 2.0], [0.0, np.nan]], np.float32)
    adata = anndata.AnnData(X=values, obsm={"spatial": np.array([[0, 0], [1, 1], [2, 2.0]])})
    adata.var_names = ["ERBB2", "KRT8"]
    path = tmp_path / "normalised.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(
        VirtualSTError, match=r"normalised\.h5ad holds 2 NaN or infinite and 1 negative values"
    ):
        read_measured(path)
    store = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, store)) == 0
    capsys.readouterr()
    assert main(["evaluate", str(store), "--measured", str(path)]) == 2
    assert "normalised.h5ad holds 2 NaN or infinite" in one_line_error(capsys.readouterr().err)


# -- 4. an export on a full disk; a killed export's leftovers ----------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB file system (tmpfs), where the machine lets the test mount one."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_an_export_on_a_full_disk_is_one_line_exit_2_and_keeps_the_old_file(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, small_disk: Path
) -> None:
    store = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, store)) == 0
    old = small_disk / "out.h5ad"
    old.write_bytes(b"an earlier export")
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:  # fill the disk to the last block
            fh.write(b"\0" * 4096)
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    assert free < 64 * 1024
    cli = [sys.executable, "-m", "napari_virtual_st.cli"]
    for _ in range(2):  # (h5py crashed at exit 3 times out of 3)
        done = subprocess.run(
            [*cli, "export", str(store), "--h5ad", str(old), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "No space left on device" in one_line_error(done.stderr)
    assert old.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "out.h5ad"]


def test_a_killed_exports_hidden_leftover_is_removed_by_the_next_export(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    store = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, store)) == 0
    out = tmp_path / "out.h5ad"
    leftover = tmp_path / ".out.1a2b3c4d.tmp.h5ad"
    leftover.write_bytes(b"half an h5ad: a killed export")
    assert main(["export", str(store), "--h5ad", str(out), "--quiet"]) == 0
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


# -- 6. a fluorescence slide is not predicted as if it were H&E ------------------------------------
@pytest.mark.parametrize(
    "name", ["hamamatsu_test3-DAPI-2-387.ndpi", "hamamatsu_test3-TRITC-2-560.ndpi"]
)
def test_a_fluorescence_slide_is_refused_unless_the_user_says_it_is_brightfield(
    name: str, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import WSI_DIR

    slide = WSI_DIR / name
    if not slide.exists():
        pytest.skip(f"real slide {name} not available: ../shared/data/wsi is absent")
    out = tmp_path / "fluo.vst.zarr"
    assert main(predict_argv(slide, synthetic_model, out)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"{name} does not look like a bright-field H&E slide" in line
    assert "--allow-non-brightfield" in line
    assert not out.exists()
    assert main(predict_argv(slide, synthetic_model, out, "--allow-non-brightfield")) == 0


def test_real_brightfield_images_pass_the_check_even_with_a_black_background() -> None:
    from conftest import SHARED_DATA
    from napari_virtual_st.slide import Slide
    from napari_virtual_st.tissue import check_brightfield

    images = [
        SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs",
        SHARED_DATA / "her2st_subset" / "app-imgs" / "A1_HE_image_dark.png",  # masked black
        SHARED_DATA / "stutility_mob" / "MOB1.jpg",
    ]
    present = [p for p in images if p.exists()]
    if not present:
        pytest.skip("real images not available: ../shared/data is absent")
    for path in present:
        with Slide(path, mpp=1.0) as slide:
            check_brightfield(slide)  # raises if refused


# -- unclear errors made clear --------------------------------------------------------------------
def test_a_store_with_an_empty_array_description_is_a_one_line_error(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, out)) == 0
    (out / "expression" / "zarr.json").write_text("")
    capsys.readouterr()
    for argv in (["check", str(out)], ["export", str(out), "--h5ad", str(tmp_path / "o.h5ad")]):
        assert main(argv) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "damaged prediction store" in line
        assert "'expression'" in line


def test_a_folder_named_like_a_slide_is_called_a_folder(
    synthetic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "x.svs"
    folder.mkdir()
    assert main(predict_argv(folder, synthetic_model, tmp_path / "o.vst.zarr")) == 2
    assert "x.svs is a folder" in one_line_error(capsys.readouterr().err)


def test_a_store_records_the_slides_absolute_path_when_given_a_relative_one(
    cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / cmu_small_svs.name).symlink_to(cmu_small_svs)
    monkeypatch.chdir(tmp_path)
    relative = Path("slides") / cmu_small_svs.name
    assert main(predict_argv(relative, synthetic_model, tmp_path / "r.vst.zarr")) == 0
    recorded = PredictionStore.open(tmp_path / "r.vst.zarr").slide.path
    assert recorded is not None and recorded.is_absolute()
    monkeypatch.chdir(tmp_path / "slides")  # another folder: the record still finds it
    assert recorded.exists()


# -- damaged slides through the command line ------------------------------------------------------
DAMAGED_SLIDES = {
    "truncated mid tiles": test_slide._damaged_svs_mid_tiles,
    "truncated after header": test_slide._damaged_svs_after_header,
    "zeroed tiles": test_slide._damaged_svs_zeroed_tiles,
    "random bytes .svs": test_slide._random_bytes_svs,
    "random bytes .tif": test_slide._random_bytes_tif,
    "truncated svs named .tif": test_slide._truncated_svs_named_tif,
    "empty": test_slide._empty_svs,
    "truncated png": test_slide._truncated_png,
}


@pytest.mark.parametrize("make", DAMAGED_SLIDES.values(), ids=DAMAGED_SLIDES.keys())
def test_a_damaged_slide_is_one_line_on_stderr_exit_2_and_the_store_at_out_is_kept(
    make: Callable[[Path, Path], Path],
    cmu_small_svs: Path,
    synthetic_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "earlier.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, out)) == 0
    before = tree_digest(out)
    capsys.readouterr()
    damaged = make(cmu_small_svs, tmp_path)

    code = main(predict_argv(damaged, synthetic_model, out, "--overwrite"))

    err = capsys.readouterr().err
    assert code == 2
    assert tree_digest(out) == before
    line = one_line_error(err)
    assert damaged.name in line or "damaged" in line
    # Besides the error, at most the run's own status line (the model it loaded): no
    # library's warnings (tifffile logs some for damaged files) reach the user.
    others = [x for x in err.splitlines() if x.strip() and x != line]
    assert all(x.startswith("model ") for x in others), err
