"""A user's script that runs a prediction in napari and quits ends cleanly (issue 18: "a user
closing napari or a script never sees that crash").

The case users meet: one viewer, the Predict panel's run in its worker process, the viewer
closed, Python exiting normally — no signal, no "Fatal Python error". (The suite itself exits
normally too, after ``conftest.pytest_sessionfinish`` has closed what the tests left.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

USER_SCRIPT = """
import sys
from pathlib import Path

import napari
from qtpy.QtCore import QEventLoop, QTimer

from napari_virtual_st._napari.predict_widget import PredictWidget

viewer = napari.Viewer(show=True)
viewer.open(Path(sys.argv[1]), plugin="napari-virtual-st")
widget = PredictWidget(viewer)
viewer.window.add_dock_widget(widget, name="Predict expression")
widget.output.value = Path(sys.argv[2])
widget.run()
loop = QEventLoop()
timer = QTimer()
timer.timeout.connect(lambda: None if widget.running else loop.quit())
timer.start(50)
loop.exec()
print("error:", widget.last_outcome.error, flush=True)
viewer.close()
print("closed", flush=True)
"""


def test_a_script_that_predicts_in_napari_and_closes_it_exits_cleanly(
    cmu_small_svs: Path, tmp_path: Path
) -> None:
    env = dict(os.environ)
    script = [sys.executable, "-X", "faulthandler", "-c", USER_SCRIPT]
    done = subprocess.run(
        [*script, str(cmu_small_svs), str(tmp_path / "cmu.vst.zarr")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert "Fatal Python error" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["error: None", "closed"]
