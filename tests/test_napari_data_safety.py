"""The plugin keeps the CLI's data-safety guarantees (issue 18 items 1-2, "the same guarantees
hold in the plugin"): the Predict panel's "Replace earlier results" never removes what is not a
prediction store, and a store another process is writing is refused with the holder named —
shown as a notification, with nothing on disk changed and no layer added.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import notification_manager

from napari_virtual_st._napari.layers import find_layers
from napari_virtual_st._napari.predict_widget import PredictWidget
from napari_virtual_st.cli import main
from napari_virtual_st.store import PredictionStore
from test_data_safety import lock_held_by_another_process, predict_argv, tree_digest

PLUGIN = "napari-virtual-st"
RUN_TIMEOUT_MS = 120_000


def _panel(viewer, slide: Path, model: Path, out: Path) -> PredictWidget:
    viewer.open(slide, plugin=PLUGIN)
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict expression")
    widget.add_model(model)
    widget.output.value = out
    widget.overwrite.value = True  # the user ticks "Replace earlier results in this file"
    return widget


def _run_and_errors(widget: PredictWidget, qtbot) -> list[str]:
    before = len(notification_manager.records)
    worker = widget.run()
    if worker is not None:
        qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    return [
        str(n.message) for n in notification_manager.records[before:] if str(n.severity) == "error"
    ]


def test_replace_never_removes_an_ordinary_folder(
    make_napari_viewer, qtbot, cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    """A folder of the user's, named as a store or not: refused, or written beside."""
    thesis = tmp_path / "my_thesis"
    named_like_a_store = tmp_path / "results.vst.zarr"  # a name is not a store
    for folder in (thesis, named_like_a_store):
        (folder / "chapters").mkdir(parents=True)
        (folder / "chapters" / "one.txt").write_text("months of work")
        (folder / "data.csv").write_text("a,b\n1,2\n")
    before = {folder: tree_digest(folder) for folder in (thesis, named_like_a_store)}
    viewer = make_napari_viewer()
    widget = _panel(viewer, cmu_small_svs, synthetic_model, named_like_a_store)
    errors = _run_and_errors(widget, qtbot)
    assert len(errors) == 1, errors
    assert "not a prediction store" in errors[0] and "results.vst.zarr" in errors[0]
    assert not find_layers(viewer, named_like_a_store, "heatmap")
    # a folder without the store suffix: the panel names the store beside it, the folder stays
    widget.output.value = thesis
    assert _run_and_errors(widget, qtbot) == []
    assert widget.last_outcome is not None
    assert widget.last_outcome.store_path == tmp_path / "my_thesis.vst.zarr"
    assert PredictionStore.open(tmp_path / "my_thesis.vst.zarr").is_complete
    assert {folder: tree_digest(folder) for folder in before} == before


def test_a_store_another_process_writes_is_refused_naming_it_and_left_unchanged(
    make_napari_viewer, qtbot, cmu_small_svs: Path, synthetic_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmu.vst.zarr"
    assert main(predict_argv(cmu_small_svs, synthetic_model, out)) == 0
    before = tree_digest(out)
    with lock_held_by_another_process(out) as holder:
        viewer = make_napari_viewer()
        widget = _panel(viewer, cmu_small_svs, synthetic_model, out)
        errors = _run_and_errors(widget, qtbot)
        assert len(errors) == 1, errors
        assert f"in use by process {holder.pid}" in errors[0]
        assert tree_digest(out) == before
        assert widget.last_outcome is not None and widget.last_outcome.error is not None
    # once the other writer is gone (a crash frees the lock) the same click replaces it
    assert _run_and_errors(widget, qtbot) == []
    assert PredictionStore.open(out).is_complete
