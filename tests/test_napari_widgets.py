"""The Predict widget and the Gene browser, driven in a real viewer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from napari.utils.status_messages import status_format
from PIL import Image

from heatmap_draws import heatmap_draw_counts
from napari_virtual_st._napari.gene_browser import GeneBrowser
from napari_virtual_st._napari.labels import set_text
from napari_virtual_st._napari.layer_views import LayerViews
from napari_virtual_st._napari.layers import find_layers, set_canvas_colour_bars, vst_meta
from napari_virtual_st._napari.predict_widget import PredictWidget
from napari_virtual_st._napari.run_layers import RunLayers
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.registry import default_model
from napari_virtual_st.run import BatchEvent
from napari_virtual_st.store import PredictionStore

PLUGIN = "napari-virtual-st"
RUN_TIMEOUT_MS = 120_000


def _widget(viewer, qtbot) -> PredictWidget:
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict expression")
    return widget


def _browse(viewer, store: Path) -> tuple[GeneBrowser, object]:
    """Open a store in the viewer and dock a Gene browser on it."""
    viewer.open(store, plugin=PLUGIN)
    browser = GeneBrowser(viewer)
    viewer.window.add_dock_widget(browser, name="Gene browser")
    return browser, views_of(viewer).get(store)


def _run(widget: PredictWidget, qtbot) -> None:
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def _messages(severity: str | None = None, since: int = 0) -> list[str]:
    """Messages of napari notifications (of one severity) from record ``since`` on."""
    return [
        str(n.message)
        for n in notification_manager.records[since:]
        if severity is None or str(n.severity) == severity
    ]


def test_run_on_the_bundled_slide_fills_heatmaps_progressively(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    (slide_layer,) = viewer.open_sample(PLUGIN, "cmu1_small_region")
    widget = _widget(viewer, qtbot)
    assert widget.slide.value is slide_layer and widget.mpp.native.isHidden()
    assert widget.model.value == default_model().path  # the bundled model
    assert "250 genes" in widget.model_info.value and "110 µm" in widget.model_info.value
    assert widget.provider.value == "Runs on: CPU"
    widget.output.value = tmp_path / "bundled.vst.zarr"
    widget.batch_size = 16
    finite_counts = heatmap_draw_counts(viewer)
    before = len(notification_manager.records)
    _run(widget, qtbot)

    assert widget.last_outcome is not None and widget.last_outcome.error is None
    store = PredictionStore.open(tmp_path / "bundled.vst.zarr")
    assert store.is_complete and len(store.genes) == 250
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    (spots,) = find_layers(viewer, store.path, "spots")
    gene = vst_meta(heatmap)["gene"]
    assert gene == store.genes[0]
    drawn = np.unique(heatmap.data[np.isfinite(heatmap.data)])
    # (the bundled model predicts log1p values: a negative one would be drawn as 0)
    np.testing.assert_array_equal(drawn, np.unique(np.maximum(store.gene_values(gene), 0)))
    assert list(spots.features.columns) == ["spot", gene]
    # batches landed in several redraws while the run went on, then the whole map
    drawn_counts = [c for c in finite_counts if c]  # the layer exists, empty, from Run on
    assert len(drawn_counts) >= 2 and drawn_counts[0] < drawn_counts[-1]
    assert drawn_counts[-1] == 2 * store.n_spots  # two pixels per Visium spot
    assert widget.progress_bar.value == store.n_spots
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.status.value.startswith("Done:") and str(store.path) in widget.status.value
    assert viewer.layers.selection.active is heatmap  # status bar shows its values
    assert not _messages("warning", before) and not _messages("error", before)  # worker's too


def test_the_predict_panel_docked_from_the_plugin_menu_runs_without_warnings(
    make_napari_viewer, qtbot, tmp_path: Path, monkeypatch
) -> None:
    # napari gives a panel docked from its Plugins menu a proxy of the viewer that warns on
    # every private attribute access (and warnings are errors in this test suite)
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    assert isinstance(widget, PredictWidget)
    widget.output.value = tmp_path / "docked.vst.zarr"
    before = len(notification_manager.records)
    made: list[object] = []
    viewer.layers.events.inserted.connect(lambda event: made.append(event.value))
    visuals: list[object] = []
    make_visual = LayerViews.make_visual

    def recorded(self) -> None:
        make_visual(self)
        visuals.append(self.visual)

    monkeypatch.setattr(LayerViews, "make_visual", recorded)
    _run(widget, qtbot)

    assert widget.last_outcome is not None and widget.last_outcome.error is None
    assert not _messages(None, before)  # no error or warning shown to the user
    store = PredictionStore.open(tmp_path / "docked.vst.zarr")
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    assert np.isfinite(heatmap.data).sum() == 2 * store.n_spots
    assert heatmap in made and find_layers(viewer, store.path, "spots")
    # napari drew it with the canvas visual made before the layer was added
    assert viewer.window._qt_viewer.canvas.layer_to_visual[heatmap] in visuals


def test_a_run_of_a_model_with_variance_adds_its_uncertainty_layer_hidden(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "var.onnx", n_genes=12, with_variance=True)
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    widget.add_model(model)
    widget.output.value = tmp_path / "var.vst.zarr"
    _run(widget, qtbot)

    assert widget.last_outcome is not None and widget.last_outcome.error is None
    store = PredictionStore.open(tmp_path / "var.vst.zarr")
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    (sd,) = find_layers(viewer, store.path, "uncertainty")
    gene = vst_meta(heatmap)["gene"]
    assert vst_meta(sd)["gene"] == gene and heatmap.visible and not sd.visible
    (column,) = store.gene_index([gene])
    expected_sd = np.sqrt(np.maximum(store.variance()[:, column], 0.0))
    np.testing.assert_allclose(
        np.unique(sd.data[np.isfinite(sd.data)]), np.unique(expected_sd), rtol=1e-6
    )
    assert viewer.layers.selection.active is heatmap  # (the values, not the SD, under the cursor)


def test_a_run_that_ends_before_its_layers_are_made_still_shows_them(
    make_napari_viewer, qtbot, tmp_path: Path, monkeypatch
) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    widget = _widget(viewer, qtbot)
    widget.output.value = tmp_path / "quick.vst.zarr"
    ended: list[bool] = []
    make_view = RunLayers._make_view

    def after_the_run(self, *args) -> None:  # napari's views of the layers wait for the end
        qtbot.waitUntil(lambda: bool(ended), timeout=RUN_TIMEOUT_MS)
        make_view(self, *args)

    monkeypatch.setattr(RunLayers, "_make_view", after_the_run)
    worker = widget.run()
    assert worker is not None
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)

    assert ended and widget.last_outcome is not None and widget.last_outcome.error is None
    store = PredictionStore.open(tmp_path / "quick.vst.zarr")
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    gene = vst_meta(heatmap)["gene"]
    assert heatmap.visible and viewer.layers.selection.active is heatmap
    np.testing.assert_array_equal(
        np.unique(heatmap.data[np.isfinite(heatmap.data)]), np.unique(store.gene_values(gene))
    )
    assert find_layers(viewer, store.path, "spots")
    assert widget.status.value.startswith("Done:") and widget.run_button.enabled


def test_cancel_mid_run_keeps_finished_batches_and_a_rerun_resumes(
    make_napari_viewer, qtbot, cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(cmu_small_svs, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.add_model(synthetic_model)
    widget.grid.value = "st"
    widget.min_tissue.value = 0.0
    widget.output.value = tmp_path / "cancel.vst.zarr"
    widget.batch_size = 2
    worker = widget.run()
    batches = []

    def on_event(event) -> None:
        if isinstance(event, BatchEvent):
            batches.append(event)
            if len(batches) == 2:
                widget.cancel()

    worker.yielded.connect(on_event)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)

    outcome = widget.last_outcome
    assert outcome is not None and outcome.cancelled
    store = PredictionStore.open(tmp_path / "cancel.vst.zarr")
    done = int(store.done.sum())
    assert 0 < done < store.n_spots  # stopped within a batch or two of the request
    assert done <= 2 * (len(batches) + 1)
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    assert int(np.isfinite(heatmap.data).sum()) == done  # what was saved is shown
    assert any("cancelled" in m and "resume" in m for m in _messages("info"))
    assert widget.run_button.enabled and not widget.cancel_button.enabled

    widget.batch_size = 64  # ignored on resume: the store keeps its chunking
    _run(widget, qtbot)
    store = PredictionStore.open(store.path)
    assert store.is_complete and widget.last_outcome.error is None
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    assert int(np.isfinite(heatmap.data).sum()) == store.n_spots


def test_engine_errors_are_shown_as_notifications(
    make_napari_viewer, qtbot, cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(cmu_small_svs, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.output.value = tmp_path / "shared.vst.zarr"
    _run(widget, qtbot)  # the bundled model
    widget.add_model(synthetic_model)
    widget.output.value = tmp_path / "shared.vst.zarr"
    _run(widget, qtbot)  # another model onto the same file, without "replace"
    assert widget.last_outcome.error is not None
    errors = _messages("error")
    assert any("different model" in m for m in errors), errors
    # the failed run leaves the first run's layers as they were, and adds none
    (heatmap,) = find_layers(viewer, tmp_path / "shared.vst.zarr", "heatmap")
    assert vst_meta(heatmap)["gene"] == default_model().info.genes[0]
    assert np.isfinite(heatmap.data).any()
    assert len(find_layers(viewer, tmp_path / "shared.vst.zarr", "spots")) == 1


def test_a_slide_without_resolution_asks_for_it(
    make_napari_viewer, qtbot, synthetic_model: Path, tmp_path: Path
) -> None:
    png = tmp_path / "scan.png"
    rgb = np.full((800, 1000, 3), 245, np.uint8)
    rgb[200:600, 200:800] = (180, 90, 160)  # a block of "tissue"
    Image.fromarray(rgb).save(png)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(png, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.add_model(synthetic_model)
    assert not widget.mpp.native.isHidden() and not widget.mpp_hint.native.isHidden()
    widget.mpp.value = 0.5
    widget.output.value = tmp_path / "png.vst.zarr"
    _run(widget, qtbot)
    assert widget.last_outcome.error is None
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))  # now placed in µm like its heatmap
    assert find_layers(viewer, tmp_path / "png.vst.zarr", "heatmap")


@pytest.fixture
def variance_store(cmu_small_svs: Path, tmp_path: Path) -> Path:
    """A finished Visium store of the real slide from a model that gives variance."""
    from napari_virtual_st.run import RunSpec, run_events
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "var.onnx", n_genes=40, with_variance=True)
    request = RunSpec(cmu_small_svs, model, tmp_path / "var.vst.zarr", batch_size=64)
    gen = run_events(request)
    for _ in gen:
        pass
    return request.store_path


def test_gene_browser_search_select_recolour_and_cursor_values(
    make_napari_viewer, variance_store: Path
) -> None:
    viewer = make_napari_viewer()
    browser, view = _browse(viewer, variance_store)
    assert browser.prediction.value == str(variance_store)
    assert len(browser.genes.choices) == 40
    # search narrows the list without losing the selection
    browser.search.value = "synth1"
    assert browser.visible_genes() == ["SYNTH1", *[f"SYNTH1{i}" for i in range(10)]]
    # selecting genes adds their heatmaps (and uncertainty layers); deselecting removes them
    browser.show_genes(["SYNTH1", "SYNTH12"])
    assert {vst_meta(lyr)["gene"] for lyr in find_layers(viewer, view.path, "heatmap")} == {
        "SYNTH1",
        "SYNTH12",
    }
    assert {vst_meta(lyr)["gene"] for lyr in find_layers(viewer, view.path, "uncertainty")} == {
        "SYNTH1",
        "SYNTH12",
    }
    (sd_layer,) = find_layers(viewer, view.path, "uncertainty", "SYNTH12")
    np.testing.assert_allclose(
        sd_layer.data, view.geometry.rasterise(np.sqrt(view.variance[:, 12])), rtol=1e-6
    )
    browser.show_genes(["SYNTH12"])
    assert not find_layers(viewer, view.path, "heatmap", "SYNTH1")
    assert not find_layers(viewer, view.path, "uncertainty", "SYNTH1")
    # the spots layer recolours by the chosen gene from its features (no re-run)
    (spots,) = find_layers(viewer, view.path, "spots")
    assert vst_meta(spots)["gene"] == "SYNTH12"
    browser.colour_spots_by("SYNTH3")
    values = view.values("SYNTH3")
    lo, hi = spots.face_contrast_limits
    expected = spots.face_colormap.map(np.clip((values - lo) / (hi - lo), 0, 1))
    np.testing.assert_allclose(spots.face_color, expected, atol=1e-5)
    # values under the cursor: in the widget and, for the active heatmap, the status bar
    (heatmap,) = find_layers(viewer, view.path, "heatmap", "SYNTH12")
    i = view.n_spots // 2
    text = browser.values_at(view.yx_um[i])
    assert text.startswith(f"spot {view.spot_ids[i]}:")
    assert f"SYNTH12 {view.values('SYNTH12')[i]:.3g} ± {view.sd('SYNTH12')[i]:.3g}" in text
    assert browser.values_at((-500.0, -500.0)) == ""
    viewer.layers.selection.active = heatmap
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(view.yx_um[i])
    status, _ = viewer._calc_status_from_cursor()
    assert heatmap.get_value(view.yx_um[i], world=True) == view.values("SYNTH12")[i]
    assert heatmap.name in str(status)
    assert status_format(view.values("SYNTH12")[i]) in str(status)
    # removing a heatmap layer by hand deselects its gene
    viewer.layers.remove(heatmap)
    assert "SYNTH12" not in browser.genes.value


def test_a_run_makes_its_layers_once_and_a_rerun_reuses_them(
    make_napari_viewer, qtbot, cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(cmu_small_svs, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.add_model(synthetic_model)
    widget.output.value = tmp_path / "once.vst.zarr"
    widget.batch_size = 4
    added: list[str] = []
    removed: list[str] = []
    viewer.layers.events.inserted.connect(lambda e: added.append(vst_meta(e.value).get("role")))
    viewer.layers.events.removed.connect(lambda e: removed.append(vst_meta(e.value).get("role")))
    _run(widget, qtbot)
    assert sorted(added) == ["heatmap", "spots"] and not removed  # one of each, kept
    (heatmap,) = find_layers(viewer, tmp_path / "once.vst.zarr", "heatmap")
    # the run docked the Gene browser, whose colour bar shows the heatmap's scale; napari's
    # canvas colour bar stays off unless asked for
    browser = viewer.window._wrapped_dock_widgets[f"Gene browser ({PLUGIN})"].inner_widget()
    # (a plugin-docked widget sees napari's proxies of the layers: compare what they show)
    assert vst_meta(browser.colour_bar.layer) == vst_meta(heatmap)
    assert browser.colour_bar.title == heatmap.name
    assert not heatmap.colorbar.visible
    added.clear()
    widget.overwrite.value = True
    _run(widget, qtbot)  # the same store again: its heatmap layer is refreshed, not re-made
    assert find_layers(viewer, tmp_path / "once.vst.zarr", "heatmap") == [heatmap]
    assert "heatmap" not in added and np.isfinite(heatmap.data).any()


def test_the_visible_region_is_the_part_of_the_slide_on_screen(
    make_napari_viewer, qtbot, cmu_small_svs: Path
) -> None:
    viewer = make_napari_viewer(show=True)
    (slide,) = viewer.open(cmu_small_svs, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    mpp = slide.scale[-1]
    viewer.scene.camera.center = (0.0, 600 * mpp, 400 * mpp)  # (z,) row, col in µm
    viewer.scene.camera.zoom = 1.0 / mpp  # one screen pixel per slide pixel
    qtbot.wait(50)
    x0, y0, x1, y1 = widget.visible_region()
    height, width = viewer.canvas.size
    assert (x0 + x1) / 2 == pytest.approx(400, abs=1) and (y0 + y1) / 2 == pytest.approx(
        600, abs=1
    )
    assert x1 - x0 == pytest.approx(width, abs=1) and y1 - y0 == pytest.approx(height, abs=1)


def test_a_large_slide_shows_a_preview_before_its_grid_is_ready(
    make_napari_viewer,
    qtbot,
    cmu_small_svs: Path,
    synthetic_model: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    from napari_virtual_st.run import engine

    monkeypatch.setattr(engine, "PREVIEW_MASK_PX", 64)  # as if the slide were large
    viewer = make_napari_viewer()
    viewer.open(cmu_small_svs, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.add_model(synthetic_model)
    widget.output.value = tmp_path / "preview.vst.zarr"
    widget.batch_size = 4
    widget.in_process = False  # (the patched threshold holds in this process only)
    drawn: list[tuple[tuple[int, ...], int, bool]] = []

    def watch(event) -> None:
        layer = event.value
        if vst_meta(layer).get("role") == "heatmap":
            layer.events.set_data.connect(
                lambda _e: drawn.append(
                    (
                        layer.data.shape,
                        int(np.isfinite(layer.data).sum()),
                        widget.session.view is None,
                    )
                )
            )

    viewer.layers.events.inserted.connect(watch)
    _run(widget, qtbot)
    assert widget.last_outcome is not None and widget.last_outcome.error is None
    store = PredictionStore.open(tmp_path / "preview.vst.zarr")
    with_values = [d for d in drawn if d[1]]
    # first the preview (before the store existed: its own small image, 2 px per spot) ...
    shape, count, before_store = with_values[0]
    assert before_store and count == 2 * widget.batch_size
    # ... kept on screen until the run's values replace it, then the whole map
    assert all(d[1] for d in drawn[drawn.index(with_values[0]) :])
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    assert int(np.isfinite(heatmap.data).sum()) == 2 * store.n_spots
    assert heatmap.data.shape != shape or store.n_spots == widget.batch_size


def test_gene_browser_colour_bar_follows_the_active_heatmap_and_its_limits(
    make_napari_viewer, qtbot, variance_store: Path
) -> None:
    viewer = make_napari_viewer(show=True)
    browser, view = _browse(viewer, variance_store)
    browser.show_genes(["SYNTH1", "SYNTH12"])
    (first,) = find_layers(viewer, view.path, "heatmap", "SYNTH1")
    (last,) = find_layers(viewer, view.path, "heatmap", "SYNTH12")
    assert browser.colour_bar.layer is last  # the newest heatmap is active
    viewer.layers.selection.active = first
    bar = browser.colour_bar
    assert bar.layer is first and bar.title == first.name
    np.testing.assert_allclose(
        bar.colours(), first.colormap.map(np.linspace(0, 1, 256)), atol=1e-6
    )
    # limits and colours follow the layer's controls
    first.contrast_limits = (0.25, 1.75)
    assert (bar.low, bar.high) == ("0.25", "1.75")
    browser.colormap.value = "magma"
    np.testing.assert_allclose(bar.colours()[-1], first.colormap.map([1.0])[0], atol=1e-6)
    # the bar is painted: its middle row shows the colour map's ends
    qtbot.waitExposed(bar)
    grab = bar.grab().toImage()
    y = bar.fontMetrics().height() + 2 + 7
    left, right = grab.pixelColor(2, y), grab.pixelColor(bar.width() - 3, y)
    low_rgb = np.round(np.asarray(first.colormap.map([0.0])[0][:3]) * 255)
    high_rgb = np.round(np.asarray(first.colormap.map([1.0])[0][:3]) * 255)
    ratio = grab.devicePixelRatio()
    assert ratio >= 1
    np.testing.assert_allclose([left.red(), left.green(), left.blue()], low_rgb, atol=12)
    np.testing.assert_allclose([right.red(), right.green(), right.blue()], high_rgb, atol=12)
    # the spots layer shown and active: the bar shows the spots' colours and gene
    (spots,) = find_layers(viewer, view.path, "spots")
    spots.visible = True
    viewer.layers.selection.active = spots
    assert bar.layer is spots and bar.title == f"{vst_meta(spots)['gene']} · {spots.name}"
    browser.colour_spots_by("SYNTH3")
    assert bar.title == f"SYNTH3 · {spots.name}"
    lo, hi = spots.face_contrast_limits
    assert (bar.low, bar.high) == (f"{lo:.3g}", f"{hi:.3g}")
    # another layer active: the bar keeps showing the prediction's last heatmap
    viewer.layers.selection.active = viewer.layers[0]
    assert bar.layer is last
    # removing the heatmaps empties it
    browser.show_genes([])
    assert bar.layer is None and bar.colours() is None


def test_canvas_colour_bars_are_opt_in_from_the_gene_browser(
    make_napari_viewer, variance_store: Path
) -> None:
    viewer = make_napari_viewer()
    browser, view = _browse(viewer, variance_store)
    try:
        browser.show_genes(["SYNTH1"])
        (heatmap,) = find_layers(viewer, view.path, "heatmap", "SYNTH1")
        assert not heatmap.colorbar.visible
        browser.canvas_colour_bars.value = True
        assert heatmap.colorbar.visible
        browser.show_genes(["SYNTH1", "SYNTH2"])  # heatmaps shown later get one too
        (later,) = find_layers(viewer, view.path, "heatmap", "SYNTH2")
        assert later.colorbar.visible
        browser.canvas_colour_bars.value = False
        assert not heatmap.colorbar.visible and not later.colorbar.visible
    finally:
        set_canvas_colour_bars(None, False)


def test_status_texts_keep_their_height_and_show_everything_as_a_tooltip(
    make_napari_viewer, qtbot
) -> None:
    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot)
    browser = GeneBrowser(viewer)
    viewer.window.add_dock_widget(browser, name="Gene browser")
    qtbot.waitExposed(widget.native)
    labels = {"status": widget.status, "cursor": browser.cursor, "info": browser.info}
    heights = {name: label.native.height() for name, label in labels.items()}
    long_text = "Done: 21,761 spots predicted in 40.1 s and saved to " + "/a/long/folder" * 12
    widget._set_status(long_text)
    set_text(browser.cursor, "spot 12_34: " + ", ".join(f"GENE{i} 4.56 ± 0.12" for i in range(12)))
    qtbot.wait(50)
    assert widget.status.value == long_text
    assert widget.status.native.toolTip() == long_text  # all of it, whatever the panel shows
    assert browser.cursor.native.toolTip().startswith("spot 12_34: GENE0 4.56")
    # the panels did not grow: changing text does not re-lay out the docks
    assert {name: label.native.height() for name, label in labels.items()} == heights


def test_a_layer_added_without_selecting_it_leaves_the_users_selection(make_napari_viewer) -> None:
    from napari_virtual_st._napari.layers import add_layer

    viewer = make_napari_viewer()
    chosen = viewer.add_image(np.zeros((4, 4), np.float32), name="chosen")
    quiet = add_layer(
        viewer, (np.ones((2, 2), np.float32), {"name": "quiet"}, "image"), select=False
    )
    assert quiet in viewer.layers and viewer.layers.selection.active is chosen
    loud = add_layer(viewer, (np.ones((2, 2), np.float32), {"name": "loud"}, "image"))
    assert viewer.layers.selection.active is loud  # napari's own behaviour is back after


def test_gui_steps_run_in_order_a_turn_each_and_a_due_step_runs_once(qtbot) -> None:
    from napari_virtual_st._napari.gui_steps import STEP_MS, GuiSteps

    steps = GuiSteps()
    ran: list[tuple[str, float]] = []

    def step(name: str):
        return lambda: ran.append((name, time.perf_counter()))

    redraw = step("redraw")
    for name in ("a", "b", "c"):
        steps.then(step(name))
    steps.due(redraw, 0.0)
    steps.due(redraw, 0.0)  # asked for twice before it ran: runs once
    assert len(steps) == 3
    qtbot.waitUntil(lambda: len(steps) == 0 and len(ran) == 4, timeout=2000)
    assert [name for name, _ in ran] == ["redraw", "a", "b", "c"]  # (due first)
    gaps = np.diff([t for _, t in ran])
    assert (gaps >= STEP_MS / 1000 * 0.9).all()  # never two in one turn


def test_the_precision_chosen_in_the_form_goes_into_the_run(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    widget = _widget(viewer, qtbot)
    widget.output.value = tmp_path / "p.vst.zarr"
    assert widget.precision.value == "fp32"
    assert widget.request().precision == "fp32"
    widget.precision.value = "auto"
    assert widget.request().precision == "auto"


def test_a_fluorescence_slide_is_refused_and_the_panel_then_offers_the_override(
    make_napari_viewer, qtbot, ndpi_dapi: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(ndpi_dapi, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.add_model(synthetic_model)
    widget.output.value = tmp_path / "dapi.vst.zarr"
    override = widget.allow_non_brightfield.native
    assert override.isHidden()  # nothing to override yet
    _run(widget, qtbot)
    assert widget.last_outcome.error is not None
    assert any("bright-field" in m for m in _messages("error"))
    assert not (tmp_path / "dapi.vst.zarr").exists()
    assert not override.isHidden() and not widget.allow_non_brightfield.value
    widget.allow_non_brightfield.value = True
    _run(widget, qtbot)
    assert widget.last_outcome.error is None
    assert PredictionStore.open(tmp_path / "dapi.vst.zarr").is_complete


def test_a_model_taking_slide_statistics_runs_from_the_panel_and_fills_in_progressively(
    make_napari_viewer, qtbot, cmu_small_svs: Path, tmp_path: Path
) -> None:
    from synthetic_models import write_mean_colour_model

    model = write_mean_colour_model(tmp_path / "standardising.onnx", with_slide_statistics=True)
    viewer = make_napari_viewer()
    viewer.open(cmu_small_svs, plugin=PLUGIN)
    widget = _widget(viewer, qtbot)
    widget.add_model(model)
    assert "standardised per slide" in widget.model_info.value
    widget.output.value = tmp_path / "standardised.vst.zarr"
    widget.batch_size = 8
    statuses: list[str] = []
    show_status = widget.show_status
    widget.show_status = lambda text: (statuses.append(text), show_status(text))  # type: ignore[method-assign]
    finite_counts = heatmap_draw_counts(viewer)
    _run(widget, qtbot)
    assert widget.last_outcome is not None and widget.last_outcome.error is None
    store = PredictionStore.open(tmp_path / "standardised.vst.zarr")
    assert store.is_complete and store.slide_statistics is not None
    assert any("measuring the slide's statistics" in s for s in statuses)
    drawn_counts = [c for c in finite_counts if c]
    assert len(drawn_counts) >= 2 and drawn_counts[-1] == 2 * store.n_spots
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    gene = vst_meta(heatmap)["gene"]
    drawn = np.unique(heatmap.data[np.isfinite(heatmap.data)])
    np.testing.assert_allclose(drawn, np.unique(store.gene_values(gene)), rtol=1e-6)
