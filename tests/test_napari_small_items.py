"""The small dead ends of issue 21: a reopened store's colour bar, the model line, the sample
slide's note, toasts cut mid-sentence, the Plugins menu entries the guide names, and opening a
store from a script as the guide says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from napari.utils.notifications import notification_manager

from napari_virtual_st._napari import notify
from napari_virtual_st._napari.gene_browser import GeneBrowser
from napari_virtual_st._napari.layers import find_layers
from napari_virtual_st._napari.model_choices import model_summary
from napari_virtual_st._napari.predict_widget import PredictWidget
from napari_virtual_st.registry import default_model
from runs import finished_store

PLUGIN = "napari-virtual-st"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "napari.md"


@pytest.fixture
def store(cmu_small_svs: Path, tmp_path: Path) -> Path:
    return finished_store(cmu_small_svs, tmp_path, "m", n_genes=6)


def _browsers(viewer) -> list[GeneBrowser]:
    return [w for w in viewer.window.dock_widgets.values() if isinstance(w, GeneBrowser)]


def test_a_store_opened_from_disk_brings_the_gene_browser_and_its_colour_bar(
    make_napari_viewer, qtbot, store: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(store, plugin=PLUGIN)
    qtbot.waitUntil(lambda: bool(_browsers(viewer)), timeout=10_000)
    (browser,) = _browsers(viewer)
    (heatmap,) = find_layers(viewer, store, "heatmap")
    assert browser.colour_bar.layer is heatmap and browser.legend.value
    viewer.open(store, plugin=PLUGIN)  # a second store (or the same again): one browser
    qtbot.wait(100)
    assert len(_browsers(viewer)) == 1


def test_the_model_line_is_plain_words() -> None:
    line = model_summary(default_model().info)
    assert line.startswith("250 genes, each from the 110 µm square of tissue around a spot")
    assert "log(1 + counts per 10,000)" in line and "HER2+ breast cancer" in line
    assert "On a patient it never saw" in line and "50 most variable genes" in line
    for jargon in ("PCC-", "px tiles", "log1p_cp10k", "HEG50"):
        assert jargon not in line


def test_the_guide_quotes_the_bundled_models_agreement_as_its_model_line_gives_it() -> None:
    """The guide's figures (the warning at its top, *How far to trust a map*) are the default
    model's held-out correlations, rounded as the Predict panel's model line rounds them."""
    line = model_summary(default_model().info)
    found = (
        re.search(r"correlated at ([0-9.]+) over all genes", line),
        re.search(r"([0-9.]+) over the 50 most variable genes", line),
    )
    assert found[0] and found[1], line
    overall, variable = found[0][1], found[1][1]
    text = " ".join(DOCS.read_text(encoding="utf-8").replace(">", " ").split())
    assert f"at about {overall} ({variable} for the 50 most variable genes" in text
    assert f"about {overall} over all its genes and {variable} over the 50 most variable" in text


def test_the_sample_slide_says_it_is_not_the_tissue_the_model_learnt_from(
    make_napari_viewer, cmu_small_svs: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert not widget.sample_note.native.isHidden()
    assert "not HER2+ breast cancer" in widget.sample_note.value
    viewer.layers.clear()
    viewer.open(cmu_small_svs, plugin=PLUGIN)  # a copy of the user's: no such note
    assert widget.slide.value is not None and widget.sample_note.native.isHidden()


def test_an_error_toast_starts_with_a_whole_sentence_and_the_panel_has_it_all(
    make_napari_viewer,
) -> None:
    long = "the slide does not record its µm per pixel: give it in the field above first"
    message = notify.toast_message("The run cannot start yet.", long)
    assert message.splitlines() == ["The run cannot start yet.", long]
    assert notify.toast_message("Nothing exported.", "no file") == "no file"
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)  # no slide open
    viewer.window.add_dock_widget(widget)
    before = len(notification_manager.records)
    assert widget.run() is None
    (shown,) = [str(n.message) for n in notification_manager.records[before:]]
    first, rest = shown.split("\n", 1)
    assert first == "The run cannot start yet." and len(first) <= notify.TOAST_CHARS
    assert rest.startswith("open a slide first") and widget.status.value == rest


def test_the_guide_names_every_plugins_menu_entry() -> None:
    import yaml

    manifest = Path(__file__).resolve().parents[1] / "src/napari_virtual_st/napari.yaml"
    widgets = yaml.safe_load(manifest.read_text())["contributions"]["widgets"]
    names = [w["display_name"] for w in widgets]
    assert len(names) == 4
    text = DOCS.read_text(encoding="utf-8")
    assert "four entries" in text
    for name in names:
        assert f"*{name}*" in text, name


def test_a_store_opens_from_a_script_by_the_line_the_guide_gives(
    make_napari_viewer, store: Path
) -> None:
    """``viewer.open(store)`` reads with napari's own reader (napari's default
    ``plugin="napari"``, which no plugin can change): it finds nothing to show in a
    ``.vst.zarr`` folder. The guide says so and gives the line that opens it; both hold."""
    text = DOCS.read_text(encoding="utf-8")
    assert 'plugin="napari-virtual-st")' in text
    assert "napari's own reader unless told otherwise" in text
    viewer = make_napari_viewer()
    assert viewer.open(store) == []  # napari's default: if it ever reads the store, say so
    layers = viewer.open(store, plugin=PLUGIN)  # the guide's line
    assert [layer.name for layer in layers] == [layer.name for layer in viewer.layers]
    (heatmap,) = find_layers(viewer, store, "heatmap")
    assert heatmap in layers and len(layers) == 3  # the slide, the heatmap, the spots


def test_a_slides_resolution_is_given_once_and_every_panel_uses_it_at_once(
    make_napari_viewer, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from napari_virtual_st._napari.measured_widget import MeasuredWidget

    png = tmp_path / "scan.png"
    rgb = np.zeros((800, 1000, 3), np.uint8)  # tissue on a black background
    rgb[200:600, 200:800] = (180, 90, 160)
    Image.fromarray(rgb).save(png)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(png, plugin=PLUGIN)
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    measured = MeasuredWidget(viewer)
    viewer.window.add_dock_widget(measured)
    assert not predict.mpp.native.isHidden() and not measured.data.slide_mpp.native.isHidden()
    # given in the Predict panel: the slide is placed in µm at once, the view follows
    predict.mpp.value = 0.5
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    assert tuple(layer.units) == ("micrometer", "micrometer") or str(layer.units[0]) == "um"
    centre = np.asarray(viewer.scene.camera.center[-2:])
    np.testing.assert_allclose(centre, (400 * 0.5, 500 * 0.5), rtol=0.05)
    # ... and the Measured ST panel has it without being told again
    assert measured.session.mpp() == 0.5 and measured.data.slide_mpp.value == 0.5
    # corrected in the Measured ST panel: the slide and the Predict panel follow
    measured.data.slide_mpp.value = 1.0
    np.testing.assert_allclose(layer.scale, (1.0, 1.0))
    assert predict.mpp.value == 1.0 and predict.request().mpp == 1.0


def test_a_slide_given_its_resolution_shares_the_heatmaps_units_so_napari_never_warns(
    make_napari_viewer, qtbot, store: Path, tmp_path: Path
) -> None:
    """Issue 21: napari warned "Inconsistent units across layers" (and dropped the scale
    bar's µm) while a PNG slide stayed in pixels beside heatmaps in µm. Given its µm/px, the
    slide is in µm too: no warning when the canvas next draws, nor when a layer is added."""
    import numpy as np
    from PIL import Image

    def unit_warnings() -> list[str]:
        return [
            str(n.message)
            for n in notification_manager.records[before:]
            if "Inconsistent units" in str(n.message)
        ]

    png = tmp_path / "scan.png"
    rgb = np.full((400, 500, 3), 245, np.uint8)
    rgb[100:300, 100:400] = (180, 90, 160)  # synthetic tissue
    Image.fromarray(rgb).save(png)
    viewer = make_napari_viewer(show=True)
    before = len(notification_manager.records)
    (slide,) = viewer.open(png, plugin=PLUGIN)
    viewer.open(store, plugin=PLUGIN)  # a prediction in µm beside the slide in pixels
    qtbot.waitUntil(lambda: bool(unit_warnings()), timeout=10_000)  # (napari's own check)
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    predict.mpp.value = 0.5
    assert tuple(str(u) for u in slide.units) == tuple(str(u) for u in viewer.layers[-1].units)
    before = len(notification_manager.records)
    browsers = _browsers(viewer)
    browser = browsers[0] if browsers else GeneBrowser(viewer)
    browser.show_genes([*browser.genes.value[:1], "SYNTH2"])  # a layer added: units checked
    for _ in range(5):
        viewer.window._qt_viewer.canvas._scene_canvas.update()
        qtbot.wait(100)
    assert not unit_warnings()


def test_opening_a_slide_without_resolution_asks_once_in_a_highlighted_field(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from napari_virtual_st._napari import resolution
    from napari_virtual_st._napari.measured_widget import MeasuredWidget

    rgb = np.full((800, 1000, 3), 245, np.uint8)
    rgb[200:600, 200:800] = (180, 90, 160)
    for name in ("first.png", "second.png"):
        Image.fromarray(rgb).save(tmp_path / name)
    viewer = make_napari_viewer()

    def predict_panels() -> list[PredictWidget]:
        docked = viewer.window.dock_widgets.values()
        return [w for w in docked if isinstance(w, PredictWidget)]

    def asked() -> list[str]:
        return [
            str(n.message)
            for n in notification_manager.records[before:]
            if "does not record its µm per pixel" in str(n.message)
        ]

    before = len(notification_manager.records)
    (layer,) = viewer.open(tmp_path / "first.png", plugin=PLUGIN)
    # not a modal dialog: the Predict panel is docked with its field highlighted, and a toast
    qtbot.waitUntil(lambda: len(predict_panels()) == 1, timeout=10_000)
    (predict,) = predict_panels()
    assert predict.slide.value is layer
    assert not predict.mpp.native.isHidden()
    assert resolution.is_needed(predict.mpp) and resolution.is_needed(predict.mpp_hint)
    assert len(asked()) == 1 and "first.png" in asked()[0]
    measured = MeasuredWidget(viewer)
    viewer.window.add_dock_widget(measured)
    assert resolution.is_needed(measured.data.slide_mpp)
    assert not resolution.ask(viewer, layer)  # once per slide

    viewer.scene.camera.zoom = 9.0
    viewer.scene.camera.center = (0, 10, 10)
    predict.mpp.value = 0.4988  # (four decimals, as vendors give it)
    np.testing.assert_allclose(layer.scale, (0.4988, 0.4988))
    np.testing.assert_allclose(
        viewer.scene.camera.center[-2:], (400 * 0.4988, 500 * 0.4988), rtol=0.05
    )
    assert viewer.scene.camera.zoom < 9.0  # the view was reset onto the rescaled slide
    assert not resolution.is_needed(predict.mpp) and not resolution.is_needed(predict.mpp_hint)
    assert not resolution.is_needed(measured.data.slide_mpp)
    assert measured.data.slide_mpp.value == 0.4988 and measured.session.mpp() == 0.4988
    assert predict.request().mpp == 0.4988

    # a second such slide: asked again, in the panel already docked
    (second,) = viewer.open(tmp_path / "second.png", plugin=PLUGIN)
    qtbot.waitUntil(lambda: len(asked()) == 2, timeout=10_000)
    assert len(predict_panels()) == 1 and predict.slide.value is second
    assert resolution.is_needed(predict.mpp)
