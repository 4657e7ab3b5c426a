"""Each viewer has its own prediction views: two viewers in one process never see each
other's predictions, runs or gene switches; a viewer's views go with it."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st._napari import views as vst_views
from napari_virtual_st._napari.gene_browser import GeneBrowser
from napari_virtual_st._napari.layers import find_layers, vst_meta
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.store_view import StoreView
from runs import finished_store

PLUGIN = "napari-virtual-st"


@pytest.fixture
def store(cmu_small_svs: Path, tmp_path: Path) -> Path:
    """A finished prediction of the real slide by a small synthetic model."""
    return finished_store(cmu_small_svs, tmp_path, "p", n_genes=8)


class _Listener:
    def __init__(self) -> None:
        self.heard: list[StoreView] = []

    def hear(self, view: StoreView) -> None:
        self.heard.append(view)


def _browser(viewer) -> GeneBrowser:
    browser = GeneBrowser(viewer)
    viewer.window.add_dock_widget(browser, name="Gene browser")
    return browser


def test_a_store_opened_in_one_viewer_is_not_seen_by_another(make_napari_viewer, store) -> None:
    one, other = make_napari_viewer(), make_napari_viewer()
    one.open(store, plugin=PLUGIN)
    assert views_of(one).lookup(store) is not None  # the reader's view, taken by its viewer
    assert views_of(other).lookup(store) is None
    assert _browser(other).view is None


def test_two_viewers_of_one_store_keep_their_own_values_and_genes(
    make_napari_viewer, qtbot, store
) -> None:
    one, other = make_napari_viewer(), make_napari_viewer()
    one.open(store, plugin=PLUGIN)
    other.open(store, plugin=PLUGIN)
    browser_one, browser_other = _browser(one), _browser(other)
    view_one, view_other = views_of(one).lookup(store), views_of(other).lookup(store)
    assert view_one is not None and view_other is not None
    assert view_one is not view_other
    np.testing.assert_array_equal(view_one.expression, view_other.expression)

    # a gene switch in one viewer leaves the other's heatmap alone
    (heatmap_other,) = find_layers(other, store, "heatmap")
    gene_other = vst_meta(heatmap_other)["gene"]
    new_gene = next(g for g in view_one.genes if g != gene_other)
    browser_one.show_genes([new_gene])
    assert vst_meta(find_layers(one, store, "heatmap")[0])["gene"] == new_gene
    assert vst_meta(heatmap_other)["gene"] == gene_other

    # a re-run in one viewer (its new view, new values) is not the other's
    before = view_other.expression.copy()
    heard_one, heard_other = _Listener(), _Listener()
    views_of(one).on_register(heard_one.hear)
    views_of(other).on_register(heard_other.hear)
    rerun = StoreView.open(store)
    rerun.update(slice(None), np.zeros_like(rerun.tile_expression))
    views_of(one).register(rerun)
    assert heard_one.heard == [rerun]
    assert heard_other.heard == []  # (e.g. the other viewer's Gene browser is not told)
    assert views_of(one).lookup(store) is rerun
    assert browser_one.view is rerun
    assert views_of(other).lookup(store) is view_other
    assert browser_other.view is view_other
    np.testing.assert_array_equal(view_other.expression, before)
    assert not np.array_equal(view_other.expression, rerun.expression)


def test_a_viewers_views_go_when_it_closes(make_napari_viewer, store) -> None:
    viewer = make_napari_viewer()
    viewer.open(store, plugin=PLUGIN)
    views = views_of(viewer)
    assert views.lookup(store) is not None
    assert len(views) == 1
    viewer.close()  # (its layers go first)
    assert len(views) == 0


def test_a_view_read_without_a_viewer_waits_for_one_and_is_bounded(store, tmp_path) -> None:
    view = StoreView.open(store)
    vst_views.hand_over(view)
    assert vst_views._take(store) is view
    assert vst_views._take(store) is None  # taken once
    for i in range(vst_views.MAX_HANDED_OVER + 2):
        copy = StoreView.open(store)
        copy.path = tmp_path / f"{i}.vst.zarr"
        vst_views.hand_over(copy)
    assert len(vst_views._HANDED_OVER) == vst_views.MAX_HANDED_OVER
    vst_views._HANDED_OVER.clear()


def test_panels_given_napari_proxies_of_one_viewer_share_its_views(make_napari_viewer) -> None:
    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer()
    # (napari gives each panel docked from its Plugins menu a proxy of its own)
    first, second = PublicOnlyProxy(viewer), PublicOnlyProxy(viewer)
    views = views_of(first)
    assert views_of(second) is views
    del first, second
    gc.collect()  # (a proxy going away takes nothing with it)
    assert views_of(viewer) is views
