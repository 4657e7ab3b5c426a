"""The NSL + DKAN-style model (``models/ensemble.py``): its graph computes what its parts do,
its weight is chosen without the section it predicts, and the shipped file reproduces its
recorded held-out metrics.

The graph tests use the bundled NSL and DKAN-style files and synthetic tiles (random pixels,
named as such); the reproduction test uses HER2ST and skips where ``../shared/data`` is absent.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphs import expression_of
from models import ensemble
from models.feature_context import Head, Setting
from napari_virtual_st.predictor import Predictor
from recorded_metrics import assert_file_reproduces_its_recorded_metrics


def test_pool_tiles_averages_each_block_and_rounds_half_to_even() -> None:
    tiles = np.zeros((1, 4, 4, 3), np.uint8)
    tiles[0, :2, :2] = [[0], [1]]  # block mean 0.5 -> 0 (half to even)
    tiles[0, :2, 2:] = [[1], [2]]  # 1.5 -> 2
    tiles[0, 2:, :2] = 255
    tiles[0, 2:, 2:, 0] = [[10, 20], [30, 40]]  # 25
    pooled = ensemble.pool_tiles(tiles, factor=2)
    assert pooled.shape == (1, 2, 2, 3) and pooled.dtype == np.uint8
    assert pooled[0, :, :, 0].tolist() == [[0, 2], [255, 25]]
    with pytest.raises(ValueError, match="3 x 3 blocks"):
        ensemble.pool_tiles(tiles, factor=3)


def test_combined_graph_equals_nsl_on_pooled_tiles_plus_the_per_gene_head_on_dkan_features() -> (
    None
):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)  # synthetic
    nsl = onnx.load(str(ensemble.BUNDLED / "nsl_her2st.onnx"))
    dkan = onnx.load(str(ensemble.BUNDLED / "dkan_her2st.onnx"))
    genes = 250
    head = Head(
        Setting("none"),
        rng.normal(size=(genes, 128)),
        rng.normal(size=(genes, 128)) * 0.05,
        rng.normal(size=genes) + 2.0,
    )
    model = ensemble.combined_graph(nsl, dkan, head, weight=0.3)
    got = expression_of(model, tiles)
    nsl_values = expression_of(nsl, ensemble.pool_tiles(tiles))
    dkan_values = head.predict(ensemble.shipped_dkan_features(tiles).astype(np.float64))
    want = ensemble.combine(nsl_values, dkan_values, 0.3)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got.min() >= 0.0  # clamped in the graph
    # weight 0 is NSL alone on the pooled tile
    np.testing.assert_allclose(
        expression_of(ensemble.combined_graph(nsl, dkan, head, weight=0.0), tiles),
        np.maximum(nsl_values, 0.0),
        atol=1e-5,
    )


def test_feature_tensor_names_the_features_the_dkan_readout_reads() -> None:
    dkan = onnx.load(str(ensemble.BUNDLED / "dkan_her2st.onnx"))
    name = ensemble.feature_tensor(dkan)
    rng = np.random.default_rng(1)
    features = ensemble.shipped_dkan_features(rng.integers(0, 256, (2, 64, 64, 3), np.uint8))
    assert features.shape == (2, 250, 128)
    nsl = onnx.load(str(ensemble.BUNDLED / "nsl_her2st.onnx"))
    with pytest.raises(ValueError, match="no shared readout"):
        ensemble.feature_tensor(nsl)
    assert name


def test_choose_weight_picks_the_mix_best_on_the_sections_it_is_given() -> None:
    rng = np.random.default_rng(2)
    truth = {k: rng.normal(size=(80, 5)) for k in "abc"}  # synthetic sections
    # NSL sees half the signal, DKAN the other half: the even mix is best on every section
    a = {k: rng.normal(size=(80, 5)) for k in truth}
    nsl = {k: truth[k] + a[k] for k in truth}
    dkan = {k: truth[k] - a[k] for k in truth}
    assert ensemble.choose_weight(nsl, dkan, truth) == 0.5
    # a section whose labels favour DKAN alone does not move the choice when it is left out
    poisoned = dict(truth, c=dkan["c"])
    assert ensemble.choose_weight(nsl, dkan, {k: poisoned[k] for k in "ab"}) == 0.5
    assert ensemble.choose_weight(nsl, dkan, {"c": poisoned["c"]}) == 1.0
    # equal scores: the smaller DKAN share
    assert ensemble.choose_weight(nsl, nsl, truth) == 0.0


def test_the_shipped_file_reproduces_its_recorded_held_out_metrics() -> None:
    assert_file_reproduces_its_recorded_metrics(ensemble.BUNDLED / ensemble.SHIPPED_NAME)


def test_the_shipped_file_keeps_its_whole_nsl_branch_float_in_int8() -> None:
    """NSL's own int8 fails its gate, so the combined file declares every NSL-branch weight
    node (and DKAN's stem and attention) float for any int8 variant made of it."""
    from napari_virtual_st.precision import QUANTISED_OPS, declared_float_nodes

    path = ensemble.BUNDLED / ensemble.SHIPPED_NAME
    declared = declared_float_nodes(Predictor(path, providers=["cpu"]).info)
    model = onnx.load(str(path))
    assert declared == ensemble.int8_float_nodes(model)
    names = {n.name for n in model.graph.node}
    assert set(declared) <= names
    nsl_heavy = {
        n.name
        for n in model.graph.node
        if n.op_type in QUANTISED_OPS and n.name.startswith("nsl/")
    }
    assert nsl_heavy and nsl_heavy <= set(declared)
