"""Run → first values in the prediction process, without napari: this checkout against an
earlier commit.

What ``bench_gui.py``'s ``run_events_s`` shows reaching napari, measured where it is made:
a fresh Python process imports the engine and the slide decoders first (as the plugin's
waiting prediction process does), then calls ``run()`` as the Predict panel asks it (the
visible-region preview on, the run's threads yielding the CPU) and records when each stage
began and when the first values (a preview or a batch) were out; it stops there. The two
revisions alternate, ``--runs`` times each, on the same machine in the same minutes, so a
change in the machine's load does not look like a change in the code.

Slides: the real CMU-1-Small-Region.svs (one level: every thumbnail decodes all of it) and
the generated large SYNTHETIC pyramidal TIFF (``make_large_tiff.py``; a preview first).

Usage::

    python benchmarks/bench_first_values.py --base d429425 --runs 5 \\
        --json benchmarks/results/first_values_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from revisions import base_worktree, checkout_revision  # noqa: E402

CMU_SLIDE = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
_MARK = "@@RESULT@@ "

#: The child: imports first, then one run until its first values.
_CHILD = r"""
import json, shutil, sys, tempfile, time
from pathlib import Path
from napari_virtual_st.errors import CancelledError
from napari_virtual_st.registry import default_model
from napari_virtual_st.run import RunSpec
from napari_virtual_st.run.engine import run
from napari_virtual_st.run.process import warm_imports
warm_imports()
slide = Path(sys.argv[1])
out = Path(tempfile.mkdtemp()) / "first.vst.zarr"
spec = RunSpec(slide, default_model().path, out, yield_cpu=True, preview=True)
marks = []
start = time.perf_counter()

def progress(event):
    kind = type(event).__name__.removesuffix("Event")
    label = getattr(event, "message", "") if kind == "Stage" else ""
    marks.append([round(time.perf_counter() - start, 3), (kind + " " + label).strip()])

try:
    run(spec, progress, lambda: any(m[1] in ("Preview", "Batch") for m in marks))
except CancelledError:
    pass
shutil.rmtree(out.parent, ignore_errors=True)
first = next(t for t, what in marks if what in ("Preview", "Batch"))
print("@@RESULT@@ " + json.dumps({"first_values_s": first, "events_s": marks}), flush=True)
"""


def _child(pythonpath: Path, slide: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(slide)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith(_MARK))
    return json.loads(line[len(_MARK) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side per slide")
    parser.add_argument("--size", type=int, default=40960, help="large slide side in px")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    from make_large_tiff import cached_large_tiff

    slides = {"CMU-1-Small-Region.svs": CMU_SLIDE}
    slides["synthetic large"] = cached_large_tiff(HERE / ".cache", size_px=args.size)
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {"before": [], "after": []} for s in slides
    }
    with base_worktree(args.base) as worktree:
        sides = {"before": worktree / "src", "after": REPO / "src"}
        for i in range(args.runs):
            for name, slide in slides.items():
                order = ("before", "after") if i % 2 == 0 else ("after", "before")
                for side in order:
                    runs[name][side].append(_child(sides[side], slide))
                    print(
                        f"{name:24} {side:6} run {i}: {runs[name][side][-1]['first_values_s']} s"
                    )
    print(f"\n{'slide':24} {'first values s before':>22} {'after':>18} {'ratio':>6}")
    summary = {}
    for name, sides_runs in runs.items():
        before = [r["first_values_s"] for r in sides_runs["before"]]
        after = [r["first_values_s"] for r in sides_runs["after"]]
        ratio = median(after) / median(before)
        summary[name] = {
            "before_median_s": round(median(before), 3),
            "after_median_s": round(median(after), 3),
            "before_range_s": [min(before), max(before)],
            "after_range_s": [min(after), max(after)],
            "after_over_before": round(ratio, 2),
        }
        print(
            f"{name:24} {median(before):>10.2f} [{min(before):.2f}-{max(before):.2f}] "
            f"{median(after):>8.2f} [{min(after):.2f}-{max(after):.2f}] {ratio:>6.2f}"
        )
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "base": args.base,
        "after_commit": checkout_revision(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": {
            "start": [round(x, 2) for x in load_before],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "summary": summary,
        "runs": runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
