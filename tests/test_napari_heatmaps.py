"""Heatmaps a pathologist can read: one layer per prediction whose gene the Gene browser
switches, names that say gene and model, the browser following the active prediction, a
colour bar with unit and range, contrast modes, impossible values clamped with a note, and a
cursor read-out of the active gene (plus a short top list), not of every gene."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.gene_browser import TOP_K, GeneBrowser
from napari_virtual_st._napari.layers import find_layers, vst_meta
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.display import short_model_name
from runs import finished_store

PLUGIN = "napari-virtual-st"


@pytest.fixture
def two_stores(cmu_small_svs: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two finished predictions of the real slide (the same synthetic model twice)."""
    return finished_store(cmu_small_svs, tmp_path, "first"), finished_store(
        cmu_small_svs, tmp_path, "second"
    )


@pytest.fixture(autouse=True)
def _percentile_contrast():
    yield
    vst_layers.set_contrast_mode(None, "percentile")


def _browser(viewer) -> GeneBrowser:
    browser = GeneBrowser(viewer)
    viewer.window.add_dock_widget(browser, name="Gene browser")
    return browser


def test_clicking_genes_switches_one_heatmap_layer_and_ctrl_adds_one(
    make_napari_viewer, two_stores: tuple[Path, Path]
) -> None:
    viewer = make_napari_viewer()
    store = two_stores[0]
    viewer.open(store, plugin=PLUGIN)
    browser = _browser(viewer)
    view = views_of(viewer).get(store)
    (layer,) = find_layers(viewer, store, "heatmap")
    for gene in ("SYNTH1", "SYNTH7", "SYNTH3"):
        browser.show_genes([gene])  # a click: the same layer shows the gene
        (same,) = find_layers(viewer, store, "heatmap")
        assert same is layer and vst_meta(layer)["gene"] == gene
        assert layer.name == f"{gene} · {short_model_name(view.model_name)}"
        np.testing.assert_array_equal(layer.data, view.heatmap(gene))
        assert tuple(layer.contrast_limits) == pytest.approx(vst_layers.display_limits(view, gene))
    browser.show_genes(["SYNTH3", "SYNTH5"])  # ctrl-click: a second gene, its own layer
    assert [vst_meta(lyr)["gene"] for lyr in find_layers(viewer, store, "heatmap")] == [
        "SYNTH3",
        "SYNTH5",
    ]
    browser.show_genes(["SYNTH5"])
    (left,) = find_layers(viewer, store, "heatmap")
    assert vst_meta(left)["gene"] == "SYNTH5"


def test_two_predictions_have_distinct_names_and_the_browser_follows_the_active_one(
    make_napari_viewer, two_stores: tuple[Path, Path]
) -> None:
    viewer = make_napari_viewer()
    first, second = two_stores
    viewer.open(first, plugin=PLUGIN)
    browser = _browser(viewer)
    assert browser.prediction.value == str(first)
    viewer.open(second, plugin=PLUGIN)
    # the new prediction is browsed, and the older one's heatmap is hidden (no mixed colours)
    assert browser.prediction.value == str(second)
    (old,) = find_layers(viewer, first, "heatmap")
    (new,) = find_layers(viewer, second, "heatmap")
    assert not old.visible and new.visible
    browser.show_genes(["SYNTH2"])
    browser.prediction.value = str(first)
    browser.show_genes(["SYNTH2"])
    names = [layer.name for layer in viewer.layers]
    assert len(set(names)) == len(names)
    (old,) = find_layers(viewer, first, "heatmap")
    (new,) = find_layers(viewer, second, "heatmap")
    assert "SYNTH2" in old.name and "SYNTH2" in new.name and old.name != new.name
    spots = [layer.name for layer in viewer.layers if vst_meta(layer).get("role") == "spots"]
    assert len(spots) == 2 and spots[0] != spots[1]
    # a layer of the other prediction made active: the browser, its gene list and its colour
    # bar follow it
    viewer.layers.selection.active = new
    assert browser.prediction.value == str(second)
    assert browser.colour_bar.layer is new and browser.genes.value == ["SYNTH2"]
    viewer.layers.selection.active = old
    assert browser.prediction.value == str(first) and browser.colour_bar.layer is old


def test_colour_bar_legend_contrast_modes_and_clamped_values(
    make_napari_viewer, two_stores: tuple[Path, Path]
) -> None:
    viewer = make_napari_viewer()
    store = two_stores[0]
    viewer.open(store, plugin=PLUGIN)
    browser = _browser(viewer)
    view = views_of(viewer).get(store)
    # a model whose target is log1p, with a few impossible (negative) values
    view.model = dataclasses.replace(view.model, target="log1p_cp10k")
    view.expression[:, 1] = np.abs(view.expression[:, 1])
    view.expression[:5, 1] = -0.84
    browser.show_genes(["SYNTH1"])
    (layer,) = find_layers(viewer, store, "heatmap")
    finite = layer.data[np.isfinite(layer.data)]
    assert finite.min() >= 0.0  # never drawn below what log1p can be
    assert layer.contrast_limits[0] >= 0.0
    legend = browser.legend.value
    assert "log(1 + counts per 10,000)" in legend and "percentile" in legend
    assert "5 of" in legend and "drawn as 0" in legend
    # the range it gives is the one drawn (a stretch over a small range says how small)
    assert f"values 0 to {float(np.nanmax(view.values('SYNTH1'))):.3g}" in legend
    assert "per-tile: each spot's value from its own tile" in legend  # a per-tile model
    # the cursor: the active gene's value (the model's own, and as drawn), a short top list
    text = browser.values_at(view.yx_um[0])
    assert text.startswith(f"spot {view.spot_ids[0]}: SYNTH1 0 (model gave -0.84")
    high = text.split("high here: ")[1] if "high here: " in text else ""
    assert high.count(" SD") <= TOP_K and len(text.splitlines()) <= 2  # not every gene
    # contrast modes: min-max of the gene; one range for every gene
    browser.contrast.value = "minmax"
    values = view.values("SYNTH1")
    assert tuple(layer.contrast_limits) == pytest.approx((0.0, float(np.nanmax(values))), rel=1e-5)
    assert "lowest to highest" in browser.legend.value
    browser.contrast.value = "fixed"
    fixed = tuple(layer.contrast_limits)
    browser.show_genes(["SYNTH4"])
    assert tuple(layer.contrast_limits) == pytest.approx(fixed)
    browser.contrast.value = "percentile"
    assert tuple(layer.contrast_limits) == pytest.approx(vst_layers.display_limits(view, "SYNTH4"))


def test_the_spots_status_bar_lists_the_shown_gene_not_every_gene(
    make_napari_viewer, two_stores: tuple[Path, Path]
) -> None:
    viewer = make_napari_viewer()
    store = two_stores[0]
    viewer.open(store, plugin=PLUGIN)
    browser = _browser(viewer)
    view = views_of(viewer).get(store)
    (spots,) = find_layers(viewer, store, "spots")
    browser.colour_spots_by("SYNTH6")
    assert list(spots.features.columns) == ["spot", "SYNTH6"]
    spots.visible = True
    viewer.layers.selection.active = spots
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(view.yx_um[3])
    status, _ = viewer._calc_status_from_cursor()
    text = str(status)
    assert "SYNTH6" in text and "SYNTH7" not in text


def test_the_uncertainty_map_is_a_toggle_shown_in_place_of_the_values(
    make_napari_viewer, cmu_small_svs: Path, tmp_path: Path
) -> None:
    store = finished_store(cmu_small_svs, tmp_path, "var", n_genes=8, with_variance=True)
    viewer = make_napari_viewer()
    viewer.open(store, plugin=PLUGIN)
    browser = _browser(viewer)
    assert browser.uncertainty.enabled and not browser.uncertainty.value
    browser.show_genes(["SYNTH2"])
    (values,) = find_layers(viewer, store, "heatmap")
    (sd,) = find_layers(viewer, store, "uncertainty")
    assert values.visible and not sd.visible and vst_meta(sd)["gene"] == "SYNTH2"
    browser.uncertainty.value = True  # one map at a time, its own colour bar and legend
    assert sd.visible and not values.visible
    assert browser.colour_bar.layer is sd and "standard deviation" in browser.legend.value
    browser.show_genes(["SYNTH4"])  # the gene switches in both; the uncertainty stays shown
    assert vst_meta(sd)["gene"] == "SYNTH4" and sd.visible and not values.visible
    browser.uncertainty.value = False
    assert values.visible and not sd.visible and browser.colour_bar.layer is values
