"""What ``benchmarks/bench_tiatoolbox.py`` decides without TIAToolbox: when it skips and what
it says, the agreement check that makes the comparison one of equal accuracy, the ratios,
and the mask that keeps TIAToolbox's patch grid to the chosen cells (TIAToolbox itself is
never needed here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_tiatoolbox
import tiatoolbox_child


def test_without_tia_python_it_skips_and_says_how_to_run_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_tiatoolbox.main([]) == 0
    err = capsys.readouterr().err
    assert "skipped: no --tia-python given" in err
    assert "pip install tiatoolbox" in err


def test_a_python_that_does_not_run_is_a_skip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert bench_tiatoolbox.main(["--tia-python", str(missing)]) == 0
    assert f"skipped: --tia-python {missing} does not run" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("tiatoolbox") is not None, reason="TIAToolbox is installed here"
)
def test_a_python_without_tiatoolbox_is_a_skip_that_names_the_import_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_tiatoolbox.main(["--tia-python", sys.executable]) == 0
    err = capsys.readouterr().err
    assert f"skipped: TIAToolbox is not installed for --tia-python {sys.executable}" in err
    assert "ModuleNotFoundError" in err


def test_the_paths_are_checked_before_anything_runs() -> None:
    assert bench_tiatoolbox.parse_paths("tia-ort,ours") == ["ours", "tia-ort"]
    assert bench_tiatoolbox.parse_paths("tia-torch,ours-int8,ours") == [
        "ours",
        "ours-int8",
        "tia-torch",
    ]
    with pytest.raises(SystemExit, match="unknown tia-tf"):
        bench_tiatoolbox.parse_paths("ours,tia-tf")
    with pytest.raises(SystemExit, match="must include ours"):
        bench_tiatoolbox.parse_paths("tia-torch")


def _values(n: int, genes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, genes)).astype(np.float32)


def test_agreement_matches_patches_by_cell_whatever_their_order() -> None:
    cells = np.array([[r, c] for r in range(4) for c in range(5)])
    values = _values(len(cells), 6)
    order = np.random.default_rng(1).permutation(len(cells))
    noise = 1e-4 * _values(len(cells), 6, seed=2)
    out = bench_tiatoolbox.agreement(cells, values, cells[order], values[order] + noise[order])
    assert out["n_shared"] == 20
    assert out["passed"]
    assert out["min_r"] > 0.9999


def test_agreement_fails_when_one_output_disagrees_and_counts_only_shared_patches() -> None:
    cells = np.array([[0, c] for c in range(30)])
    values = _values(30, 4)
    other = values.copy()
    other[:, 2] = _values(30, 1, seed=5)[:, 0]  # one output unrelated
    out = bench_tiatoolbox.agreement(cells, values, cells[5:], other[5:], min_r=0.99)
    assert (out["n_a"], out["n_b"], out["n_shared"]) == (30, 25, 25)
    assert not out["passed"]
    assert out["min_r"] < 0.9
    assert out["median_r"] == pytest.approx(1.0)


def test_agreement_fails_on_an_output_without_r_and_on_no_shared_patches() -> None:
    cells = np.array([[0, c] for c in range(10)])
    values = _values(10, 3)
    flat = values.copy()
    flat[:, 1] = 7.0  # constant: no correlation to speak of
    out = bench_tiatoolbox.agreement(cells, values, cells, flat)
    assert out["outputs_without_r"] == 1
    assert not out["passed"]
    apart = bench_tiatoolbox.agreement(cells, values, cells + np.array([1, 0]), values)
    assert apart["n_shared"] == 0
    assert not apart["passed"]


def _round(tps: float, cpu_ms: float, rss: float, first: float) -> dict[str, Any]:
    return {
        "spots": 1500,
        "tps": tps,
        "cpu_ms_per_tile": cpu_ms,
        "peak_rss_mb": rss,
        "first_result_s": first,
        "other_load_cores": 0.5,
    }


def test_summary_takes_medians_and_ranges_and_ratios_against_ours() -> None:
    runs = {
        "ours": [_round(40, 50, 700, 3.0), _round(36, 52, 710, 2.8), _round(44, 48, 690, 3.2)],
        "tia-torch": [
            _round(20, 90, 1800, 12),
            _round(10, 95, 1900, 13),
            _round(22, 85, 1850, 11),
        ],
    }
    out = bench_tiatoolbox.summarise(runs)
    ours, tia = out["paths"]["ours"], out["paths"]["tia-torch"]
    assert (ours["tps"], ours["tps_range"]) == (40, [36, 44])
    assert (tia["tps"], tia["cpu_ms_per_tile"], tia["peak_rss_mb"]) == (20, 90, 1850)
    assert out["ratios"] == {
        "speed_vs_tia_torch": 2.0,
        "cpu_vs_tia_torch": 1.8,
        "rss_vs_tia_torch": round(1850 / 700, 3),
        "first_result_vs_tia_torch": 4.0,
    }


def test_int8_gets_its_own_ratios_and_ours_fp32_is_not_compared_with_it() -> None:
    runs = {
        "ours": [_round(40, 50, 700, 3.0)],
        "ours-int8": [_round(90, 22, 650, 2.5)],
        "tia-torch": [_round(30, 60, 1500, 10)],
        "tia-ort": [_round(45, 40, 1600, 9)],
    }
    ratios = bench_tiatoolbox.summarise(runs)["ratios"]
    assert ratios["speed_vs_tia_torch"] == round(40 / 30, 3)
    assert ratios["ours_int8_speed_vs_tia_torch"] == 3.0
    assert ratios["ours_int8_speed_vs_tia_ort"] == 2.0
    assert ratios["ours_int8_speed_vs_ours"] == round(90 / 40, 3)
    assert "speed_vs_ours_int8" not in ratios


def _outputs(tmp_path: Path, values: dict[str, np.ndarray]) -> dict[str, Path]:
    cells = np.array([[r, c] for r in range(5) for c in range(8)])
    out = {}
    for path, v in values.items():
        out[path] = tmp_path / f"{path}.npz"
        np.savez(out[path], cells_rc=cells, values=v)
    return out


def test_int8_is_held_to_the_products_gate_and_tiatoolbox_to_identity(tmp_path: Path) -> None:
    exact = _values(40, 20)
    near = exact + 0.02 * _values(40, 20, seed=3)  # every output r ~0.9998: within the gate
    one_off = exact.copy()
    one_off[:, 0] = 0.7 * exact[:, 0] + 0.7 * _values(40, 1, seed=4)[:, 0]  # r ~0.7
    paths = ["ours", "ours-int8", "tia-torch"]
    agree = bench_tiatoolbox.agreements(
        _outputs(tmp_path, {"ours": exact, "ours-int8": near, "tia-torch": near}), paths, 0.99
    )
    assert set(agree) == {"ours vs tia-torch", "ours-int8 vs ours"}
    assert agree["ours-int8 vs ours"]["passed"]
    assert agree["ours-int8 vs ours"]["min_r_required"] == 0.95
    assert agree["ours-int8 vs ours"]["min_median_r_required"] == 0.99
    bad = bench_tiatoolbox.agreements(
        _outputs(tmp_path, {"ours": exact, "ours-int8": one_off, "tia-torch": exact}),
        paths,
        0.99,
    )
    assert not bad["ours-int8 vs ours"]["passed"]  # one output below 0.95 fails the gate
    assert bad["ours vs tia-torch"]["passed"]


def test_median_agreement_below_the_gate_fails_even_when_every_output_clears_its_floor() -> None:
    cells = np.array([[0, c] for c in range(200)])
    values = _values(200, 10)
    noisy = values + 0.2 * _values(200, 10, seed=8)  # every output r ~0.98
    out = bench_tiatoolbox.agreement(cells, values, cells, noisy, 0.95, 0.99)
    assert out["min_r"] > 0.95 and out["median_r"] < 0.99
    assert not out["passed"]
    assert bench_tiatoolbox.agreement(cells, values, cells, noisy, 0.95)["passed"]


def test_verdicts_say_which_target_each_of_our_paths_meets() -> None:
    runs = {
        "ours": [_round(40, 50, 700, 3.0)],
        "ours-int8": [_round(95, 22, 650, 2.5)],
        "tia-torch": [_round(30, 60, 1500, 10)],
        "tia-ort": [_round(45, 40, 1600, 9)],
    }
    entry = {
        **bench_tiatoolbox.summarise(runs),
        "agreement": {
            "ours vs tia-torch": {"passed": True},
            "ours vs tia-ort": {"passed": True},
            "ours-int8 vs ours": {"passed": False},
        },
    }
    ours, int8 = bench_tiatoolbox.verdicts(entry)
    assert ours.startswith("ours: 1.33× tia-torch (target ≥ 3: NOT met)")
    assert "0.89× tia-ort (target ≥ 1: NOT met)" in ours and ours.endswith("equal accuracy")
    assert int8.startswith("ours-int8: 3.17× tia-torch (target ≥ 3: met)")
    assert int8.endswith("accuracy check FAILED")


@pytest.mark.parametrize(
    ("wsi_shape", "step"), [((40960, 40960), 32), ((2240, 1120), 32), ((2216, 2966), 2)]
)
def test_the_mask_covers_exactly_the_chosen_cells_as_tiatoolbox_scales_it(
    wsi_shape: tuple[int, int], step: int
) -> None:
    patch = 224
    cols, rows = wsi_shape[0] // patch, wsi_shape[1] // patch
    rng = np.random.default_rng(0)
    every = np.array([[r, c] for r in range(rows) for c in range(cols)])
    chosen = every[rng.random(len(every)) < 0.3]
    if wsi_shape[0] > 10_000:  # (a corner of the large slide is enough)
        chosen = np.array([[0, 0], [0, 1], [3, 7], [181, 180], [5, 5]])
        every = np.array([[r, c] for r in range(8) for c in range(8)] + [[181, 180]])
    assert tiatoolbox_child.mask_step(wsi_shape, patch) == step
    mask = tiatoolbox_child.cell_mask(wsi_shape, chosen, patch)
    # TIAToolbox's rule (PatchExtractor.filter_coordinates, min_mask_ratio 0): scale the
    # bounds by mask size / slide size, keep a patch with any mask pixel set inside
    scale = np.array(mask.shape[::-1]) / np.array(wsi_shape)
    kept = set()
    for r, c in every:
        x0, y0, x1, y1 = (np.array([c, r, c + 1, r + 1]) * patch * np.tile(scale, 2)).astype(int)
        if mask[y0:y1, x0:x1].any():
            kept.add((int(r), int(c)))
    assert kept == {(int(r), int(c)) for r, c in chosen}


def test_tiatoolbox_bounds_become_grid_cells() -> None:
    bounds = np.array([[0, 0, 224, 224], [448, 224, 672, 448]])
    assert tiatoolbox_child.cells_from_bounds(bounds, 224).tolist() == [[0, 0], [1, 2]]
