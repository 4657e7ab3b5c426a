"""Spot i's heatmap cell and its point lie at spot i's slide coordinates — in the layers'
transforms and in the pixels napari draws — and a saved store reopens with its layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st import Predictor, Slide, predict_slide
from napari_virtual_st._napari.layers import find_layers, vst_meta
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.pipeline import build_grid
from napari_virtual_st.store import PredictionStore

PLUGIN = "napari-virtual-st"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores of the real CMU slide on a Visium and a legacy-ST grid (synthetic model)."""
    from conftest import WSI_DIR
    from synthetic_models import write_mean_colour_model

    slide_path = WSI_DIR / "CMU-1-Small-Region.svs"
    if not slide_path.exists():
        pytest.skip("real slide CMU-1-Small-Region.svs not available in ../shared/data/wsi")
    folder = tmp_path_factory.mktemp("placement")
    predictor = Predictor(write_mean_colour_model(folder / "m.onnx", with_variance=True))
    out = {}
    with Slide(slide_path) as slide:
        for kind in ("visium", "st"):
            grid = build_grid(slide, kind, tile_um=55.0, min_tissue_fraction=0.3)
            out[kind] = predict_slide(
                slide, predictor, grid, folder / f"{kind}.vst.zarr", batch_size=64
            ).path
    return out


def _world_of_pixel_box(
    layer, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World (row, col) corners of the box covering image pixels (pixel i spans i ± 0.5)."""
    lo = layer.data_to_world((rows.min() - 0.5, cols.min() - 0.5))
    hi = layer.data_to_world((rows.max() + 0.5, cols.max() + 0.5))
    return np.asarray(lo), np.asarray(hi)


@pytest.mark.parametrize("kind", ["visium", "st"])
def test_heatmap_cell_point_and_slide_pixel_of_each_spot_coincide(
    make_napari_viewer, stores: dict[str, Path], kind: str
) -> None:
    viewer = make_napari_viewer()
    viewer.open(stores[kind], plugin=PLUGIN)
    store = PredictionStore.open(stores[kind])
    mpp = store.attrs["grid"]["mpp"]
    xy = store.xy_level0_px
    world = xy_level0_px_to_yx_um(xy, mpp)
    (slide_layer,) = [lyr for lyr in viewer.layers if vst_meta(lyr).get("role") == "slide"]
    (heatmap,) = find_layers(viewer, stores[kind], "heatmap")
    (spots,) = find_layers(viewer, stores[kind], "spots")
    gene = vst_meta(heatmap)["gene"]
    values = store.gene_values(gene)
    pitch = store.attrs["grid"]["pitch_um"]
    cell = (pitch * np.sqrt(3) / 2, pitch) if kind == "visium" else (pitch, pitch)
    for i in np.linspace(0, len(xy) - 1, 12).astype(int):
        # the slide pixel under spot i's world position is spot i's level-0 pixel
        np.testing.assert_allclose(slide_layer.world_to_data(world[i]), xy[i, ::-1], atol=1e-6)
        # the heatmap cell holding spot i's value is centred on it and one lattice cell big
        rows, cols = np.nonzero(heatmap.data == values[i])
        lo, hi = _world_of_pixel_box(heatmap, rows, cols)
        np.testing.assert_allclose((lo + hi) / 2, world[i], atol=1e-6)
        np.testing.assert_allclose(hi - lo, cell, rtol=1e-9)
        assert heatmap.get_value(world[i], world=True) == values[i]
        # the point is at spot i, spot-sized, and carries spot i's values
        np.testing.assert_allclose(spots.data_to_world(spots.data[i]), world[i], atol=1e-6)
        assert spots.features[gene][i] == values[i]
    np.testing.assert_allclose(spots.size, store.attrs["grid"]["spot_diameter_um"])


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _bright_box_world(viewer, shot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (row, col) box of the bright canvas pixels of a screenshot."""
    camera = _camera(viewer)
    h, w = shot.shape[:2]
    ys, xs = np.nonzero(shot[..., :3].mean(axis=-1) > 127)
    centre = np.asarray(camera.center)[-2:]
    lo = centre + (np.array([ys.min(), xs.min()]) - (h / 2, w / 2)) / camera.zoom
    hi = centre + (np.array([ys.max() + 1, xs.max() + 1]) - (h / 2, w / 2)) / camera.zoom
    return lo, hi


def test_drawn_pixels_of_a_spot_lie_on_its_slide_position(
    make_napari_viewer, stores: dict[str, Path]
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(900, 700)
    viewer.open(stores["visium"], plugin=PLUGIN)
    view = views_of(viewer).get(stores["visium"])
    (heatmap,) = find_layers(viewer, view.path, "heatmap")
    (spots,) = find_layers(viewer, view.path, "spots")
    for layer in viewer.layers:
        layer.visible = False
    zoom = 2.0  # screen px per µm: one screen pixel is half a micrometre
    tolerance = 1.5 / zoom
    for i in (5, len(view.yx_um) // 2):
        centre = view.yx_um[i]
        camera = _camera(viewer)
        camera.center = tuple(centre)
        camera.zoom = zoom
        # the heatmap drawn with only spot i bright
        values = heatmap.data.copy()
        only_i = np.where(values == view.values(vst_meta(heatmap)["gene"])[i], 1.0, 0.0)
        heatmap.data = only_i.astype(np.float32)
        heatmap.colormap, heatmap.contrast_limits, heatmap.opacity = "gray", (0.0, 1.0), 1.0
        heatmap.visible = True
        lo, hi = _bright_box_world(viewer, viewer.screenshot(canvas_only=True, flash=False))
        np.testing.assert_allclose((lo + hi) / 2, centre, atol=tolerance)
        np.testing.assert_allclose(hi - lo, view.geometry.cell_um, atol=2 * tolerance)
        heatmap.visible = False
        heatmap.data = values
        # the spots drawn with only spot i white
        colours = np.tile([0.0, 0.0, 0.0, 1.0], (len(spots.data), 1))
        colours[i] = 1.0
        spots.face_color = colours
        spots.visible = True
        lo, hi = _bright_box_world(viewer, viewer.screenshot(canvas_only=True, flash=False))
        np.testing.assert_allclose((lo + hi) / 2, centre, atol=tolerance)
        np.testing.assert_allclose(hi - lo, view.spot_diameter_um, atol=3 * tolerance)
        spots.visible = False


def test_reopening_a_store_shows_its_layers_at_once(
    make_napari_viewer, stores: dict[str, Path]
) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(stores["visium"], plugin=PLUGIN)
    roles = [vst_meta(layer)["role"] for layer in layers]
    assert roles == ["slide", "heatmap", "uncertainty", "spots"]
    store = PredictionStore.open(stores["visium"])
    slide, heatmap, uncertainty, spots = layers
    gene = vst_meta(heatmap)["gene"]
    view = views_of(viewer).get(stores["visium"])
    assert gene == view.most_variable_gene()
    finite = heatmap.data[np.isfinite(heatmap.data)]
    np.testing.assert_array_equal(np.sort(np.unique(finite)), np.unique(store.gene_values(gene)))
    assert not uncertainty.visible and str(uncertainty.colormap.name) == "magma"
    # the spots carry their name and the shown gene (napari's status bar lists every
    # feature under the cursor: one gene, not all of them)
    assert list(spots.features.columns) == ["spot", gene]
    np.testing.assert_array_equal(spots.features[gene], store.gene_values(gene))
    np.testing.assert_allclose(slide.scale, (0.499, 0.499))
