"""napari's views of a layer made before it is added (LayerViews), in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Points

from napari_virtual_st._napari import layer_views
from napari_virtual_st._napari.layer_views import LayerViews, handing_over
from napari_virtual_st._napari.layers import add_layer


def _heatmap(name: str) -> Image:
    """A SYNTHETIC heatmap-like layer: a 3 × 4 gradient placed in micrometres."""
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 11
    return Image(
        values,
        name=name,
        colormap="viridis",
        contrast_limits=(0.0, 1.0),
        interpolation2d="nearest",
        scale=(10.0, 10.0),
        translate=(5.0, 5.0),
    )


def _follows(visual, layer) -> bool:
    """Whether the visual listens to any of the layer's events."""
    return any(
        isinstance(callback, tuple) and callback[0]() is visual
        for emitter in layer.events.emitters.values()
        for callback in emitter.callbacks
    )


def _made(viewer, layer) -> LayerViews:
    views = LayerViews(viewer, layer)
    views.make_visual()
    views.make_controls()
    assert views.visual is not None and views.controls is not None
    return views


def test_napari_uses_the_views_made_before_the_layer_was_added(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    qt_viewer = viewer.window._qt_viewer
    layer = _heatmap("made before")
    views = _made(viewer, layer)
    visual, controls = views.visual, views.controls

    add_layer(viewer, layer, select=False, views=views)

    assert qt_viewer.canvas.layer_to_visual[layer] is visual
    assert qt_viewer.controls.widgets[layer] is controls
    assert views.visual is None and views.controls is None  # handed over, not closed
    # napari's own factories are back: the next layer gets views of its own
    later = viewer.add_image(np.zeros((2, 2), np.float32), name="later")
    assert qt_viewer.canvas.layer_to_visual[later] is not visual
    assert qt_viewer.controls.widgets[later] is not controls
    # selecting shows its controls, and removing the layer removes both views
    viewer.layers.selection.active = layer
    assert qt_viewer.controls.indexOf(controls) >= 0  # (in napari's stack of controls)
    assert qt_viewer.controls.currentWidget() is controls
    viewer.layers.remove(layer)
    assert layer not in qt_viewer.canvas.layer_to_visual
    assert layer not in qt_viewer.controls.widgets


def test_a_layer_added_with_views_made_before_is_drawn_as_napari_draws_it(
    make_napari_viewer,
) -> None:
    viewer = make_napari_viewer(show=True)
    plain = viewer.add_layer(_heatmap("plain"))
    viewer.reset_view()
    expected = viewer.screenshot(canvas_only=True, flash=False)
    plain.visible = False
    layer = _heatmap("made before")
    add_layer(viewer, layer, views=_made(viewer, layer))
    drawn = viewer.screenshot(canvas_only=True, flash=False)

    assert expected.std() > 0  # (the gradient is on screen)
    np.testing.assert_array_equal(drawn, expected)
    layer.data = layer.data[::-1].copy()  # and it follows changes as napari's own views do
    assert not np.array_equal(viewer.screenshot(canvas_only=True, flash=False), expected)


def test_views_napari_did_not_use_are_closed(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    qt_viewer = viewer.window._qt_viewer
    layer = _heatmap("made before")
    views = _made(viewer, layer)
    visual = views.visual
    assert _follows(visual, layer)
    other = Points(np.array([[1.0, 2.0]]), name="another layer")

    add_layer(viewer, other, views=views)  # (views of a different layer)

    assert qt_viewer.canvas.layer_to_visual[other] is not visual  # napari made its own
    assert views.visual is None and views.controls is None
    assert visual.node.parent is None
    assert not _follows(visual, layer)  # (closed: it no longer listens to its layer)


def test_napari_factories_are_restored_when_the_add_fails(make_napari_viewer) -> None:
    from napari._qt import qt_viewer as qt_viewer_module
    from napari._qt.layer_controls import qt_layer_controls_container as controls_module

    viewer = make_napari_viewer()
    originals = (
        qt_viewer_module.create_vispy_layer,
        controls_module.create_qt_layer_controls,
    )
    layer = _heatmap("made before")
    views = _made(viewer, layer)
    with pytest.raises(RuntimeError, match="refused"), handing_over(views):
        raise RuntimeError("refused")

    assert (
        qt_viewer_module.create_vispy_layer,
        controls_module.create_qt_layer_controls,
    ) == originals
    assert views.visual is None and views.controls is None  # (closed)


def test_where_napari_makes_controls_on_selection_none_are_made_before(
    make_napari_viewer, monkeypatch
) -> None:
    viewer = make_napari_viewer()
    monkeypatch.setattr(layer_views, "_dynamic_controls", lambda: True)
    layer = _heatmap("made before")
    views = LayerViews(viewer, layer)
    views.make_controls()
    assert views.controls is None
    views.make_visual()
    add_layer(viewer, layer, views=views)
    assert layer in viewer.layers


def test_without_a_window_nothing_is_made_and_napari_adds_as_usual() -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layer = _heatmap("made before")
    views = LayerViews(viewer, layer)
    views.make_visual()
    views.make_controls()
    assert views.visual is None and views.controls is None
    add_layer(viewer, layer, views=views)
    assert layer in viewer.layers


def test_where_napari_factories_fail_beforehand_napari_makes_the_views_while_adding(
    make_napari_viewer, monkeypatch
) -> None:
    viewer = make_napari_viewer()
    layer = _heatmap("made before")
    views = LayerViews(viewer, layer)

    def refused(*_args, **_kwargs):
        raise TypeError("another napari's signature")

    with monkeypatch.context() as patched:  # (napari's own factories are untouched)
        patched.setattr(layer_views, "_factory", lambda where: (None, refused))
        views.make_visual()
        views.make_controls()
    assert views.visual is None and views.controls is None
    add_layer(viewer, layer, views=views)
    qt_viewer = viewer.window._qt_viewer
    assert layer in qt_viewer.canvas.layer_to_visual and layer in qt_viewer.controls.widgets


@pytest.fixture
def _fallback_unlogged(monkeypatch):
    """Each test sees the fall-back's first log line."""
    monkeypatch.setattr(layer_views, "_FALLBACK_LOGGED", [False])


def test_the_pinned_napari_has_the_private_factories_the_switch_uses() -> None:
    factories = layer_views.private_factories()
    assert factories is not None
    assert factories.visual[1].__name__ == "create_vispy_layer"
    assert factories.controls[1].__name__ == "create_qt_layer_controls"


@pytest.mark.usefixtures("_fallback_unlogged")
@pytest.mark.parametrize(
    ("attr", "where", "why"),
    [
        ("_VISUAL_FACTORY", ("napari._qt.qt_viewer", "create_vispy_layer_gone"), "has no"),
        ("_CONTROLS_FACTORY", ("napari._qt.no_such_module", "create_qt_layer_controls"), "has no"),
        ("_CONTROLS_FACTORY", ("time", "time"), "no longer takes a layer first"),
    ],
)
def test_without_napari_private_factories_layers_are_added_by_public_api_logged_once(
    make_napari_viewer, monkeypatch, caplog, attr, where, why
) -> None:
    monkeypatch.setattr(layer_views, attr, where)  # (another napari: renamed, moved, changed)
    viewer = make_napari_viewer()
    qt_viewer = viewer.window._qt_viewer
    with caplog.at_level("INFO", logger=layer_views.__name__):
        assert layer_views.private_factories() is None
        layers = [_heatmap("first"), _heatmap("second")]
        for layer in layers:
            views = LayerViews(viewer, layer)
            views.make_visual()
            views.make_controls()
            assert views.visual is None and views.controls is None
            add_layer(viewer, layer, views=views)
    for layer in layers:  # napari made the views itself, through the public add
        assert layer in viewer.layers
        assert layer in qt_viewer.canvas.layer_to_visual and layer in qt_viewer.controls.widgets
    messages = [r.getMessage() for r in caplog.records if r.name == layer_views.__name__]
    assert len(messages) == 1 and why in messages[0]  # said once, with the reason


@pytest.mark.usefixtures("_fallback_unlogged")
def test_the_switch_turns_the_private_factories_off(make_napari_viewer, monkeypatch) -> None:
    from napari._qt import qt_viewer as qt_viewer_module

    monkeypatch.setattr(layer_views, "ENABLED", False)
    viewer = make_napari_viewer()
    original = qt_viewer_module.create_vispy_layer
    layer = _heatmap("public")
    views = LayerViews(viewer, layer)
    views.make_visual()
    assert views.visual is None
    with handing_over(views):
        assert qt_viewer_module.create_vispy_layer is original  # (never replaced)
        viewer.add_layer(layer)
    assert layer in viewer.window._qt_viewer.canvas.layer_to_visual
