"""A/B of the napari plugin's responsiveness: this checkout against an earlier commit.

Runs ``bench_gui.py`` alternately for the earlier commit (checked out in a temporary git
worktree, its ``src`` first on ``PYTHONPATH``, this checkout's bench script) and for this
checkout, ``--runs`` times each, on the same machine in the same hour, then writes the
medians and ranges per scenario beside every run. Alternating keeps a change in the
machine's load from looking like a change in the code.

``--busy-cores N`` starts N processes that keep a core busy for the whole comparison (at
normal priority): a machine where another program is working, or a slower machine.

Needs a display, as ``bench_gui.py`` does::

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/compare_gui.py \\
        --base 7a5d91a --runs 3 --json benchmarks/results/gui_ab.json

``--combine`` makes the same report from runs already written by ``bench_gui.py --json``
(``--after`` and ``--before`` files) instead of running them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from revisions import base_worktree, checkout_revision, write_results  # noqa: E402

#: Per-scenario figures summarised (as ``bench_gui.py`` reports them).
KEYS = (
    "first_heatmap_s",
    "stall_max_ms",
    "stall_p99_ms",
    "stalls_over_100ms",
    "stall_max_without_drawing_ms",
    "draw_max_ms",
    "idle_stall_max_ms",
    "napari_add_image_ms",
    "run_s",
)


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Median and [min, max] of each figure per scenario over ``runs`` (bench reports)."""
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for result in run["results"]:
            by_scenario.setdefault(result["scenario"], []).append(result)
    medians: dict[str, Any] = {}
    ranges: dict[str, Any] = {}
    for scenario, results in by_scenario.items():
        medians[scenario] = {"n_runs": len(results)}
        ranges[scenario] = {}
        for key in KEYS:
            values = [r[key] for r in results if r.get(key) is not None]
            if values:
                medians[scenario][key] = round(float(median(values)), 3)
                ranges[scenario][key] = [min(values), max(values)]
    return medians, ranges


def _busy() -> None:  # (a child process: keeps one core busy until terminated)
    while True:
        pass


def _bench(pythonpath: Path, out: Path, scenarios: list[str] | None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p
    )
    command = [sys.executable, str(HERE / "bench_gui.py"), "--json", str(out)]
    if scenarios:
        command += ["--scenarios", *scenarios]
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


def _table(medians_after: dict[str, Any], medians_before: dict[str, Any]) -> None:
    print(f"{'scenario':16} {'figure':30} {'before':>10} {'after':>10}")
    for scenario, after in medians_after.items():
        before = medians_before.get(scenario, {})
        for key in ("first_heatmap_s", "stall_max_ms", "stalls_over_100ms", "run_s"):
            print(f"{scenario:16} {key:30} {before.get(key, ''):>10} {after.get(key, ''):>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the earlier commit (any git revision)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side")
    parser.add_argument("--scenarios", nargs="+", help="as bench_gui.py's --scenarios")
    parser.add_argument("--busy-cores", type=int, default=0, help="cores kept busy meanwhile")
    parser.add_argument("--json", type=Path, required=True, help="write the report here")
    parser.add_argument("--combine", action="store_true", help="report on existing runs")
    parser.add_argument("--after", nargs="*", type=Path, default=[], help="(with --combine)")
    parser.add_argument("--before", nargs="*", type=Path, default=[], help="(with --combine)")
    args = parser.parse_args()
    if args.combine:
        if not args.after or not args.before:
            parser.error("--combine needs --after and --before run files")
        missing = [str(p) for p in [*args.after, *args.before] if not p.is_file()]
        if missing:
            parser.error(f"no such run file: {', '.join(missing)}")
        after = [json.loads(p.read_text()) for p in args.after]
        before = [json.loads(p.read_text()) for p in args.before]
    else:
        if not args.base:
            parser.error("--base is needed (or --combine)")
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        known = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "rev-parse",
                "--verify",
                "--quiet",
                f"{args.base}^{{commit}}",
            ],
            capture_output=True,
            check=False,
        )
        if known.returncode != 0:
            parser.error(f"--base {args.base!r} is not a commit of this repository")
        after, before = _compare(args.base, args.runs, args.scenarios, args.busy_cores)
    medians_after, ranges_after = summarise(after)
    medians_before, ranges_before = summarise(before)
    report = {
        "base": args.base,
        "after_commit": checkout_revision(),
        "busy_cores": args.busy_cores,
        "summary": "after = this checkout, before = the base commit; medians and ranges "
        "of the runs below (alternating, same machine)",
        "median_after": medians_after,
        "range_after": ranges_after,
        "median_before": medians_before,
        "range_before": ranges_before,
        "runs_after": after,
        "runs_before": before,
    }
    _table(medians_after, medians_before)
    write_results(args.json, report)


def _compare(
    base: str, runs: int, scenarios: list[str] | None, busy_cores: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the bench alternately for ``base`` and this checkout."""
    after: list[dict[str, Any]] = []
    before: list[dict[str, Any]] = []
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(busy_cores)]
    with (
        tempfile.TemporaryDirectory(prefix="vst-compare-gui-") as tmp,
        base_worktree(base) as worktree,
    ):
        try:
            for process in busy:
                process.start()
            for i in range(runs):
                before.append(_bench(worktree / "src", Path(tmp) / f"before{i}.json", scenarios))
                after.append(_bench(REPO / "src", Path(tmp) / f"after{i}.json", scenarios))
        finally:
            for process in busy:
                process.terminate()
    return after, before


if __name__ == "__main__":
    main()
