"""The Measured ST widget on the real HER2ST A1 section: load, align three ways, predict at
the measured spots, compare, and browse one gene."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QPoint, Qt

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.measured_layers import image_affine, library_sizes, measured_values
from napari_virtual_st._napari.measured_widget import MeasuredWidget
from napari_virtual_st.align import Transform, from_scale
from napari_virtual_st.compare import compare
from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.measured import read_legacy_st
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore

WAIT_MS = 120_000
#: Spot-file px → PNG px of A1 as a user types it (2000 / 6954 to six decimals).
PIXEL_SCALE = 0.287604


@pytest.fixture(scope="module")
def a1() -> dict:
    """HER2ST A1 (real data): the 2000 px PNG, its spot file and counts, µm/px from the
    spot spacing (the spot file's pixels × 0.287604 are pixels of the PNG)."""
    from models.workshop import data

    if not data.data_available():
        pytest.skip(
            "HER2ST data not available: ../shared/data/her2st_subset is absent beside the checkout"
        )
    source = next(s for s in data.her2st_sections() if s.name == "A1")
    image = data._cleaned_copy(source.image, source.mask_boxes, source.black_background)
    assert round(source.pixel_scale, 6) == PIXEL_SCALE
    measured = read_legacy_st(source.counts, source.spots, image, pixel_scale=PIXEL_SCALE)
    mpp = data.mpp_from_spot_spacing(measured.xy_fullres_px, measured.array_rc)
    return {"source": source, "image": image, "measured": measured, "mpp": mpp}


def _viewer_and_widget(make_napari_viewer, a1: dict) -> tuple:
    viewer = make_napari_viewer()
    slide = Slide(a1["image"], mpp=a1["mpp"])
    layer = vst_layers.add_layer(viewer, vst_layers.slide_layer_data(slide))
    widget = MeasuredWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measured ST")
    assert widget.slide.value is layer
    return viewer, widget


def _load(widget: MeasuredWidget, a1: dict, qtbot) -> None:
    source = a1["source"]
    widget.kind.value = "legacy"
    widget.data_path.value = source.counts
    widget.spots_path.value = source.spots
    widget.image_path.value = a1["image"]
    widget.pixel_scale.value = PIXEL_SCALE
    assert widget.load() is not None
    assert widget.busy  # reading happens in a worker
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.measured is not None


def _role(viewer, role: str):
    found = [layer for layer in viewer.layers if vst_layers.vst_meta(layer).get("role") == role]
    assert len(found) == 1, f"expected one {role} layer, found {len(found)}"
    return found[0]


def test_loaded_spots_and_image_sit_where_the_transform_puts_them(
    make_napari_viewer, qtbot, a1: dict
) -> None:
    viewer, widget = _viewer_and_widget(make_napari_viewer, a1)
    _load(widget, a1, qtbot)
    measured, mpp = widget.measured, a1["mpp"]
    assert measured.n_spots == a1["measured"].n_spots == 346
    np.testing.assert_array_equal(measured.xy_fullres_px, a1["measured"].xy_fullres_px)
    assert "346 spots" in widget.data_info.value and "fullres" in widget.data_info.value
    spots = _role(viewer, "measured-spots")
    expected = xy_level0_px_to_yx_um(from_scale(1.0).apply(measured.xy_fullres_px), mpp)
    np.testing.assert_allclose(spots.data, expected)

    shifted = Transform(np.array([[0.98, -0.05, 40.0], [0.05, 0.98, -25.0], [0, 0, 1.0]]))
    widget.alignment.set_transform(shifted)
    np.testing.assert_allclose(
        spots.data, xy_level0_px_to_yx_um(shifted.apply(measured.xy_fullres_px), mpp)
    )
    # image pixel (row, col) of a spot's centre lands on that spot in the world
    image = _role(viewer, "measured-image")
    i = 17
    x, y = measured.xy_fullres_px[i]
    world = image.data_to_world((y, x))
    np.testing.assert_allclose(world, spots.data[i], atol=1e-6)


def test_landmark_fit_from_clicked_points_gives_the_known_transform_and_residual(
    make_napari_viewer, qtbot, a1: dict
) -> None:
    viewer, widget = _viewer_and_widget(make_napari_viewer, a1)
    _load(widget, a1, qtbot)
    known = np.array(
        [
            [1.05 * math.cos(0.07), -1.05 * math.sin(0.07), 30.0],
            [1.05 * math.sin(0.07), 1.05 * math.cos(0.07), -20.0],
            [0.0, 0.0, 1.0],
        ]
    )
    truth = Transform(known, "similarity")
    slide_marks, image_marks = widget.add_landmark_layers()
    on_slide_xy = np.array([[400.0, 300.0], [1600.0, 420.0], [900.0, 1800.0], [1500.0, 1500.0]])
    on_measured_xy = truth.inverse().apply(on_slide_xy)
    slide_marks.data = xy_level0_px_to_yx_um(on_slide_xy, a1["mpp"])
    image_marks.data = on_measured_xy[:, ::-1] * widget.image_scale  # (row, col) image px
    fitted = widget.fit()
    assert fitted is not None
    np.testing.assert_allclose(fitted.matrix, known, atol=1e-6)
    assert fitted.residual_um(a1["mpp"]) == pytest.approx(0.0, abs=1e-6)
    assert "residual 0.0 µm RMS over 4 pairs" in widget.transform_info.value
    # the measured layers follow the new alignment; the clicked points stay on the image
    spots = _role(viewer, "measured-spots")
    np.testing.assert_allclose(
        spots.data,
        xy_level0_px_to_yx_um(truth.apply(widget.measured.xy_fullres_px), a1["mpp"]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        image_marks.affine.affine_matrix, image_affine(fitted, a1["mpp"], 1.0), atol=1e-9
    )
    # a noisy click shows a residual, two points a clear error
    image_marks.data = image_marks.data + np.array([[3.0, 0], [0, 0], [0, 0], [0, -3.0]])
    noisy = widget.fit()
    assert noisy is not None and noisy.residual_um(a1["mpp"]) > 1.0
    before = len(notification_manager.records)
    slide_marks.data = slide_marks.data[:2]
    image_marks.data = image_marks.data[:2]
    assert widget.fit() is None
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("at least 3 landmark pairs" in m for m in messages)


def test_auto_register_runs_in_a_worker_and_shows_quality_and_overlay(
    make_napari_viewer, qtbot, a1: dict
) -> None:
    viewer, widget = _viewer_and_widget(make_napari_viewer, a1)
    _load(widget, a1, qtbot)
    widget.alignment.set_transform(from_scale(1.3))  # start from a wrong placement
    widget.scale_known.value = True  # the measured image is the slide itself: scale 1
    widget.scale.value = 1.0
    worker = widget.auto_register()
    assert worker is not None and widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    transform = widget.transform
    assert transform.info["method"] == "register_images"
    assert transform.quality > 0.9
    assert "quality" in widget.transform_info.value and "Registered" in widget.status.value
    corners = np.array([[0.0, 0.0], [2000.0, 0.0], [0.0, 2138.0], [2000.0, 2138.0]])
    assert np.abs(transform.apply(corners) - corners).max() < 10.0  # level-0 px (3.2 µm each)
    overlay = _role(viewer, "registration-overlay")
    assert overlay.rgb and overlay.data.shape[:2] == (512, 479)


def test_predict_at_measured_spots_and_compare_fill_the_table_like_compare(
    make_napari_viewer, qtbot, a1: dict, tmp_path: Path
) -> None:
    viewer, widget = _viewer_and_widget(make_napari_viewer, a1)
    _load(widget, a1, qtbot)
    store_path = tmp_path / "a1.measured.vst.zarr"
    widget.store.value = store_path
    widget.batch_size = 64
    assert widget.predict() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    store = PredictionStore.open(store_path)
    assert store.is_complete and store.n_spots == 346
    saved = store.load_transform()  # the alignment travels with the store
    np.testing.assert_allclose(saved.matrix, widget.transform.matrix)
    assert widget.progress_bar.value == 346

    assert widget.run_compare() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    expected = compare(store, a1["measured"], saved)
    rows = widget.table_rows()
    assert len(rows) == len(expected.genes) == 250
    by_gene = {g.gene: g for g in expected.genes}
    for gene, pearson, spearman, ssim, n in rows:
        want = by_gene[gene]
        for got, value in ((pearson, want.pearson), (spearman, want.spearman), (ssim, want.ssim)):
            assert got == pytest.approx(value, nan_ok=True)
        assert n == expected.n_spots == 346
    assert [r[0] for r in rows] == [g.gene for g in expected.sorted_by("pearson")]
    summary = expected.summary()
    assert "346 spots matched by id, 250 genes" in widget.summary.value
    assert f"mean Pearson {summary['mean_pearson']:.3f}" in widget.summary.value

    # clicking the Spearman header sorts by it; clicking again reverses
    header = widget.table.horizontalHeader()
    point = QPoint(header.sectionViewportPosition(2) + header.sectionSize(2) // 2, 5)
    orders = []
    for _ in range(2):
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=point)
        assert header.sortIndicatorSection() == 2
        order = header.sortIndicatorOrder()
        orders.append(order)
        spearman = [r[2] for r in widget.table_rows()]
        key = [-math.inf if math.isnan(v) else v for v in spearman]
        descending = order == Qt.SortOrder.DescendingOrder
        assert key == sorted(key, reverse=descending)
    assert orders[0] != orders[1]

    # choosing a gene: its scatter plot and measured + predicted maps
    gene = "ERBB2"
    row = next(i for i, r in enumerate(widget.table_rows()) if r[0] == gene)
    widget.table.selectRow(row)
    k = [g.gene for g in expected.genes].index(gene)
    drawn = np.maximum(expected.predicted[:, k], 0)  # (a log1p value is never below 0)
    np.testing.assert_allclose(
        widget.scatter_xy(), np.column_stack([expected.measured[:, k], drawn])
    )
    assert gene in widget.scatter.title()
    below = int((expected.predicted[:, k] < 0).sum())
    assert (f"{below} predicted below 0 drawn at 0" in widget.scatter.title()) == bool(below)
    # a model without the clamp in its graph (older files, a user's own) predicts below 0:
    # such values are drawn at 0, and the plot says how many
    other = next(g.gene for g in expected.genes if g.gene != gene)
    j = [g.gene for g in expected.genes].index(other)
    widget.comparison.predicted[:12, j] = -0.5
    widget.table.selectRow(next(i for i, r in enumerate(widget.table_rows()) if r[0] == other))
    assert "12 predicted below 0 drawn at 0" in widget.scatter.title()
    assert widget.scatter_xy()[:, 1].min() >= 0
    widget.table.selectRow(row)
    measured_layer = _role(viewer, "measured-values")
    assert vst_layers.vst_meta(measured_layer)["gene"] == gene
    values = measured_values(a1["measured"], gene, library_sizes(a1["measured"]))
    np.testing.assert_allclose(measured_layer.features["measured"], values)
    shift = np.asarray(widget.measured_shift_um())
    assert shift[1] > 0  # beside the predicted map
    spots_um = xy_level0_px_to_yx_um(saved.apply(a1["measured"].xy_fullres_px), a1["mpp"])
    np.testing.assert_allclose(
        measured_layer.data_to_world(measured_layer.data[5]), spots_um[5] + shift
    )
    (predicted,) = vst_layers.find_layers(viewer, store_path, "spots")
    assert vst_layers.vst_meta(predicted)["gene"] == gene and predicted.visible
    np.testing.assert_allclose(predicted.data, spots_um)
    widget.side_by_side.value = False
    np.testing.assert_allclose(measured_layer.data_to_world(measured_layer.data[5]), spots_um[5])


def test_partial_gene_overlap_errors_and_the_alignment_saved_with_the_store(
    make_napari_viewer, qtbot, a1: dict, tmp_path: Path
) -> None:
    viewer, widget = _viewer_and_widget(make_napari_viewer, a1)
    before = len(notification_manager.records)
    widget.kind.value = "legacy"
    widget.data_path.value = tmp_path / "missing.tsv"
    widget.spots_path.value = tmp_path / "missing_selection.tsv"
    widget.load()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("file not found" in m and "missing.tsv" in m for m in messages)
    assert widget.measured is None

    _load(widget, a1, qtbot)
    store_path = tmp_path / "a1.vst.zarr"
    widget.store.value = store_path
    widget.predict()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    measured = widget.measured
    widget.measured = replace(
        measured, genes=tuple(g if i % 2 else f"{g}_OTHER" for i, g in enumerate(measured.genes))
    )
    widget.run_compare()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    n_missing = len(widget.comparison.missing_genes)
    assert 0 < n_missing < 250 and widget.table.rowCount() == 250 - n_missing
    assert f"{n_missing} model genes are absent from the measured data" in widget.summary.value

    # a new alignment is saved with the store, and a later session starts from it
    widget.measured = measured
    moved = from_scale(1.0, (1.5, -0.5))
    widget.alignment.set_transform(moved)
    written = widget.save_transform()
    assert written == store_path / "transform.json"
    np.testing.assert_allclose(
        PredictionStore.open(store_path).load_transform().matrix, moved.matrix
    )
    later = MeasuredWidget(viewer)
    later.store.value = store_path
    _load(later, a1, qtbot)
    np.testing.assert_allclose(later.transform.matrix, moved.matrix)
    assert "alignment read from the store" in later.transform_info.value


def test_space_ranger_outs_with_a_lowres_image_are_placed_and_their_values_drawn(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    """Real Space Ranger 3 output (Visium CytAssist, mouse). The slide is its lowres image
    enlarged 2× (the lowres image is 0.2× full-res, so slide px = 0.4 × full-res px); the
    measured image layer is the lowres image itself, placed through the alignment."""
    from PIL import Image

    from conftest import SHARED_DATA
    from napari_virtual_st._napari.measured_layers import (
        lattice_kind,
        measured_value_layer_data,
        value_geometry,
    )

    outs = SHARED_DATA / "visium_format_fixtures" / "coexpressdeconvolve_mouse_cytassist"
    if not outs.is_dir():
        pytest.skip("Space Ranger fixture absent: ../shared/data/visium_format_fixtures")
    lowres = outs / "spatial" / "tissue_lowres_image.png"
    with Image.open(lowres) as img:
        rgb = img.convert("RGB")
        slide_png = tmp_path / "lowres_x2.png"
        rgb.resize((rgb.width * 2, rgb.height * 2), Image.Resampling.BILINEAR).save(slide_png)
    mpp = 100.0 / 21.378 / 0.4  # 100 µm Visium pitch = 21.378 full-res px (spot spacing)
    viewer = make_napari_viewer()
    vst_layers.add_layer(viewer, vst_layers.slide_layer_data(Slide(slide_png, mpp=mpp)))
    widget = MeasuredWidget(viewer)
    widget.kind.value = "spaceranger"
    widget.data_path.value = outs
    widget.scale.value = 0.4
    widget.load()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    measured = widget.measured
    assert measured is not None and measured.source == "spaceranger"
    assert widget.image_name == "lowres" and widget.image_scale == pytest.approx(0.2)
    spots = _role(viewer, "measured-spots")
    expected = xy_level0_px_to_yx_um(measured.xy_fullres_px * 0.4, mpp)
    np.testing.assert_allclose(spots.data, expected, atol=1e-9)
    image = _role(viewer, "measured-image")
    i = 100
    x, y = measured.xy_fullres_px[i] * 0.2  # the spot in lowres image px
    np.testing.assert_allclose(image.data_to_world((y, x)), spots.data[i], atol=1e-9)

    gene = measured.genes[int(np.argmax(np.asarray(measured.counts.sum(axis=0)).ravel()))]
    values = measured_values(measured, gene)
    # these spots are not on an exact 100 µm hexagonal lattice (rows 0.5 % too far apart):
    # like the Gene browser, the values are drawn as coloured spots
    assert value_geometry(lattice_kind(measured), measured.array_rc, spots.data) is None
    _, kwargs, kind = measured_value_layer_data(measured, gene, values, spots.data, geometry=None)
    assert kind == "points" and kwargs["size"] == 55.0
    np.testing.assert_allclose(kwargs["features"]["measured"], values)
    # on an exact lattice (synthetic positions made from the array indices) a heatmap
    rc = measured.array_rc
    exact_um = np.column_stack([rc[:, 0] * 100 * np.sqrt(3) / 2, rc[:, 1] * 50.0]) + 500.0
    geometry = value_geometry(lattice_kind(measured), rc, exact_um)
    assert geometry is not None and geometry.kind == "visium"
    image_data, _, kind = measured_value_layer_data(
        measured, gene, values, exact_um, geometry=geometry
    )
    assert kind == "image"
    row, col = geometry.pixel_of(exact_um[i])[0]
    assert image_data[row, col] == pytest.approx(values[i])


def test_the_widget_is_in_the_plugin_menu(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-virtual-st", "Measured ST")
    assert isinstance(widget, MeasuredWidget)
    assert widget.slide.value is None  # no slide open yet
    assert not widget.predict_button.enabled and not widget.compare_button.enabled
    # three panels over one session, one step a tab (the genes in a fourth); the widget's
    # names reach into them
    tabs = widget.tabs
    assert [tabs.tabText(i) for i in range(tabs.count())] == [
        "1 Data",
        "2 Align",
        "3 Predict",
        "4 Genes",
    ]
    pages = [tabs.widget(i).widget() for i in range(tabs.count())]  # (each in a scroll area)
    assert pages == [
        widget.data.native,
        widget.alignment.native,
        widget.compare.native,
        widget.compare.gene_view.native,
    ]
    assert widget.load == widget.data.load and widget.fit == widget.alignment.fit
    assert widget.table is widget.compare.gene_view.table
    assert widget.slide is widget.data.session.slide is widget.compare.session.slide
    widget.store.value = "somewhere/a1"
    assert widget.session.store_path().name == "a1.vst.zarr"  # the suffix is added


def test_the_store_field_starts_with_a_suggestion_like_the_predict_panels(
    make_napari_viewer, tmp_path: Path
) -> None:
    from napari_virtual_st._napari.predict_form import default_output_dir
    from napari_virtual_st.registry import sample_slide_path

    viewer = make_napari_viewer()
    viewer.open_sample("napari-virtual-st", "cmu1_small_region")
    widget = MeasuredWidget(viewer)
    slide = sample_slide_path()
    model = widget.model.value
    expected = default_output_dir(slide) / f"{slide.stem}.{model.stem}.measured.vst.zarr"
    assert widget.session.store_path() == expected
    widget.store.value = tmp_path / "mine.vst.zarr"  # the user's choice is kept
    widget.model.value = widget.model.choices[-1]
    assert widget.session.store_path() == tmp_path / "mine.vst.zarr"
