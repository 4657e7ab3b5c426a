"""The figures ``benchmarks/bench_pipeline.py`` derives: the shared-core limit and the
efficiencies against it, medians of interleaved rounds, and CPU lists as taskset reads them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_pipeline


def _run(tps: float, cpu_ms: float, **extra: Any) -> dict[str, Any]:
    return {
        "tps": tps,
        "cpu_ms_per_tile": cpu_ms,
        "other_load_cores": 0.0,
        "spots": 320,
        "grid_spots_total": 5000,
        "grid_s": 0.1,
        "slide": {"format": "tiff", "dimensions": [100, 100], "level_count": 1, "mpp": 0.5},
        **extra,
    }


def _details(
    read: tuple[float, float], model: tuple[float, float], pipe: tuple[float, float]
) -> dict[str, dict[str, Any]]:
    extra = {"first_result_s": 1.0, "peak_rss_mb": 600.0, "providers": ["CPUExecutionProvider"]}
    return {
        "read": _run(*read),
        "model": _run(*model),
        "pipeline": _run(*pipe, **extra),
    }


def test_the_shared_limit_is_what_the_cores_allow_for_both_parts_cpu_time() -> None:
    # 2 cores; reading 2 + model 38 CPU-ms a tile: 2000 / 40 = 50 tiles/s, below
    # min(read, model) = 52
    out = bench_pipeline._derive(_details((500, 2.0), (52, 38.0), (47.5, 42.0)), cores=2)
    assert out["shared_limit_tps"] == 50.0
    assert out["efficiency"] == pytest.approx(0.95)
    assert out["efficiency_vs_min"] == pytest.approx(47.5 / 52, abs=1e-3)
    assert out["cpu_efficiency"] == pytest.approx(40 / 42, abs=1e-3)
    assert out["visium_minutes"] == pytest.approx(4992 / 47.5 / 60, abs=0.01)


def test_the_shared_limit_is_never_above_the_slower_part() -> None:
    # 1 core: 1000 / (1 + 20) = 47.6, but the model alone makes only 40
    out = bench_pipeline._derive(_details((900, 1.0), (40, 20.0), (38, 21.0)), cores=1)
    assert out["shared_limit_tps"] == 40.0
    assert out["efficiency"] == pytest.approx(0.95)


def test_a_round_figure_is_the_median_of_the_rounds() -> None:
    runs = [_run(10.0, 50.0), _run(14.0, 40.0), _run(12.0, 45.0)]
    res = bench_pipeline._median_run(runs)
    assert (res["tps"], res["cpu_ms_per_tile"]) == (12.0, 45.0)
    assert res["runs_tps"] == [10.0, 14.0, 12.0]
    even = bench_pipeline._median_run([_run(10.0, 50.0), _run(14.0, 40.0)])
    assert (even["tps"], even["cpu_ms_per_tile"]) == (12.0, 45.0)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_cpu_lists_are_read_as_taskset_reads_them() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    first = allowed[0]
    assert bench_pipeline._parse_cpus(str(first)) == [first]
    if len(allowed) >= 2 and allowed[1] == first + 1:
        assert bench_pipeline._parse_cpus(f"{first}-{first + 1}") == [first, first + 1]
        assert bench_pipeline._parse_cpus(f"{first},{first + 1}") == [first, first + 1]
    with pytest.raises(SystemExit, match="may only use CPUs"):
        bench_pipeline._parse_cpus(str(max(allowed) + 1))
