"""How predicted values are drawn: units, clamping, contrast modes, names, top genes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_virtual_st.display import (
    clamp_note,
    clamp_to_target,
    context_marker,
    contrast_limits,
    layer_name,
    target_floor,
    target_unit,
    top_genes,
)
from napari_virtual_st.errors import ParameterError


def test_log1p_and_count_targets_cannot_be_negative_others_can() -> None:
    assert target_floor("log1p_cp10k") == 0.0 and target_floor("counts") == 0.0
    assert target_floor("zscore") is None and target_floor("") is None
    assert target_unit("log1p_cp10k") == "log(1 + counts per 10,000)"
    assert target_unit("zscore") == "zscore"


def test_clamping_draws_impossible_values_at_the_floor_and_counts_them() -> None:
    values = np.array([-0.84, 0.0, 1.5, np.nan, -3.7], np.float32)
    drawn, n = clamp_to_target(values, "log1p_cp10k")
    np.testing.assert_array_equal(drawn[[0, 1, 2, 4]], [0.0, 0.0, 1.5, 0.0])
    assert np.isnan(drawn[3]) and n == 2
    assert values[0] == np.float32(-0.84)  # the model's values are not changed
    assert clamp_to_target(values, "zscore")[1] == 0
    note = clamp_note(2, 4, "log1p_cp10k")
    assert note == "2 of 4 values below 0 drawn as 0 (impossible)"
    assert clamp_note(0, 4, "log1p_cp10k") == ""


def test_contrast_modes() -> None:
    rng = np.random.default_rng(0)
    gene = rng.normal(4.4, 0.2, 1000)  # a gene that hardly varies (ERBB2 3.86-4.97)
    gene[0] = 40.0  # one extreme spot
    every = np.stack([gene, rng.normal(1.0, 2.0, 1000)], axis=1)
    lo, hi = contrast_limits(gene, "percentile")
    assert 3.8 < lo < hi < 5.0  # the extreme spot does not wash the map out
    assert contrast_limits(gene, "minmax")[1] == pytest.approx(40.0)
    fixed = contrast_limits(gene, "fixed", all_values=every, target="log1p_cp10k")
    assert fixed == contrast_limits(every[:, 1], "fixed", all_values=every, target="log1p_cp10k")
    assert fixed[0] == 0.0  # the log1p floor: a negative limit would draw impossible values
    assert fixed[1] - fixed[0] > 4 * (hi - lo)  # the small range looks small
    assert contrast_limits([np.nan], "percentile") == (0.0, 1.0)
    lo, hi = contrast_limits([2.0, 2.0], "minmax")
    assert lo < 2.0 < hi
    with pytest.raises(ParameterError, match="fixed"):
        contrast_limits(gene, "fixed")
    with pytest.raises(ParameterError, match="unknown contrast mode"):
        contrast_limits(gene, "log")


def test_layer_names_say_gene_and_model_and_stay_unique() -> None:
    assert layer_name("ERBB2", "NSL") == "ERBB2 · NSL"
    assert layer_name("ERBB2", "NSL", what="SD") == "ERBB2 SD · NSL"
    assert layer_name("ERBB2", "NSL", taken=["ERBB2 · NSL"], store="b") == "ERBB2 · NSL · b"


def test_top_genes_are_those_a_spot_stands_out_in() -> None:
    genes = ["A", "B", "C", "D"]
    means = np.array([5.0, 1.0, 1.0, 0.0])
    sds = np.array([1.0, 0.5, 1.0, 0.0])
    row = np.array([5.5, 2.5, 0.0, 9.0])  # D has no spread: left out
    top = top_genes(row, means, sds, genes, k=2)
    assert [g for g, _, _ in top] == ["B", "A"]
    assert top[0][1:] == (2.5, pytest.approx(3.0))


def test_layer_names_say_when_values_use_the_spots_neighbours() -> None:
    from napari_virtual_st.context import SpotContext

    kernel = SpotContext(sigma_um=100.0, radius_um=250.0)
    assert context_marker(None) == ""
    assert context_marker(kernel) == "context 100 µm"
    assert layer_name("ERBB2", "NSL", context=kernel) == "ERBB2 · NSL · context 100 µm"
    assert (
        layer_name("ERBB2", "NSL", what="SD", context=kernel) == "ERBB2 SD · NSL · context 100 µm"
    )
    taken = ["ERBB2 · NSL · context 100 µm"]
    assert layer_name("ERBB2", "NSL", taken=taken, store="b", context=kernel) == (
        "ERBB2 · NSL · context 100 µm · b"
    )


def test_layer_names_keep_the_models_short_name() -> None:
    assert layer_name("ERBB2", "NSL (HER2ST, cross-patient fold)") == "ERBB2 · NSL"
