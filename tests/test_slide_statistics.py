"""Models that standardise their features per slide (``vst.slide_statistics``): the contract,
the statistics, and the Predictor that feeds them. The engine's side is in ``test_run.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.contract import ModelMetadata
from napari_virtual_st.errors import ModelError, StoreError
from napari_virtual_st.predictor import Predictor
from napari_virtual_st.slide_statistics import (
    SlideStatistics,
    StatisticsSpec,
    sample_evenly,
)
from synthetic_models import (
    STATISTICS_SPEC,
    expected_mean_colour,
    expected_standardised,
    write_mean_colour_model,
)


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    """Synthetic tiles: random colours, so each feature varies."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def standardising_model(tmp_path: Path) -> Path:
    return write_mean_colour_model(tmp_path / "standardising.onnx", with_slide_statistics=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"mean": "m", "std": "s"}, "must name the 'features' tensor"),
        ({"features": "f", "mean": "m", "std": "m"}, "two inputs other than 'image'"),
        ({"features": "f", "mean": "image", "std": "s"}, "two inputs other than 'image'"),
        ({"features": "f", "mean": "m", "std": "s", "spots": 1}, "spots must be an integer"),
        ({"features": "f", "mean": "m", "std": "s", "spots": True}, "spots must be an integer"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_malformed_declaration_is_refused_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ModelError, match=r"vst\.slide_statistics") as caught:
        StatisticsSpec.from_json(json.dumps(value))
    assert message in str(caught.value)


def test_the_declaration_round_trips_through_the_metadata() -> None:
    meta = ModelMetadata(
        genes=["A"], tile_px=8, tile_um=50.0, family="x", target="y",
        slide_statistics=STATISTICS_SPEC,
    )  # fmt: skip
    again = ModelMetadata.from_props(meta.to_props())
    assert again.slide_statistics == StatisticsSpec("features", "feature_mean", "feature_std", 16)
    assert again.as_dict()["slide_statistics"] == STATISTICS_SPEC


def test_a_graph_that_disagrees_with_its_declaration_is_refused(tmp_path: Path) -> None:
    wrong_output = dict(STATISTICS_SPEC, features="embedding")
    path = write_mean_colour_model(
        tmp_path / "a.onnx",
        with_slide_statistics=True,
        metadata_overrides={"vst.slide_statistics": json.dumps(wrong_output)},
    )
    with pytest.raises(ModelError, match="names output 'embedding'"):
        Predictor(path)
    undeclared = write_mean_colour_model(
        tmp_path / "b.onnx",
        with_slide_statistics=True,
        metadata_overrides={"vst.slide_statistics": None},
    )
    with pytest.raises(
        ModelError, match=r"input 'feature_mean' that metadata 'vst\.extra_inputs'"
    ):
        Predictor(undeclared)


def test_statistics_are_the_mean_and_spread_with_a_constant_feature_divided_by_one() -> None:
    features = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    stats = SlideStatistics.of(features, "three spots")
    np.testing.assert_allclose(stats.mean, [3.0, 5.0, 5.0])
    np.testing.assert_allclose(stats.std, [np.std([1, 3, 5]), 1.0, np.std([2, 4, 9])], rtol=1e-6)
    assert stats.n_spots == 3 and stats.n_features == 3
    with pytest.raises(ModelError, match="at least 2 spots"):
        SlideStatistics.of(features[:1])
    with pytest.raises(ModelError, match="not finite"):
        SlideStatistics.of(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_statistics_round_trip_exactly_through_a_store_record() -> None:
    stats = SlideStatistics.of(np.random.default_rng(1).normal(size=(40, 7)), "forty spots")
    record = json.loads(json.dumps(stats.to_attrs()))  # as the store's JSON attributes keep it
    again = SlideStatistics.from_attrs(record)
    assert again == stats and again.sampled_from == "forty spots"
    assert again.mean.dtype == np.float32
    with pytest.raises(StoreError, match="slide statistics are damaged"):
        SlideStatistics.from_attrs({"mean": [0.0], "std": [0.0], "n_spots": 2})
    with pytest.raises(StoreError, match="slide statistics are damaged"):
        SlideStatistics.from_attrs({"mean": [0.0]})


def test_an_even_sample_spreads_over_all_items_in_order_and_takes_few_whole() -> None:
    np.testing.assert_array_equal(sample_evenly(5, 10), np.arange(5))
    picked = sample_evenly(1000, 10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 999
    assert np.all(np.diff(picked) >= 110)  # evenly spread, not the first ten
    np.testing.assert_array_equal(picked, sample_evenly(1000, 10))


def test_a_model_that_needs_statistics_refuses_to_predict_without_them(
    standardising_model: Path,
) -> None:
    predictor = Predictor(standardising_model)
    with pytest.raises(ModelError, match="needs the slide's statistics first"):
        predictor.predict(_tiles(4))


def test_bound_statistics_standardise_the_features_and_each_copy_keeps_its_own(
    standardising_model: Path,
) -> None:
    tiles = _tiles(30)
    predictor = Predictor(standardising_model)
    features = predictor.slide_features(tiles)
    np.testing.assert_allclose(features, tiles.mean(axis=(1, 2)) / 255.0, rtol=1e-5)
    a = predictor.standardised_on(tiles)
    b = predictor.standardised_on(tiles[:10])
    np.testing.assert_allclose(
        a.predict(tiles[:5]).expression,
        expected_standardised(tiles[:5], features.mean(0), features.std(0), 5),
        rtol=1e-4,
        atol=1e-5,
    )
    assert not np.allclose(a.predict(tiles[:5]).expression, b.predict(tiles[:5]).expression)
    assert predictor.slide_statistics is None  # the original is unchanged
    with pytest.raises(ModelError, match="do not fit"):
        predictor.with_slide_statistics(SlideStatistics.of(np.ones((3, 4)) * [[1], [2], [3]]))


def test_a_model_without_slide_statistics_takes_none(synthetic_model: Path) -> None:
    predictor = Predictor(synthetic_model)
    with pytest.raises(ModelError, match="does not standardise its features per slide"):
        predictor.slide_features(_tiles(3))
    tiles = _tiles(3)
    np.testing.assert_allclose(
        predictor.predict(tiles).expression, expected_mean_colour(tiles, 5), rtol=1e-5
    )


def test_the_workshop_scores_a_file_with_statistics_sampled_as_a_run_samples_them(
    standardising_model: Path,
) -> None:
    from models.evaluate import predict_onnx
    from napari_virtual_st.slide_statistics import sample_evenly

    tiles = _tiles(40, seed=3)  # more than the model's declared 16 spots
    predictor = Predictor(standardising_model)
    expected = predictor.standardised_on(tiles[sample_evenly(40, 16)]).predict(tiles).expression
    np.testing.assert_allclose(predict_onnx(predictor, tiles, batch=7), expected, rtol=1e-6)
    assert not np.allclose(predict_onnx(predictor.standardised_on(tiles), tiles), expected)
