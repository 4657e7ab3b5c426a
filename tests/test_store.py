"""PredictionStore: created whole or not at all, written chunk by chunk, read back by gene,
and refusing to resume onto another slide, model or grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import napari_virtual_st.store as store_module
from napari_virtual_st.errors import ParameterError, StoreError, StoreMismatchError
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.store import PredictionStore

GENES = ("EPCAM", "PTPRC", "COL1A1")


def small_grid(n: int = 10) -> SpotGrid:
    """``n`` spots on a line, 200 level-0 px apart."""
    xy = np.stack([np.arange(n) * 200.0 + 100, np.full(n, 100.0)], axis=1)
    return SpotGrid.from_coordinates(xy, mpp=0.5, spot_diameter_um=55.0)


def provenance(slide: str = "slide-a", model: str = "model-a") -> dict[str, Any]:
    return {
        "slide": {"name": f"{slide}.svs", "fingerprint": slide},
        "model": {"file": f"{model}.onnx", "sha256": model},
    }


def new_store(tmp_path: Path, **kwargs: Any) -> PredictionStore:
    options: dict[str, Any] = {
        "grid": small_grid(),
        "genes": GENES,
        "chunk_spots": 4,
        "provenance": provenance(),
    }
    options.update(kwargs)
    return PredictionStore.create(tmp_path / "s.vst.zarr", **options)


def values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(GENES))).astype(np.float32)


# -- creation ----------------------------------------------------------------------------------
def test_a_new_store_holds_the_grid_and_nothing_predicted(tmp_path: Path) -> None:
    grid = small_grid()
    store = new_store(tmp_path, grid=grid)
    assert store.path == tmp_path / "s.vst.zarr"
    assert (store.n_spots, store.chunk_spots, store.n_chunks) == (10, 4, 3)
    assert store.genes == GENES
    assert [store.chunk_slice(c) for c in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    np.testing.assert_array_equal(store.xy_level0_px, grid.xy_level0_px)
    np.testing.assert_array_equal(store.lattice_rc, grid.lattice_rc)
    assert store.spot_ids == [str(i) for i in range(10)]
    assert not store.done.any()
    assert not store.done_chunks().any()
    assert not store.is_complete
    assert np.isnan(store.expression()).all()
    assert store.attrs["status"] == "running"
    assert store.attrs["grid"]["fingerprint"] == grid.fingerprint
    assert store.attrs["slide"]["fingerprint"] == "slide-a"


def test_lattice_spots_are_named_row_col(tmp_path: Path) -> None:
    grid = SpotGrid.legacy_st((1000, 600), mpp=1.0)
    store = PredictionStore.create(tmp_path / "st.vst.zarr", grid=grid, genes=GENES)
    assert store.spot_ids[:3] == ["0_0", "0_1", "0_2"]


def test_barcodes_are_kept_as_spot_ids(tmp_path: Path) -> None:
    grid = SpotGrid.from_coordinates(
        [[10, 10], [20, 20]], mpp=0.5, spot_diameter_um=55, spot_ids=["AAAC-1", "TTTG-1"]
    )
    store = PredictionStore.create(tmp_path / "b.vst.zarr", grid=grid, genes=GENES)
    assert PredictionStore.open(store.path).spot_ids == ["AAAC-1", "TTTG-1"]


def test_an_existing_store_is_not_replaced_unless_asked(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.write_chunk(0, values(4))
    with pytest.raises(StoreError, match="already exists"):
        new_store(tmp_path)
    assert PredictionStore.open(store.path).done[:4].all()
    fresh = new_store(tmp_path, overwrite=True, genes=("A",))
    assert fresh.genes == ("A",)
    assert not fresh.done.any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.vst.zarr"]


def test_an_empty_grid_or_a_zero_chunk_is_refused(tmp_path: Path) -> None:
    empty = SpotGrid.from_coordinates(np.empty((0, 2)), mpp=0.5, spot_diameter_um=55)
    with pytest.raises(ParameterError, match="no spots"):
        new_store(tmp_path, grid=empty)
    with pytest.raises(ParameterError, match="chunk size must be at least 1"):
        new_store(tmp_path, chunk_spots=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "raised"),
    [(OSError("disk full"), StoreError), (RuntimeError("zarr broke"), RuntimeError)],
    ids=["os-error", "unexpected-error"],
)
def test_a_failed_creation_leaves_no_half_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, raised: type
) -> None:
    def fail(value: Any) -> Any:
        raise error

    monkeypatch.setattr(store_module, "_jsonable", fail)  # fails after the arrays are written
    with pytest.raises(raised, match=r"disk full|zarr broke") as info:
        new_store(tmp_path)
    if raised is StoreError:
        assert "cannot create the prediction store" in str(info.value)
        assert "s.vst.zarr" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_store_under_an_unwritable_path_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StoreError, match=r"cannot (create|write) the prediction store"):
        PredictionStore.create(blocker / "s.vst.zarr", grid=small_grid(), genes=GENES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_a_failed_overwrite_keeps_the_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = new_store(tmp_path)
    old.write_chunk(1, values(4))

    def fail(value: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_jsonable", fail)
    with pytest.raises(StoreError):
        new_store(tmp_path, overwrite=True)
    assert PredictionStore.open(old.path).done_chunks().tolist() == [False, True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.vst.zarr"]


def test_a_failed_replace_puts_the_old_store_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new store is complete but cannot take the old one's place: the old one, set
    aside meanwhile, is put back (atomic.move_into_place)."""
    old = new_store(tmp_path)
    old.write_chunk(0, values(4))
    rename = Path.rename

    def refuse_the_new_store(self: Path, target: Any) -> Any:
        if self.name.endswith(".tmp"):
            raise OSError("the disk went away")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_the_new_store)
    with pytest.raises(StoreError, match="the disk went away"):
        new_store(tmp_path, overwrite=True)
    monkeypatch.undo()
    assert PredictionStore.open(old.path).done_chunks().tolist() == [True, False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.vst.zarr"]


# -- records -----------------------------------------------------------------------------------
FULL_PROVENANCE: dict[str, Any] = {
    "slide": {
        "path": "/data/slides/a.svs",
        "name": "a.svs",
        "format": "aperio",
        "dimensions": [4000, 3000],
        "mpp": 0.5,
        "mpp_source": "file",
        "fingerprint": "slide-a",
    },
    "model": {
        "file": "nsl.onnx",
        "sha256": "model-a",
        "family": "nsl",
        "tile_px": 224,
        "tile_um": 112.0,
        "target": "log1p_cp10k",
        "metadata": {"name": "NSL HER2ST", "license": "MIT"},
        "providers": ["CPUExecutionProvider"],
    },
}


def test_the_store_gives_back_its_grid_and_records(tmp_path: Path) -> None:
    grid = SpotGrid.visium((3000, 2000), 0.5, origin_um=(10.0, 5.0))
    path = tmp_path / "v.vst.zarr"
    PredictionStore.create(path, grid=grid, genes=GENES, provenance=FULL_PROVENANCE)
    store = PredictionStore.open(path)

    rebuilt = store.grid
    assert (rebuilt.kind, rebuilt.mpp, rebuilt.spot_diameter_um, rebuilt.pitch_um) == (
        "visium",
        0.5,
        55.0,
        100.0,
    )
    assert rebuilt.fingerprint == grid.fingerprint == store.grid_fingerprint
    assert rebuilt.describe() == grid.describe()
    np.testing.assert_array_equal(rebuilt.xy_level0_px, grid.xy_level0_px)
    np.testing.assert_array_equal(rebuilt.lattice_rc, grid.lattice_rc)
    assert rebuilt.spot_ids is None
    assert store.grid is rebuilt  # read once

    model = store.model
    assert (model.file, model.sha256, model.family, model.target) == (
        "nsl.onnx",
        "model-a",
        "nsl",
        "log1p_cp10k",
    )
    assert (model.tile_px, model.tile_um, model.providers) == (
        224,
        112.0,
        ("CPUExecutionProvider",),
    )
    assert model.metadata == {"name": "NSL HER2ST", "license": "MIT"}
    assert model.display_name == "NSL HER2ST"

    slide = store.slide
    assert slide.path == Path("/data/slides/a.svs")
    assert (slide.name, slide.fingerprint, slide.format) == ("a.svs", "slide-a", "aperio")
    assert (slide.mpp, slide.mpp_source, slide.dimensions) == (0.5, "file", (4000, 3000))
    assert store.attrs["model"]["sha256"] == "model-a"  # the raw attrs stay for compatibility


def test_the_grid_of_a_store_keeps_the_barcodes(tmp_path: Path) -> None:
    grid = SpotGrid.from_coordinates(
        [[10, 10], [20, 20]], mpp=0.5, spot_diameter_um=55, spot_ids=["AAAC-1", "TTTG-1"]
    )
    store = PredictionStore.create(tmp_path / "b.vst.zarr", grid=grid, genes=GENES)
    assert store.grid.spot_ids == ("AAAC-1", "TTTG-1")
    assert store.grid.fingerprint == grid.fingerprint


def test_a_store_of_an_older_version_reads_missing_keys_as_none(tmp_path: Path) -> None:
    """Attributes written before a key existed: records say ``None``, the grid has no pitch
    or parameters, nothing raises."""
    store = new_store(tmp_path)
    group = zarr.open_group(str(store.path), mode="r+", zarr_format=3)
    attrs = dict(group.attrs)
    attrs["grid"] = {k: attrs["grid"][k] for k in ("kind", "spot_diameter_um", "mpp")}
    attrs["model"] = {"file": "old.onnx"}
    attrs["slide"] = {"name": "old.svs"}
    del attrs["spot_ids"]
    group.attrs.put(attrs)

    old = PredictionStore.open(store.path)
    assert (old.model.file, old.model.sha256, old.model.target, old.model.tile_px) == (
        "old.onnx",
        None,
        None,
        None,
    )
    assert old.model.metadata == {} and old.model.providers is None
    assert old.model.display_name == "old.onnx"
    assert (old.slide.name, old.slide.path, old.slide.fingerprint, old.slide.mpp) == (
        "old.svs",
        None,
        None,
        None,
    )
    assert old.slide.dimensions is None
    assert (old.grid.kind, old.grid.pitch_um, old.grid.params, old.grid.spot_ids) == (
        "explicit",
        0.0,
        {},
        None,
    )
    assert old.grid_fingerprint is None
    assert old.grid.match_distance_px == pytest.approx(55.0 / 0.5)
    assert old.spot_ids == [str(i) for i in range(10)]
    with pytest.raises(StoreMismatchError, match="different slide"):
        old.check_matches(slide_fingerprint="slide-a", model_sha256="model-a", grid=small_grid())

    attrs.pop("model"), attrs.pop("slide")
    group.attrs.put(attrs)
    bare = PredictionStore.open(store.path)
    assert bare.model.file is None and bare.slide.name is None


def test_a_store_without_a_grid_description_says_so(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    group = zarr.open_group(str(store.path), mode="r+", zarr_format=3)
    attrs = dict(group.attrs)
    attrs["grid"] = {"kind": "visium"}
    group.attrs.put(attrs)
    with pytest.raises(StoreError, match="records no usable spot grid"):
        _ = PredictionStore.open(store.path).grid


# -- opening -----------------------------------------------------------------------------------
def test_opening_something_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="prediction store not found"):
        PredictionStore.open(tmp_path / "missing.vst.zarr")
    folder = tmp_path / "plain_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="plain_folder is not a readable prediction store"):
        PredictionStore.open(folder)
    a_file = tmp_path / "file.vst.zarr"
    a_file.write_text("hello")
    with pytest.raises(StoreError, match=r"file\.vst\.zarr is not a readable prediction store"):
        PredictionStore.open(a_file)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["format"] = "something else"
    with pytest.raises(StoreError, match=r"other\.zarr is not a napari-virtual-st prediction"):
        PredictionStore.open(tmp_path / "other.zarr")


def test_a_store_opened_read_only_cannot_be_written(tmp_path: Path) -> None:
    new_store(tmp_path)
    store = PredictionStore.open(tmp_path / "s.vst.zarr")
    with pytest.raises(ValueError, match="read-only"):  # zarr's own read-only error
        store.write_chunk(0, values(4))
    assert not PredictionStore.open(tmp_path / "s.vst.zarr").done.any()


# -- writing and reading -----------------------------------------------------------------------
def test_a_written_chunk_is_marked_done_and_the_rest_stays_nan(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    chunk = values(4)
    store.write_chunk(1, chunk)
    reopened = PredictionStore.open(store.path)
    assert reopened.done.tolist() == [False] * 4 + [True] * 4 + [False] * 2
    assert reopened.done_chunks().tolist() == [False, True, False]
    expression = reopened.expression()
    assert expression.dtype == np.float32
    np.testing.assert_array_equal(expression[4:8], chunk)
    assert np.isnan(expression[:4]).all()
    assert np.isnan(expression[8:]).all()
    assert not reopened.is_complete


def test_a_store_is_complete_when_every_chunk_is_written(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    full = values(10)
    for c in (2, 0, 1):  # any order
        store.write_chunk(c, full[store.chunk_slice(c)])
    assert store.is_complete
    assert store.done_chunks().all()
    np.testing.assert_array_equal(PredictionStore.open(store.path).expression(), full)


def test_a_chunk_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    with pytest.raises(ParameterError, match=r"chunk 2 needs expression of shape \(2, 3\)"):
        store.write_chunk(2, values(4))
    assert not store.done.any()


def test_values_are_read_by_gene_in_the_order_asked(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    full = values(10)
    for c in range(store.n_chunks):
        store.write_chunk(c, full[store.chunk_slice(c)])
    np.testing.assert_array_equal(store.gene_values("PTPRC"), full[:, 1])
    np.testing.assert_array_equal(store.expression(["COL1A1", "EPCAM"]), full[:, [2, 0]])
    assert store.gene_index(["COL1A1", "PTPRC"]) == [2, 1]


def test_an_unknown_gene_is_named_in_the_error(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    with pytest.raises(ParameterError, match="gene 'GAPDH' is not predicted by this model"):
        store.gene_values("GAPDH")
    with pytest.raises(ParameterError, match="'MKI67'"):
        store.gene_index(["EPCAM", "MKI67"])
    with pytest.raises(ParameterError, match="'MKI67'"):
        store.expression(["MKI67"])


def test_variance_is_stored_beside_expression(tmp_path: Path) -> None:
    store = new_store(tmp_path, with_variance=True)
    assert store.has_variance
    mean, var = values(4), values(4, seed=1) ** 2
    store.write_chunk(0, mean, var)
    reopened = PredictionStore.open(store.path)
    np.testing.assert_array_equal(reopened.variance()[:4], var)
    np.testing.assert_array_equal(reopened.variance(["COL1A1"])[:4, 0], var[:, 2])
    assert np.isnan(reopened.variance()[4:]).all()
    with pytest.raises(ParameterError, match="holds variance; the chunk has none"):
        store.write_chunk(1, values(4))
    with pytest.raises(ParameterError, match=r"needs variance of shape \(4, 3\); got \(4, 2\)"):
        store.write_chunk(1, values(4), var[:, :2])
    assert not store.done[4:8].any()
    assert np.isnan(store.expression()[4:8]).all()  # nothing half-written


def test_asking_for_variance_the_model_never_gave_is_an_error(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert not store.has_variance
    with pytest.raises(StoreError, match="holds no variance"):
        store.variance()


def test_the_status_is_kept_on_disk(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.set_status("cancelled", spots_done=np.int64(4), error="stopped by the user")
    assert store.attrs["status"] == "cancelled"
    attrs = PredictionStore.open(store.path).attrs
    assert (attrs["status"], attrs["spots_done"], attrs["error"]) == (
        "cancelled",
        4,
        "stopped by the user",
    )
    assert attrs["model"]["sha256"] == "model-a"  # provenance survives status updates


# -- resuming onto the same slide, model and grid ----------------------------------------------
def test_the_same_slide_model_and_grid_match(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.check_matches(slide_fingerprint="slide-a", model_sha256="model-a", grid=small_grid())


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"slide_fingerprint": "slide-b", "slide_name": "b.svs"},
            r"different slide \(slide-a\.svs\), not b\.svs",
        ),
        (
            {"model_sha256": "model-b", "model_name": "b.onnx"},
            r"different model \(model-a\.onnx\), not b\.onnx",
        ),
        ({"grid": small_grid(11)}, "different spot grid settings"),
    ],
    ids=["slide", "model", "grid"],
)
def test_a_different_slide_model_or_grid_is_refused_naming_which(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    store = new_store(tmp_path)
    same: dict[str, Any] = {
        "slide_fingerprint": "slide-a",
        "model_sha256": "model-a",
        "grid": small_grid(),
    }
    with pytest.raises(StoreMismatchError, match=expected) as info:
        store.check_matches(**{**same, **changes})
    assert "s.vst.zarr" in str(info.value)
    assert "overwrite" in str(info.value)


def test_leftovers_of_a_creation_killed_half_way_are_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / ".s.vst.zarr.deadbeef.tmp"
    stale.mkdir()
    (stale / "junk").write_text("x")
    new_store(tmp_path)
    assert not stale.exists()
    assert (tmp_path / "s.vst.zarr").is_dir()


def test_a_store_missing_an_array_is_reported_as_damaged(tmp_path: Path) -> None:
    import shutil

    store = new_store(tmp_path)
    shutil.rmtree(store.path / "done")
    with pytest.raises(StoreError, match="damaged prediction store: it lacks 'done'"):
        PredictionStore.open(store.path)


def test_an_alignment_saved_with_the_store_is_read_back(tmp_path: Path) -> None:
    from napari_virtual_st.align import AlignmentError, Transform, fit_landmarks

    store = new_store(tmp_path)
    assert store.load_transform() is None
    src = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 80.0], [60.0, 70.0]])
    dst = src @ np.array([[0.9, 0.1], [-0.1, 0.9]]).T + [12.0, -3.0]
    fitted = fit_landmarks(src, dst, kind="affine")
    written = PredictionStore.open(store.path).save_transform(fitted)  # read-only open
    assert written == store.path / "transform.json"
    assert [p.name for p in store.path.iterdir() if p.name.startswith(".")] == []
    again = PredictionStore.open(store.path)  # still a readable store
    loaded = again.load_transform()
    assert isinstance(loaded, Transform)
    np.testing.assert_allclose(loaded.matrix, fitted.matrix)
    assert loaded.kind == "affine" and loaded.residual_px == pytest.approx(fitted.residual_px)
    assert again.n_spots == store.n_spots
    written.write_text("{not json")
    with pytest.raises(AlignmentError, match="not a saved alignment transform"):
        again.load_transform()


# -- spot context: per-tile values on disk, contextual values on reading ------------------------
CONTEXT = {"kind": "gaussian", "sigma_um": 100.0, "radius_um": 150.0}


def context_store(tmp_path: Path, grid: SpotGrid | None = None, **kwargs: Any) -> PredictionStore:
    """A store whose model declares a Gaussian context reaching the next spot on the line."""
    record = provenance()
    record["model"]["metadata"] = {"name": "smooth", "context": CONTEXT}
    return new_store(tmp_path, grid=grid or small_grid(), provenance=record, **kwargs)


def test_a_context_model_stores_per_tile_values_and_reads_back_contextual_ones(
    tmp_path: Path,
) -> None:
    from napari_virtual_st.context import SpotContext, apply_context, context_weights

    store = context_store(tmp_path, with_variance=True)
    tile = values(10)
    for chunk in range(store.n_chunks):
        part = store.chunk_slice(chunk)
        store.write_chunk(chunk, tile[part], np.abs(tile[part]))
    store = PredictionStore.open(store.path)
    assert store.is_contextual and store.model.context == SpotContext(100.0, 150.0)
    np.testing.assert_array_equal(store.expression(per_tile=True), tile)  # on disk: per-tile
    weights = context_weights(store.xy_level0_px * 0.5, SpotContext(100.0, 150.0))
    expected = apply_context(tile, weights)
    np.testing.assert_array_equal(store.expression(), expected)
    np.testing.assert_array_equal(store.gene_values("PTPRC"), expected[:, 1])
    np.testing.assert_array_equal(store.expression(["COL1A1", "EPCAM"]), expected[:, [2, 0]])
    np.testing.assert_array_equal(store.expression(spots=slice(3, 7)), expected[3:7])
    np.testing.assert_array_equal(store.variance(), apply_context(np.abs(tile), weights))
    # an interior spot is its neighbours' weighted mean; the spot at the end has one neighbour
    w = np.exp(-0.5)
    np.testing.assert_allclose(
        store.expression()[4], (tile[4] + w * (tile[3] + tile[5])) / (1 + 2 * w), rtol=1e-6
    )
    np.testing.assert_allclose(store.expression()[9], (tile[9] + w * tile[8]) / (1 + w), rtol=1e-6)


def test_contextual_values_use_only_spots_predicted_so_far(tmp_path: Path) -> None:
    store = context_store(tmp_path)  # chunks of 4: spots 0-3, 4-7, 8-9
    tile = values(10)
    store.write_chunk(1, tile[4:8])
    read = store.expression()
    assert np.isnan(read[:4]).all() and np.isnan(read[8:]).all()
    w = np.exp(-0.5)  # spot 4's neighbour 3 is not predicted: its weight is left out
    np.testing.assert_allclose(read[4], (tile[4] + w * tile[5]) / (1 + w), rtol=1e-6)
    store.write_chunk(0, tile[:4])
    store.forget_chunks([0])  # found damaged: its stale values count for nothing
    np.testing.assert_array_equal(store.expression(), read)


def test_a_spot_without_neighbours_in_reach_keeps_its_own_value(tmp_path: Path) -> None:
    xy = np.array([[100.0, 100.0], [300.0, 100.0], [5000.0, 100.0], [9000.0, 100.0]])
    grid = SpotGrid.from_coordinates(xy, mpp=0.5, spot_diameter_um=55.0)
    store = context_store(tmp_path, grid=grid, chunk_spots=2)
    tile = values(4)
    store.write_chunk(0, tile[:2])
    store.write_chunk(1, tile[2:])
    read = store.expression()
    np.testing.assert_array_equal(read[2:], tile[2:])  # 2.4 mm and 2 mm from any other spot
    w = np.exp(-0.5)
    np.testing.assert_allclose(read[0], (tile[0] + w * tile[1]) / (1 + w), rtol=1e-6)


def test_a_store_without_context_reads_its_stored_values(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    tile = values(10)
    for chunk in range(store.n_chunks):
        store.write_chunk(chunk, tile[store.chunk_slice(chunk)])
    assert not store.is_contextual and store.context_weights is None
    np.testing.assert_array_equal(store.expression(), tile)
    np.testing.assert_array_equal(store.expression(per_tile=True), tile)


def test_a_malformed_recorded_context_is_an_error_not_per_tile_values(tmp_path: Path) -> None:
    record = provenance()
    record["model"]["metadata"] = {"context": {"sigma_um": -1, "radius_um": 150}}
    store = new_store(tmp_path, provenance=record)
    with pytest.raises(StoreError, match=r"spot context it cannot use.*sigma_um"):
        store.expression()
