"""A model with spot context run from the Predict widget: the heatmap fills in as batches land
and ends on the store's contextual values; the Gene browser says the values are contextual."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heatmap_draws import heatmap_draw_counts
from napari_virtual_st._napari.gene_browser import GeneBrowser
from napari_virtual_st._napari.layers import find_layers, vst_meta
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.context import SpotContext
from napari_virtual_st.store import PredictionStore
from synthetic_models import write_mean_colour_model

PLUGIN = "napari-virtual-st"
RUN_TIMEOUT_MS = 120_000


def test_a_contextual_run_fills_its_heatmap_progressively_with_contextual_values(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    context = SpotContext(sigma_um=100.0, radius_um=250.0)
    model = write_mean_colour_model(
        tmp_path / "smooth.onnx",
        tile_px=16,
        tile_um=55.0,
        metadata_overrides={"vst.context": context.to_json()},
    )
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict expression")
    widget.add_model(model)
    assert "Gaussian context, σ 100 µm within 250 µm" in widget.model_info.value
    widget.output.value = tmp_path / "smooth.vst.zarr"
    widget.batch_size = 8
    drawn = heatmap_draw_counts(viewer)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)

    assert widget.last_outcome is not None and widget.last_outcome.error is None
    store = PredictionStore.open(tmp_path / "smooth.vst.zarr")
    (heatmap,) = find_layers(viewer, store.path, "heatmap")
    gene = vst_meta(heatmap)["gene"]
    contextual, per_tile = store.gene_values(gene), store.gene_values(gene, per_tile=True)
    assert not np.array_equal(contextual, per_tile)
    shown = np.unique(heatmap.data[np.isfinite(heatmap.data)])
    np.testing.assert_array_equal(shown, np.unique(contextual))
    counts = [c for c in drawn if c]
    assert len(counts) >= 2 and counts[0] < counts[-1]  # drawn while the run went on
    view = views_of(viewer).get(store.path)
    np.testing.assert_array_equal(view.expression, store.expression())

    browser = GeneBrowser(viewer)
    viewer.window.add_dock_widget(browser, name="Gene browser")
    assert "values contextual (Gaussian context, σ 100 µm within 250 µm)" in browser.info.value
    browser.show_genes([view.genes[0]])
    # the legend under the colour bar says it too, in the words the layer's name uses
    assert "context 100 µm: each spot's value mixes in its neighbours' within 250 µm" in (
        browser.legend.value
    )
    (shown,) = find_layers(viewer, store.path, "heatmap")
    assert shown.name.endswith(" · context 100 µm"), shown.name
    browser.show_genes([view.genes[1]])  # switching the gene keeps the word
    assert shown.name.startswith(view.genes[1]) and shown.name.endswith(" · context 100 µm")
