"""The frozen-encoder measurement (``models/frozen_encoder.py``): the encoder is the ImageNet
network and its features do not depend on batching, the nested choices never read the
section they predict, and a missing fold run is named.

Tiles and labels here are synthetic (random, named as such); nothing reads HER2ST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphs import expression_of
from models import frozen_encoder as fe
from recorded_metrics import assert_file_reproduces_its_recorded_metrics


def test_encoder_features_are_the_imagenet_networks_and_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)  # synthetic
    net = fe.encoder()
    whole = fe.encode(net, tiles, batch=5)
    pieces = fe.encode(net, tiles, batch=2)
    assert whole.shape == (5, 1280) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, pieces, rtol=1e-4, atol=1e-5)
    # the pretrained weights, not a fresh initialisation: a fresh network gives other features
    from models.workshop.efficientnet_lite import efficientnet_lite0

    fresh = fe.encode(efficientnet_lite0(pretrained=False).eval(), tiles)
    assert not np.allclose(whole, fresh, atol=1e-3)
    assert fe.encode(net, tiles[:0]).shape == (0, 1280)


def _synthetic_candidates(seed: int = 1) -> tuple[dict, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = {k: rng.normal(size=(40, 6)) for k in ("C2", "C3", "C4")}
    candidates = {
        name: {k: y + rng.normal(scale=noise, size=y.shape) for k, y in labels.items()}
        for name, noise in (("a", 0.5), ("b", 1.0), ("c", 2.0))
    }
    return candidates, labels


def test_nested_choice_never_reads_the_section_it_predicts() -> None:
    candidates, labels = _synthetic_candidates()
    chosen = fe.nested(candidates, labels)
    assert chosen == {"C2": "a", "C3": "a", "C4": "a", "all_C": "a"}
    # Make "c" perfect on C2 alone: C2's own choice must not move; the others' may.
    poisoned = {**candidates, "c": {**candidates["c"], "C2": labels["C2"].copy()}}
    again = fe.nested(poisoned, labels)
    assert again["C2"] == "a"
    assert fe.choose(poisoned, {"C2": labels["C2"]})[0] == "c"  # the poison is strong


def test_choose_takes_the_first_of_equal_candidates() -> None:
    candidates, labels = _synthetic_candidates()
    tied = {"first": candidates["a"], "second": candidates["a"]}
    assert fe.choose(tied, labels)[0] == "first"


def test_combine_mixes_and_clamps_at_zero() -> None:
    nsl = np.array([[1.0, 2.0]])
    head = np.array([[3.0, -10.0]])
    np.testing.assert_allclose(fe.combine(nsl, head, 0.0), nsl)
    np.testing.assert_allclose(fe.combine(nsl, head, 0.5), [[2.0, 0.0]])


def test_fold_runs_name_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fe, "ENCODER_CACHE", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nsl_C2\.npz.*frozen_encoder extract"):
        fe.write_folds({})


def test_combined_graph_equals_nsl_on_pooled_tiles_plus_the_head_on_encoder_features() -> None:
    import onnx

    from models.ensemble import pool_tiles
    from models.feature_context import Head, Setting
    from models.protocol import BUNDLED
    from napari_virtual_st.contract import read_metadata

    rng = np.random.default_rng(2)
    tiles = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # synthetic
    nsl = onnx.load(str(BUNDLED / "nsl_her2st.onnx"))
    genes = list(read_metadata(nsl).genes)
    head = Head(
        Setting("none"),
        rng.normal(size=(1, 1280)),
        rng.normal(size=(len(genes), 1280)) * 0.01,
        rng.normal(size=len(genes)) + 2.0,
    )
    model = fe.combined_graph(nsl, fe.export_encoder_head(head, genes, 32, tiles), 0.6, 32)
    got = expression_of(model, tiles)
    features = fe.encode(fe.encoder(), tiles).astype(np.float64)[:, None, :]
    # the head's values are clamped at 0 before the mix, as in the fold runs (predict_head)
    head_values = np.maximum(head.predict(features), 0.0)
    want = fe.combine(expression_of(nsl, pool_tiles(tiles, 2)), head_values, 0.6)
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert got.min() >= 0.0  # clamped in the graph
    floats = set(fe.int8_float_nodes(model))
    nsl_weights = {n.name for n in model.graph.node if n.name.startswith("nsl/")}
    assert {n for n in nsl_weights if n in floats}  # NSL's weight nodes stay float
    with pytest.raises(ValueError, match="pool to NSL"):
        fe.combined_graph(nsl, fe.export_encoder_head(head, genes, 32, tiles), 0.6, 40)


def test_the_shipped_file_reproduces_its_recorded_held_out_metrics() -> None:
    from models.protocol import BUNDLED

    assert_file_reproduces_its_recorded_metrics(BUNDLED / fe.SHIPPED_NAME)


def test_the_shipped_file_keeps_its_nsl_branch_and_its_head_float_in_int8() -> None:
    import onnx

    from models.protocol import BUNDLED
    from napari_virtual_st.precision import QUANTISED_OPS, declared_float_nodes
    from napari_virtual_st.predictor import Predictor

    path = BUNDLED / fe.SHIPPED_NAME
    declared = declared_float_nodes(Predictor(path, providers=["cpu"]).info)
    model = onnx.load(str(path))
    assert declared == fe.int8_float_nodes(model)
    heavy = [n for n in model.graph.node if n.op_type in QUANTISED_OPS]
    nsl_heavy = {n.name for n in heavy if n.name.startswith("nsl/")}
    assert nsl_heavy and nsl_heavy <= set(declared)
    encoder = [n.name for n in heavy if n.name.startswith("enc/")]
    assert encoder[0] in declared and encoder[-1] in declared  # its stem and its head
    assert len(set(encoder) - set(declared)) > 40  # the encoder's convolutions go int8
