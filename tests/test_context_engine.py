"""Spot context through the engine: a model declaring ``vst.context`` is run by the CLI, resumed,
shown progressively, evaluated and exported with the same contextual values everywhere, and
a model without the key is as before (issue 19, item 2)."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.cli import main
from napari_virtual_st.context import SpotContext, apply_context, context_weights
from napari_virtual_st.run import BatchEvent, StoreReadyEvent, run_events, run_outcome
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.store_view import StoreView
from runs import drain, run_request
from synthetic_models import write_mean_colour_model

#: Visium spots are 100 µm apart: this kernel reaches two rings of neighbours.
CONTEXT = SpotContext(sigma_um=100.0, radius_um=250.0)
DESCRIBED = "contextual (Gaussian context, σ 100 µm within 250 µm)"


def _model(path: Path, context: SpotContext | None = CONTEXT, **kwargs: object) -> Path:
    """The synthetic mean-colour model (16 px tiles of 55 µm), declaring ``context``."""
    overrides = {} if context is None else {"vst.context": context.to_json()}
    return write_mean_colour_model(
        path, tile_px=16, tile_um=55.0, metadata_overrides=overrides, **kwargs
    )


def _expected(store: PredictionStore, tile: np.ndarray) -> np.ndarray:
    """The kernel's renormalised mean of ``tile``, from spot centres in µm (independently of
    the store's own weights)."""
    xy_um = store.xy_level0_px * store.attrs["grid"]["mpp"]
    return apply_context(tile, context_weights(xy_um, CONTEXT))


def _predict(slide: Path, model: Path, out: Path, *extra: str) -> int:
    return main(
        ["predict", str(slide), "--model", str(model), "--out", str(out), "--quiet", *extra]
    )


# -- the command line and the exports ----------------------------------------------------------
def test_cli_predict_and_export_give_the_kernels_mean_of_the_per_tile_values(
    cmu_small_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anndata as ad

    smooth, plain = tmp_path / "smooth.vst.zarr", tmp_path / "plain.vst.zarr"
    assert _predict(cmu_small_svs, _model(tmp_path / "smooth.onnx"), smooth) == 0
    assert f"values {DESCRIBED}" in capsys.readouterr().err
    assert _predict(cmu_small_svs, _model(tmp_path / "plain.onnx", None), plain) == 0
    assert "values per-tile" in capsys.readouterr().err

    store, old = PredictionStore.open(smooth), PredictionStore.open(plain)
    tile = store.expression(per_tile=True)
    assert store.is_complete and store.model.context == CONTEXT
    # the same graph: the store holds exactly what the model without context gives
    np.testing.assert_array_equal(tile, old.expression())
    np.testing.assert_array_equal(old.expression(), old.expression(per_tile=True))
    expected = _expected(store, tile)
    assert np.isfinite(expected).all() and not np.array_equal(expected, tile)
    np.testing.assert_array_equal(store.expression(), expected)

    h5ad, geojson = tmp_path / "smooth.h5ad", tmp_path / "smooth.geojson"
    argv = ["export", str(smooth), "--h5ad", str(h5ad), "--geojson", str(geojson), "--quiet"]
    assert main(argv) == 0
    adata = ad.read_h5ad(h5ad)
    index = adata.obs["spot_index"].to_numpy()
    np.testing.assert_array_equal(adata.X, expected[index])
    np.testing.assert_array_equal(adata.layers["per_tile"], tile[index])
    record = adata.uns["virtual_st"]
    assert record["values"] == DESCRIBED
    assert dict(record["context"]) == CONTEXT.as_dict()
    document = json.loads(geojson.read_text(encoding="utf-8"))
    assert document["virtual_st"]["values"] == DESCRIBED
    assert document["virtual_st"]["context"] == CONTEXT.as_dict()
    detections = {f["properties"]["name"]: f["properties"] for f in document["features"]}
    for i, name in enumerate(store.spot_ids):
        properties = detections[name]
        assert properties["metadata"] == {"virtual_st_values": DESCRIBED}
        got = [properties["measurements"][g] for g in store.genes]
        np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-6)

    # a model without the key: per-tile values, said so, and no per-tile layer beside them
    h5ad_old = tmp_path / "plain.h5ad"
    assert main(["export", str(plain), "--h5ad", str(h5ad_old), "--quiet"]) == 0
    adata = ad.read_h5ad(h5ad_old)
    np.testing.assert_array_equal(adata.X, tile[adata.obs["spot_index"].to_numpy()])
    assert adata.uns["virtual_st"]["values"] == "per-tile"
    assert "context" not in adata.uns["virtual_st"] and "per_tile" not in adata.layers


def test_spots_at_the_tissue_edge_and_alone_are_the_mean_of_what_is_there(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    """Explicit spots: a cluster, one spot at its edge, one spot far from any other."""
    from napari_virtual_st.grid import SpotGrid
    from napari_virtual_st.run import RunSpec, run

    mpp = 0.499
    centre = np.array([1100.0, 1500.0])
    step = 100.0 / mpp  # 100 µm in level-0 px
    cluster = centre + step * np.array([[dx, dy] for dx in range(3) for dy in range(3)])
    alone = np.array([[200.0, 300.0]])  # ≥ 0.5 mm from the cluster
    grid = SpotGrid.from_coordinates(np.vstack([cluster, alone]), mpp=mpp, spot_diameter_um=55.0)
    spec = RunSpec(
        slide_path=cmu_small_svs,
        model_path=_model(tmp_path / "smooth.onnx"),
        store_path=tmp_path / "spots.vst.zarr",
        spots=grid,
        batch_size=4,
    )
    store = run(spec)
    tile = store.expression(per_tile=True)
    read = store.expression()
    np.testing.assert_array_equal(read[9], tile[9])  # nobody within 250 µm: its own value
    corner, middle = 0, 4  # (0, 0) reaches 7 of the other 8 (not the far corner), (1, 1) all 8
    for spot in (corner, middle):
        d = np.hypot(*((cluster - cluster[spot]) * mpp).T)
        w = np.where(d <= CONTEXT.radius_um, np.exp(-(d**2) / (2 * CONTEXT.sigma_um**2)), 0.0)
        np.testing.assert_allclose(read[spot], w @ tile[:9] / w.sum(), rtol=1e-5)
    # an edge spot is not pulled towards zero: a constant field stays constant
    assert (read[:9].min(axis=0) >= tile[:9].min(axis=0) - 1e-6).all()


def test_a_malformed_context_is_refused_naming_the_key(
    cmu_small_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_mean_colour_model(
        tmp_path / "bad.onnx",
        tile_px=16,
        tile_um=55.0,
        metadata_overrides={"vst.context": '{"kind": "gaussian", "sigma_um": 100}'},
    )
    assert _predict(cmu_small_svs, model, tmp_path / "bad.vst.zarr") == 2
    err = capsys.readouterr().err
    assert "metadata 'vst.context': missing radius_um" in err
    assert not (tmp_path / "bad.vst.zarr").exists()


def test_models_lists_per_tile_and_contextual_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_virtual_st import registry

    folder = tmp_path / "bundled"
    folder.mkdir()
    _model(folder / "a_smooth.onnx")
    _model(folder / "b_plain.onnx", None)
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: folder)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "a_smooth: baseline, 5 genes" in out and f"    values: {DESCRIBED}" in out
    assert "    values: per-tile" in out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["a_smooth"]["context"] == CONTEXT.as_dict()
    assert rows["b_plain"]["context"] is None and rows["b_plain"]["values"] == "per-tile"


# -- resuming and the viewer -----------------------------------------------------------------
def test_a_cancelled_contextual_run_resumes_bit_identical(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path / "smooth.onnx")
    reference = run_request(
        cmu_small_svs, model, tmp_path / "reference.vst.zarr", preview=False, batch_size=4
    )
    drain(run_events(reference))
    request = run_request(
        cmu_small_svs, model, tmp_path / "resumed.vst.zarr", preview=False, batch_size=4
    )
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
            if batches == 3:
                cancel.set()
    assert outcome.cancelled
    partial = PredictionStore.open(request.store_path)
    assert 0 < partial.done.sum() < partial.n_spots
    # a half-done store reads contextual values over the spots it has
    tile = partial.expression(per_tile=True)
    np.testing.assert_array_equal(partial.expression(), _expected(partial, tile))

    drain(run_events(request))
    resumed, whole = (
        PredictionStore.open(request.store_path),
        PredictionStore.open(reference.store_path),
    )
    assert resumed.is_complete
    np.testing.assert_array_equal(
        resumed.expression(per_tile=True), whole.expression(per_tile=True)
    )
    np.testing.assert_array_equal(resumed.expression(), whole.expression())


def test_the_viewer_fills_in_progressively_and_ends_on_the_stores_values(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path / "smooth.onnx", with_variance=True)
    request = run_request(cmu_small_svs, model, tmp_path / "run.vst.zarr", batch_size=8)
    events, path = drain(run_events(request))
    view = next(e for e in events if isinstance(e, StoreReadyEvent)).view
    assert view.is_contextual and view.values_description == DESCRIBED
    assert np.isnan(view.expression).all()
    batches = [e for e in events if isinstance(e, BatchEvent)]
    assert len(batches) > 2
    known = np.full_like(view.tile_expression, np.nan)
    for k, batch in enumerate(batches):
        spots = batch.progress.spots
        view.update(spots, batch.expression, batch.variance)
        np.testing.assert_array_equal(view.tile_expression[spots], batch.expression)
        known[spots] = batch.expression
        if k in (0, len(batches) // 2):  # the first heatmap: each spot from what is known
            np.testing.assert_array_equal(view.expression, _expected_view(view, known))
            assert np.isfinite(view.heatmap(view.genes[0])).any()
    store = PredictionStore.open(path)
    np.testing.assert_array_equal(view.expression, store.expression())
    np.testing.assert_array_equal(view.variance, store.variance())
    np.testing.assert_array_equal(view.tile_expression, store.expression(per_tile=True))
    reopened = StoreView.open(path)
    np.testing.assert_array_equal(reopened.expression, store.expression())
    np.testing.assert_array_equal(reopened.heatmap("SYNTH2"), view.heatmap("SYNTH2"))
    # what the plugin does when the run ends: take the store's per-tile values again
    view.update(slice(None), reopened.tile_expression, reopened.tile_variance)
    np.testing.assert_array_equal(view.expression, store.expression())


def _expected_view(view: StoreView, known: np.ndarray) -> np.ndarray:
    xy_um = view.xy_level0_px * view.mpp
    return apply_context(known, context_weights(xy_um, CONTEXT))


# -- predict --measured and evaluate -----------------------------------------------------------
def test_predict_measured_and_evaluate_score_the_contextual_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """HER2ST A1's own spots, a synthetic model named with five of its genes."""
    from her2st import workshop_data
    from napari_virtual_st.compare import compare
    from napari_virtual_st.measured import read_legacy_st

    data = workshop_data()
    a1 = next(s for s in data.her2st_sections() if s.name == "A1")
    measured = read_legacy_st(a1.counts, a1.spots, a1.image, pixel_scale=a1.pixel_scale)
    mpp = data.mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    genes = list(measured.genes[:5])
    model = write_mean_colour_model(
        tmp_path / "smooth.onnx",
        tile_px=16,
        tile_um=55.0,
        metadata_overrides={
            "vst.context": CONTEXT.to_json(),
            "vst.genes": json.dumps(genes),
            "vst.target": "log1p_cp10k",
        },
    )
    out = tmp_path / "a1.vst.zarr"
    measured_args = ["--measured", str(a1.counts), "--spots", str(a1.spots)]
    measured_args += ["--pixel-scale", repr(a1.pixel_scale)]
    image = data._cleaned_copy(a1.image, a1.mask_boxes, a1.black_background)
    assert _predict(image, model, out, "--mpp", repr(mpp), *measured_args) == 0
    store = PredictionStore.open(out)
    assert store.n_spots == len(measured.spot_ids) and store.is_complete
    expected = _expected(store, store.expression(per_tile=True))
    result = compare(store, measured)
    predicted = store.expression()
    np.testing.assert_array_equal(predicted, expected)
    assert result.n_spots > 300
    capsys.readouterr()
    assert result.values == DESCRIBED
    table = tmp_path / "genes.csv"
    assert main(["evaluate", str(out), *measured_args, "--csv", str(table)]) == 0
    assert f"predicted values: {DESCRIBED}" in capsys.readouterr().err
    with table.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and {r["predicted_values"] for r in rows} == {DESCRIBED}


def test_a_cohort_run_gives_the_same_contextual_values_as_the_cli(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.cohort import CohortSpec, run_cohort

    model = _model(tmp_path / "smooth.onnx")
    (result,) = run_cohort(
        [cmu_small_svs], CohortSpec(model, tmp_path / "cohort", workers=1, processes=False)
    )
    assert result.ok, result
    cohort_store = PredictionStore.open(result.store)
    assert _predict(cmu_small_svs, model, tmp_path / "cli.vst.zarr") == 0
    cli_store = PredictionStore.open(tmp_path / "cli.vst.zarr")
    assert cohort_store.is_contextual and cohort_store.is_complete
    np.testing.assert_array_equal(cohort_store.expression(), cli_store.expression())
    np.testing.assert_array_equal(
        cohort_store.expression(), _expected(cohort_store, cohort_store.expression(per_tile=True))
    )


# -- the learnt kind (rings): the same engine paths --------------------------------------------
#: Visium spots are 100 µm apart: itself, then rings to 120 µm (the 6 nearest) and 200 µm.
RINGS = SpotContext.rings(
    [120.0, 200.0],
    [[1.0, 0.5, 0.1], [1.0, 0.0, 0.0], [0.2, 1.0, 1.0], [1.0, 0.3, 0.3], [1.0, 2.0, 0.0]],
)


def _expected_rings(xy_um: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """Written out from the kernel's definition (not through ``apply_context``)."""
    a = np.asarray(RINGS.coefficients)  # (G, 3)
    d = np.hypot(*(xy_um[:, None, :] - xy_um[None, :, :]).transpose(2, 0, 1))
    ring = np.where(d <= 120.0, 1, np.where(d <= 200.0, 2, -1))
    np.fill_diagonal(ring, 0)
    have = np.isfinite(tile).all(axis=1)
    out = np.full(tile.shape, np.nan)
    for i in np.flatnonzero(have):
        near = np.flatnonzero((ring[i] >= 0) & have)
        w = a[:, ring[i, near]].T  # (neighbours, G)
        out[i] = (w * tile[near]).sum(axis=0) / w.sum(axis=0)
    return out


def test_a_model_declaring_rings_runs_through_predict_and_export_with_the_functions_values(
    cmu_small_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anndata as ad

    out = tmp_path / "rings.vst.zarr"
    assert _predict(cmu_small_svs, _model(tmp_path / "rings.onnx", RINGS), out) == 0
    assert "learnt ring context" in capsys.readouterr().err
    store = PredictionStore.open(out)
    assert store.is_complete and store.model.context == RINGS
    tile = store.expression(per_tile=True)
    xy_um = store.xy_level0_px * store.attrs["grid"]["mpp"]
    expected = _expected_rings(xy_um, tile.astype(np.float64))
    values = store.expression()
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    np.testing.assert_array_equal(values[:, 1], tile[:, 1])  # a gene weighing only itself
    # a subset of genes, read as the gene browser reads them, uses those genes' weights
    np.testing.assert_array_equal(store.expression(["SYNTH4", "SYNTH2"]), values[:, [4, 2]])
    np.testing.assert_array_equal(store.gene_values("SYNTH3"), values[:, 3])

    h5ad = tmp_path / "rings.h5ad"
    assert main(["export", str(out), "--h5ad", str(h5ad), "--quiet"]) == 0
    adata = ad.read_h5ad(h5ad)
    index = adata.obs["spot_index"].to_numpy()
    np.testing.assert_array_equal(adata.X, values[index])
    assert adata.uns["virtual_st"]["values"].startswith("contextual (learnt ring context")
    recorded = adata.uns["virtual_st"]["context"]  # (h5ad keeps the lists as arrays)
    assert recorded["kind"] == "rings"
    np.testing.assert_array_equal(recorded["ring_edges_um"], RINGS.ring_edges_um)
    np.testing.assert_array_equal(recorded["coefficients"], RINGS.coefficients)


def test_the_viewer_fills_in_a_rings_model_progressively_to_the_stores_values(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path / "rings.onnx", RINGS, with_variance=True)
    request = run_request(cmu_small_svs, model, tmp_path / "run.vst.zarr", batch_size=8)
    events, path = drain(run_events(request))
    view = next(e for e in events if isinstance(e, StoreReadyEvent)).view
    batches = [e for e in events if isinstance(e, BatchEvent)]
    known = np.full_like(view.tile_expression, np.nan)
    xy_um = view.xy_level0_px * view.mpp
    for k, batch in enumerate(batches):
        view.update(batch.progress.spots, batch.expression, batch.variance)
        known[batch.progress.spots] = batch.expression
        if k == len(batches) // 2:  # half-way: each spot from the neighbours known so far
            np.testing.assert_allclose(
                view.expression, _expected_rings(xy_um, known.astype(np.float64)), rtol=1e-5
            )
    store = PredictionStore.open(path)
    np.testing.assert_array_equal(view.expression, store.expression())
    np.testing.assert_array_equal(view.variance, store.variance())


@pytest.mark.parametrize(
    ("coefficients", "fragment"),
    [
        ([[1.0, 0.5, 0.1]] * 4, "coefficients for 4 genes, but the model predicts 5"),
        ([[1.0, -0.5, 0.1]] * 5, "negative weight"),
    ],
)
def test_a_rings_model_with_wrong_coefficients_is_refused(
    cmu_small_svs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    coefficients: list,
    fragment: str,
) -> None:
    text = json.dumps({"kind": "rings", "ring_edges_um": [120, 200], "coefficients": coefficients})
    model = write_mean_colour_model(
        tmp_path / "bad.onnx", tile_px=16, tile_um=55.0, metadata_overrides={"vst.context": text}
    )
    assert _predict(cmu_small_svs, model, tmp_path / "bad.vst.zarr") == 2
    err = capsys.readouterr().err
    assert "metadata 'vst.context'" in err and fragment in err
    assert not (tmp_path / "bad.vst.zarr").exists()
