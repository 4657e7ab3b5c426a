"""Responsiveness of the napari plugin during a prediction run.

For each scenario a fresh process opens a shown napari viewer (1280 × 900), opens the slide
with the plugin's reader, docks the Predict widget from the plugin's manifest (as napari's
Plugins menu does) and presses Run, then measures (the
prediction itself runs in the plugin's prediction process, as it does in napari; everything
timed here is napari's process):

- ``stall_max_ms``: the GUI event loop's longest stall from pressing Run until the run's
  last layer is shown (target < 100 ms). A 2 ms ``QTimer`` ticks on the GUI thread; a stall
  is the gap between two ticks minus the 2 ms interval. ``stall_max_predicting_ms`` counts
  only stalls that began before the worker finished (the spots layer and the colour bars are
  added after it); ``stall_p99_ms`` and ``stalls_over_100ms`` describe the rest;
  ``stall_max_without_drawing_ms`` leaves out the time the canvas spent drawing (``draws``,
  ``draw_median_ms``, ``draw_max_ms``: vispy draw events); ``top_stalls`` lists the five
  longest as [s after Run, stall ms, ms of it spent drawing]. ``idle_stall_max_ms`` is the
  same measure over two seconds *before* Run, for reference (what the machine and the
  software-rendered display cost without our work); ``napari_add_image_ms`` is another
  reference: napari's own time to add a 1-pixel image layer to the same viewer (the call and
  the event-loop turn after it), the least any new layer costs the GUI thread here.
- ``first_heatmap_s``: from pressing Run to the first heatmap with predicted values drawn on
  the canvas (the vispy draw after the layer's data changed; target < 2 s).
- ``run_events_s``: when each run event reached napari's process, in s after Run (the
  prediction process asked for, its stages, the store, the first two batches): where the
  time to the first values went.
- ``spots``, ``spots_done``, ``run_s``: the grid and how far the run got; scenarios with a
  time limit press Cancel then, and ``cancel_s`` is the time until the run had stopped.
- ``gui_calls``: GUI-thread time per call (the Predict widget's and the Gene browser's
  handlers, Python garbage collections by generation and thread, the plugin's layer
  helpers, napari's ``add_layer``/``remove``/``refresh``/thumbnail/progress calls, canvas
  draws): calls, total and longest ms; ``top_stalls_made_of``: for each of the five longest
  stalls, the outermost timed calls inside it and their ms (what the stall was made of).

Scenarios: the generated large SYNTHETIC pyramidal TIFF (``make_large_tiff.py``, 40 960 px
square at 0.5 µm/px) with the bundled NSL model over the whole slide (every Visium spot on
tissue, ending with the spots layer of 250 genes), and with the random-weight ResNet-18
BENCHMARK model (``resnet18_torch.py``, a torch export) for a fixed time then Cancel; and the real 2220 ×
2967 px CMU-1-Small-Region.svs with NSL, to show the first-heatmap time does not depend on
slide size.

Needs a display: run it under Xvfb (``xvfb-run -a -s "-screen 0 1600x1200x24" python
benchmarks/bench_gui.py``) or on a desktop. Never with ``QT_QPA_PLATFORM=offscreen``.

Usage::

    python benchmarks/bench_gui.py --json benchmarks/results/gui.json
    python benchmarks/bench_gui.py --scenarios large-nsl --size 20480
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CMU_SLIDE = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
TARGETS = {"stall_max_ms": 100.0, "first_heatmap_s": 2.0}
TICK_MS = 2
SCENARIOS = ("large-nsl", "large-resnet18", "small-nsl", "small-nsl-cold", "large-nsl-cold")
#: Scenarios ending in ``-cold`` press Run as soon as the panel is docked (as a user who
#: opens the panel and clicks Run at once), without the settling waits and references.
_MARK = "@@RESULT@@ "


# --------------------------------------------------------------------------------------------
# child: one scenario in a fresh process with a shown viewer
# --------------------------------------------------------------------------------------------
class _StallMeter:
    """Ticks every ``TICK_MS`` on the GUI thread and records the gaps between ticks, and
    how much of each gap the canvas spent drawing (``draws``: (start, end) of each draw)."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.gaps: list[float] = []
        self.ends: list[float] = []
        self.draws: list[tuple[float, float]] = []
        self._draw_start = 0.0
        self._last: float | None = None
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(now - self._last)
            self.ends.append(now)
        self._last = now

    def draw_started(self, _event: Any = None) -> None:
        self._draw_start = time.perf_counter()

    def draw_ended(self, _event: Any = None) -> None:
        self.draws.append((self._draw_start, time.perf_counter()))

    def start(self) -> None:
        self.gaps.clear()
        self.ends.clear()
        self.draws.clear()
        self._last = None
        self._timer.start()

    def stop(self, split: float | None = None) -> dict[str, Any]:
        """Stop ticking and summarise; ``split``: also the worst stall that began before it."""
        self._timer.stop()
        gaps = np.asarray(self.gaps or [0.0])
        ends = np.asarray(self.ends or [0.0])
        drawing = np.zeros_like(gaps)
        for a, b in self.draws:  # canvas drawing inside each gap
            drawing += np.clip(np.minimum(ends, b) - np.maximum(ends - gaps, a), 0.0, None)
        stalls = np.maximum(gaps * 1000 - TICK_MS, 0.0)
        other = np.maximum((gaps - drawing) * 1000 - TICK_MS, 0.0)
        draw_ms = np.asarray([b - a for a, b in self.draws] or [0.0]) * 1000
        worst = np.argsort(stalls)[::-1][:5]
        top = [
            [
                round(float(ends[i] - gaps[i]), 3),
                round(float(stalls[i]), 1),
                round(float(drawing[i]) * 1000, 1),
            ]
            for i in worst
            if stalls[i] > 0
        ]
        before = stalls[(ends - gaps) < split] if split is not None else stalls
        return {
            "max_before_split_ms": float(before.max()) if before.size else 0.0,
            "top": top,
            "max_ms": float(stalls.max()),
            "p99_ms": float(np.percentile(stalls, 99)),
            "over_100ms": int((stalls > 100).sum()),
            "max_without_drawing_ms": float(other.max()),
            "draws": len(self.draws),
            "draw_max_ms": float(draw_ms.max()),
            "draw_median_ms": float(np.median(draw_ms)),
            "ticks": len(self.gaps),
        }


class _SliceRecorder:
    """Times named GUI-thread calls (widget handlers, layer changes, colour bars, canvas
    draws), so each stall can be put down to what ran inside it."""

    #: calls shorter than this are not kept
    MIN_MS = 3.0

    def __init__(self) -> None:
        self.slices: list[tuple[float, float, str, int]] = []  # start, end, name, depth
        self._depth = 0

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        """Replace ``owner.attr`` by a timed call of the original."""
        import functools
        import threading

        original = getattr(owner, attr)
        label = name or attr
        gui = threading.main_thread()

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not gui:
                return original(*args, **kwargs)
            start = time.perf_counter()
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                end = time.perf_counter()
                if (end - start) * 1000 >= self.MIN_MS:
                    self.slices.append((start, end, label, self._depth))

        setattr(owner, attr, timed)

    def summary(self, t0: float, stalls: list[list[float]]) -> dict[str, Any]:
        """Total ms per name, and for each of the top stalls the outermost calls inside it."""
        totals: dict[str, list[float]] = {}
        for a, b, name, _depth in self.slices:
            entry = totals.setdefault(name, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += (b - a) * 1000
            entry[2] = max(entry[2], (b - a) * 1000)
        by_name = {
            k: {"calls": int(v[0]), "total_ms": round(v[1], 1), "max_ms": round(v[2], 1)}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1][1])
        }
        inside = []
        for start, ms, _draw in stalls:
            a, b = t0 + start, t0 + start + ms / 1000 + TICK_MS / 1000
            calls = [
                [name, round((min(e, b) - max(s, a)) * 1000, 1)]
                for s, e, name, depth in self.slices
                if depth == 0 and s < b and e > a and (min(e, b) - max(s, a)) * 1000 >= 1
            ]
            inside.append({"at_s": start, "stall_ms": ms, "calls": calls})
        return {"by_name": by_name, "top_stalls": inside}


def _instrument(recorder: _SliceRecorder, widget: Any, viewer: Any) -> None:
    """Time the widget's GUI-thread handlers and the napari calls they make."""
    from napari.layers import Image, Points
    from napari.utils import progress

    from napari_virtual_st._napari import layers as vst_layers
    from napari_virtual_st._napari.run_layers import RunLayers
    from napari_virtual_st._napari.run_session import RunSession

    handlers = {
        "run",
        "_redraw",
        "_add_spots",
        "_show_colorbars",
        "_make_layer",
        "_make_view",
        "_prepare_layer",
        "_reveal_layer",
        "_layers_ready",
        "_start_activity",
        "_update_activity",
        "_open_gene_browser",
        "_post",
        "_finish",
    }
    for attr in dir(type(widget)):
        wanted = attr.startswith("_on_") or attr in handlers
        if wanted and callable(getattr(type(widget), attr, None)):
            recorder.wrap(widget, attr, f"widget.{attr}")
    # a run's handlers are its session's and its layers' (new ones per Run: wrapped in the
    # classes)
    for cls, prefix in ((RunSession, "session"), (RunLayers, "run_layers")):
        for attr in dir(cls):
            wanted = attr.startswith("_on_") or attr in handlers
            if wanted and callable(getattr(cls, attr, None)):
                recorder.wrap(cls, attr, f"{prefix}.{attr}")
    for attr in ("refresh_heatmaps", "show_colorbar", "add_layer"):
        if hasattr(vst_layers, attr):
            recorder.wrap(vst_layers, attr, f"layers.{attr}")
    recorder.wrap(type(viewer), "add_layer", "viewer.add_layer")
    recorder.wrap(type(viewer.layers), "remove", "viewer.layers.remove")
    for cls in (Image, Points):
        for attr in ("refresh", "_set_view_slice", "_update_thumbnail"):
            if hasattr(cls, attr):
                recorder.wrap(cls, attr, f"{cls.__name__}.{attr}")
    for attr in ("update", "close", "__init__"):
        recorder.wrap(progress, attr, f"progress.{attr}")
    try:  # napari's views of a layer made before it is added (where this version has them)
        from napari_virtual_st._napari.layer_views import LayerViews
    except ImportError:
        return
    for attr in ("make_visual", "make_controls"):
        recorder.wrap(LayerViews, attr, f"LayerViews.{attr}")


def _wait(app: Any, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)


def _napari_add_image_ms(viewer: Any, app: Any, repeats: int) -> list[float]:
    """A reference: what napari itself takes to add one (1-pixel) image layer to this viewer,
    in the GUI-thread call and the event-loop turn after it (no plugin code involved)."""
    napari_add_ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        plain = viewer.add_image(np.zeros((1, 1), np.float32), name="reference")
        app.processEvents()
        napari_add_ms.append((time.perf_counter() - t) * 1000)
        viewer.layers.remove(plain)
        _wait(app, 0.2)
    return napari_add_ms


def _record_run_events() -> list[tuple[float, str]]:
    """Record when each run event (the stages, the preview, the store, the first two
    batches) reaches napari's process from the prediction process, and when the run asked
    for a prediction process (``process``); the list fills as the run goes."""
    from napari_virtual_st.run import process

    arrivals: list[tuple[float, str]] = []
    original = process.run_events_in_process

    def recorded(*args: Any, **kwargs: Any) -> Any:
        arrivals.append((time.perf_counter(), "process"))
        events = original(*args, **kwargs)
        batches = 0
        try:
            while True:
                event = next(events)
                kind = type(event).__name__.removesuffix("Event")
                batches += kind == "Batch"
                if batches <= 2:
                    label = getattr(event, "message", "") if kind == "Stage" else ""
                    arrivals.append((time.perf_counter(), f"{kind} {label}".strip()))
                yield event
        except StopIteration as end:  # (the store's path: the run's outcome)
            return end.value

    process.run_events_in_process = recorded
    return arrivals


def _child(scenario: str, size: int, seconds: float, out_dir: Path) -> dict[str, Any]:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_virtual_st._napari.layers import vst_meta
    from napari_virtual_st._napari.predict_widget import PredictWidget
    from napari_virtual_st.registry import default_model

    if scenario.startswith("large"):
        from make_large_tiff import cached_large_tiff

        slide_path = cached_large_tiff(CACHE, size_px=size)
    else:
        slide_path = CMU_SLIDE
    cold = scenario.endswith("-cold")
    if scenario.endswith("resnet18"):
        from resnet18_torch import cached_benchmark_model

        model_path = cached_benchmark_model(CACHE)
        limit = seconds
    else:
        model_path = default_model().path
        limit = None

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 900)
    app = QApplication.instance()
    t = time.perf_counter()
    (slide_layer,) = viewer.open(slide_path, plugin="napari-virtual-st")
    viewer.reset_view()
    _wait(app, 0.5)
    open_s = time.perf_counter() - t
    # docked as from napari's Plugins menu (napari then hands it a proxy of the viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-virtual-st", "Predict expression")
    assert isinstance(widget, PredictWidget)
    if model_path in widget.model.choices:
        widget.model.value = model_path
    else:
        widget.add_model(model_path)
    widget.output.value = out_dir / f"{scenario}.vst.zarr"
    widget.overwrite.value = True
    if not cold:
        _wait(app, 1.0)

    napari_add_ms = _napari_add_image_ms(viewer, app, 0 if cold else 3)

    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    meter = _StallMeter()
    canvas.events.draw.connect(meter.draw_started, position="first")
    canvas.events.draw.connect(meter.draw_ended, position="last")
    meter.start()
    _wait(app, 0.0 if cold else 2.0)
    idle = meter.stop()

    marks: dict[str, float] = {}

    def on_draw(_event: Any = None) -> None:
        if "first_values" in marks and "first_drawn" not in marks:
            marks["first_drawn"] = time.perf_counter()

    def on_data(layer: Any) -> None:  # values in a heatmap that is shown
        if "first_values" not in marks and layer.visible and np.isfinite(layer.data).any():
            marks["first_values"] = time.perf_counter()

    def on_inserted(event: Any) -> None:
        layer = event.value
        if vst_meta(layer).get("role") == "heatmap":
            on_data(layer)
            layer.events.data.connect(lambda _e: on_data(layer))
            layer.events.set_data.connect(lambda _e: on_data(layer))  # (values set in place)
            layer.events.visible.connect(lambda _e: on_data(layer))

    canvas.events.draw.connect(on_draw)
    viewer.layers.events.inserted.connect(on_inserted)
    recorder = _SliceRecorder()
    _instrument(recorder, widget, viewer)
    for name, dock in viewer.window._wrapped_dock_widgets.items():
        if name.startswith("Gene browser"):  # docked with the Predict panel
            browser = dock.inner_widget()
            for attr in dir(type(browser)):
                if attr.startswith("_on_") or attr in (
                    "_follow_colour_bar",
                    "_select_shown_genes",
                    "_apply_filter",
                ):
                    recorder.wrap(browser, attr, f"gene_browser.{attr}")
    arrivals = _record_run_events()
    loop = QEventLoop()
    cancel_at: list[float] = []
    started: list[float] = []

    def press_run() -> None:  # as a click would: from the running event loop
        started.append(time.perf_counter())
        worker = widget.run()
        assert worker is not None, widget.status.value
        worker.finished.connect(lambda: marks.setdefault("finished", time.perf_counter()))
        worker.finished.connect(loop.quit)
        if limit is not None:
            QTimer.singleShot(int(limit * 1000), cancel)

    def cancel() -> None:
        cancel_at.append(time.perf_counter())
        widget.cancel()

    # Python's garbage collector stops every thread while it runs (a collection started by the
    # worker's allocations stalls the GUI too): time each collection, by generation
    import gc

    collections: list[tuple[float, float, int, str]] = []
    gc_start: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[:] = [time.perf_counter()]
        elif gc_start:
            import threading

            name = "gui" if threading.current_thread() is threading.main_thread() else "worker"
            collections.append((gc_start[0], time.perf_counter(), info["generation"], name))

    gc.callbacks.append(on_gc)
    meter.start()
    QTimer.singleShot(200, press_run)  # the meter is ticking before Run is pressed
    loop.exec()
    while widget.running:  # the widget adds the spots layer and colour bars after the worker
        _wait(app, 0.01)
    _wait(app, 0.3)
    ended = time.perf_counter()
    busy = meter.stop(split=marks.get("finished"))
    gc.callbacks.remove(on_gc)
    started_at = started[0]
    for a, b, generation, thread in collections:
        if (b - a) * 1000 >= recorder.MIN_MS:
            recorder.slices.append((a, b, f"gc gen{generation} ({thread} thread)", 0))
    for a, b in meter.draws:
        if (b - a) * 1000 >= recorder.MIN_MS:
            recorder.slices.append((a, b, "canvas draw", 0))
    slices = recorder.summary(started_at, [[t - started_at, ms, d] for t, ms, d in busy["top"]])
    view = widget.session.view if widget.session is not None else None
    spots = view.n_spots if view is not None else 0
    done = view.spots_done if view is not None else 0
    result = {
        "scenario": scenario,
        "slide": slide_path.name,
        "slide_px": list(slide_layer.data[0].shape[:2])
        if slide_layer.multiscale
        else list(slide_layer.data.shape[:2]),
        "model": model_path.name,
        "open_s": round(open_s, 3),
        "first_heatmap_s": round(marks.get("first_drawn", float("nan")) - started_at, 3),
        "first_values_s": round(marks.get("first_values", float("nan")) - started_at, 3),
        # where the time to the first values went: each run event up to the second batch, as
        # it reached napari's process, [s after Run, event]
        "run_events_s": [[round(t - started_at, 3), what] for t, what in arrivals],
        "stall_max_ms": round(busy["max_ms"], 1),
        # until the worker finished (the spots layer and colour bars come after)
        "stall_max_predicting_ms": round(busy["max_before_split_ms"], 1),
        "stall_p99_ms": round(busy["p99_ms"], 1),
        "stalls_over_100ms": busy["over_100ms"],
        "stall_max_without_drawing_ms": round(busy["max_without_drawing_ms"], 1),
        "draws": busy["draws"],
        "draw_max_ms": round(busy["draw_max_ms"], 1),
        "draw_median_ms": round(busy["draw_median_ms"], 1),
        "idle_stall_max_ms": round(idle["max_ms"], 1),
        "napari_add_image_ms": round(float(np.median(napari_add_ms)), 1)
        if napari_add_ms
        else None,
        # the five longest stalls: [start, s after Run; stall ms; ms of it the canvas drew]
        "top_stalls": [[round(t - started_at, 2), ms, d] for t, ms, d in busy["top"]],
        "spots": spots,
        "spots_done": done,
        "run_s": round(ended - started_at, 2),
        "cancel_s": round(ended - cancel_at[0], 2) if cancel_at else None,
        "outcome": "cancelled"
        if widget.last_outcome is not None and widget.last_outcome.cancelled
        else ("error: " + str(widget.last_outcome.error))
        if widget.last_outcome is not None and widget.last_outcome.error is not None
        else "complete",
        "provider": widget.provider.value,
        # GUI-thread time by call (widget handlers, napari layer calls, canvas draws) and the
        # outermost calls inside each of the top stalls
        "gui_calls": slices["by_name"],
        "top_stalls_made_of": slices["top_stalls"],
    }
    viewer.close()
    return result


# --------------------------------------------------------------------------------------------
# parent: run each scenario in its own process, print a table, write JSON
# --------------------------------------------------------------------------------------------
def _run_child(scenario: str, size: int, seconds: float, out_dir: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        scenario,
        "--size",
        str(size),
        "--seconds",
        str(seconds),
        "--out-dir",
        str(out_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    raise RuntimeError(f"{scenario} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _machine() -> dict[str, Any]:
    import napari
    import onnxruntime

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in load],
        "napari": napari.__version__,
        "onnxruntime": onnxruntime.__version__,
        "display": os.environ.get("DISPLAY", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--size", type=int, default=40960, help="large slide side in px")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="ResNet-18 run time before Cancel"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        sys.exit("no display: run under xvfb-run (see the module docstring)")
    if args.child:
        sys.path.insert(0, str(HERE))
        result = _child(args.child, args.size, args.seconds, args.out_dir)
        print(_MARK + json.dumps(result), flush=True)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="vst-bench-gui-") as tmp:
        for scenario in args.scenarios:
            print(f"running {scenario} ...", flush=True)
            results.append(_run_child(scenario, args.size, args.seconds, Path(tmp)))
    header = (
        f"{'scenario':16} {'slide px':>13} {'spots':>7} {'done':>7} {'run s':>7} "
        f"{'1st heatmap s':>13} {'stall max ms':>12} {'predicting':>10} {'p99 ms':>7} {'>100ms':>6} "
        f"{'w/o draw ms':>11} {'draw med/max ms':>15} {'idle max ms':>11} {'napari add ms':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        px = "×".join(str(v) for v in r["slide_px"])
        print(
            f"{r['scenario']:16} {px:>13} {r['spots']:>7} {r['spots_done']:>7} "
            f"{r['run_s']:>7} {r['first_heatmap_s']:>13} {r['stall_max_ms']:>12} "
            f"{r['stall_max_predicting_ms']:>10} "
            f"{r['stall_p99_ms']:>7} {r['stalls_over_100ms']:>6} "
            f"{r['stall_max_without_drawing_ms']:>11} "
            f"{str(r['draw_median_ms']) + '/' + str(r['draw_max_ms']):>15} "
            f"{r['idle_stall_max_ms']:>11} {r['napari_add_image_ms']!s:>13}"
        )
    report = {"machine": _machine(), "targets": TARGETS, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(report, indent=2) + "\n")
        tmp_json.replace(args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
