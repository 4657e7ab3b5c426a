"""Which code a benchmark measures: this checkout's commit, a temporary worktree of a base
revision to compare against, and labels for records that never hold this machine's paths.

Used by ``bench_pipeline.py --base``, ``compare_gui.py`` and ``bench_read_tile.py``; also
the two pieces every benchmark shares: a measurement run in a fresh process
(:func:`child_result`) and the atomic results file (:func:`write_results`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def checkout_revision() -> str:
    """This checkout's short commit, with ``+changes`` where its ``src`` differs from it."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False
    ).returncode
    return f"{head}+changes" if changed else head


@contextlib.contextmanager
def base_worktree(rev: str) -> Iterator[Path]:
    """A temporary detached git worktree of ``rev``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="vst-bench-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def source_label(path: str | Path) -> str:
    """``path`` for a committed record: relative to the checkout (``src``), or, outside it
    (the base revision's temporary worktree), ``base worktree/<its path in the tree>``."""
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return path.relative_to(REPO).as_posix() or "."
    parts = path.parts
    if "tree" in parts:  # (base_worktree's layout: <tmp>/tree/<path in the repository>)
        inside = parts[len(parts) - parts[::-1].index("tree") :]
        return "/".join(("base worktree", *inside))
    return path.name


def write_results(path: Path, record: dict[str, Any]) -> None:
    """Write a benchmark's record as JSON, whole or not at all (a temporary file, then
    renamed over ``path``), and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def child_result(
    argv: Sequence[str],
    mark: str,
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run ``argv`` (a measurement in a fresh process) and return the JSON of its last stdout
    line that starts with ``mark``; raises ``RuntimeError`` naming ``what`` with the end of
    its stderr when there is none."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(mark):
            result: dict[str, Any] = json.loads(line[len(mark) :])
            return result
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
