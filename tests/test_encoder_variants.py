"""The frozen encoder's feature variants (``models/encoder_variants.py``): the stage features
are the encoder's own stage outputs, per-slide standardisation uses only the slide's own
features, each variant feeds the head what it says, a missing cache is named, and the shipped
multi-layer file is what it says it is.

Tiles and features here are synthetic (random, named as such), except where the shipped file
is re-scored on HER2ST (skipped where ``../shared/data`` is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphs import expression_of
from models import encoder_variants as ev
from models import frozen_encoder as fe
from recorded_metrics import assert_file_reproduces_its_recorded_metrics


def test_stage_features_are_the_encoders_stage_outputs_averaged_over_space() -> None:
    import torch

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)  # synthetic
    net = fe.encoder()
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        net._blocks[i].register_forward_hook(
            lambda _m, _i, out, i=i: seen.__setitem__(i, out.mean(dim=(2, 3)))
        )
        for i in ev.STAGE_ENDS
    ]
    try:
        with torch.no_grad():
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
            net.features(net.normalise(x))
    finally:
        for hook in hooks:
            hook.remove()
    expected = torch.cat([seen[i] for i in ev.STAGE_ENDS], dim=1).numpy()
    got = ev.encode_stages(net, tiles, batch=2)
    assert got.shape == (3, 40 + 112 + 320)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_per_slide_standardisation_uses_only_the_slides_own_features() -> None:
    rng = np.random.default_rng(1)
    slide = rng.normal(5.0, 3.0, size=(50, 4))  # synthetic features
    slide[:, 2] = 7.0  # a constant feature
    z = ev.standardise_per_slide(slide)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(axis=0), 1.0)
    assert np.all(z[:, 2] == 0.0)
    # a slide scanned brighter and with more contrast (an affine shift) gives the same input
    np.testing.assert_allclose(ev.standardise_per_slide(2.0 * slide + 10.0), z, atol=1e-12)


def _write_caches(tmp_path: Path, name: str, px: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    last = rng.normal(size=(6, 1280)).astype(np.float32)  # synthetic
    stages = rng.normal(size=(6, 472)).astype(np.float32)
    np.savez(fe.features_path(name, px), feat=last, feat_low=last + 1)
    np.savez(ev.stages_path(name, px), feat=stages, feat_low=stages - 1)
    return last, stages


def test_each_variant_feeds_the_head_what_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fe, "ENCODER_CACHE", tmp_path)
    last, stages = _write_caches(tmp_path, "C9", 160)
    np.testing.assert_allclose(fe.cached_features("C9", 160, True), last + 1)
    multi = ev.loader("multilayer")("C9", 160, False)
    np.testing.assert_allclose(multi, np.concatenate([stages, last], axis=1))
    low = ev.loader("multilayer")("C9", 160, True)
    np.testing.assert_allclose(low, np.concatenate([stages - 1, last + 1], axis=1))
    np.testing.assert_allclose(
        ev.loader("per_slide")("C9", 160, False), ev.standardise_per_slide(last)
    )
    np.testing.assert_allclose(
        ev.loader("multilayer_per_slide")("C9", 160, False), ev.standardise_per_slide(multi)
    )
    assert ev.method_names("per_slide") == ("lite0_per_slide", "nsl_lite0_per_slide")
    with pytest.raises(ValueError, match="unknown variant 'colour'"):
        ev.loader("colour")


def test_a_missing_stage_cache_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fe, "ENCODER_CACHE", tmp_path)
    _write_caches(tmp_path, "C9", 160)
    ev.stages_path("C9", 160).unlink()
    assert ev.loader("per_slide")("C9", 160, False).shape == (6, 1280)  # needs no stages
    with pytest.raises(FileNotFoundError, match=r"stages_C9_160px\.npz.*encoder_variants extract"):
        ev.loader("multilayer")("C9", 160, False)


def test_the_multilayer_graph_computes_the_head_on_the_features_it_was_fitted_on() -> None:
    """The one-graph multi-layer model equals NSL on the pooled tile mixed with the head on
    ``multilayer_means`` (stage means, then the last map's), the order the fold runs'
    ``loader("multilayer")`` concatenates the cached features in."""
    import onnx
    import torch

    from models.ensemble import pool_tiles
    from models.feature_context import Head, Setting
    from models.protocol import BUNDLED
    from napari_virtual_st.contract import read_metadata

    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # synthetic
    net = fe.encoder()
    stages = ev.encode_stages(net, tiles)
    last = fe.encode(net, tiles)
    with torch.no_grad():
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
        both = ev.multilayer_means(net, net.normalise(x)).numpy()
    np.testing.assert_allclose(both, np.concatenate([stages, last], axis=1), rtol=1e-4, atol=1e-5)
    nsl = onnx.load(str(BUNDLED / "nsl_her2st.onnx"))
    genes = list(read_metadata(nsl).genes)
    width = ev.STAGE_CHANNELS + 1280
    head = Head(
        Setting("none"),
        rng.normal(size=(1, width)),
        rng.normal(size=(len(genes), width)) * 0.01,
        rng.normal(size=len(genes)) + 2.0,
    )
    encoder_head = fe.export_encoder_head(head, genes, 32, tiles, ev.multilayer_means)
    got = expression_of(fe.combined_graph(nsl, encoder_head, 0.6, 32), tiles)
    head_values = np.maximum(head.predict(both.astype(np.float64)[:, None, :]), 0.0)
    want = fe.combine(expression_of(nsl, pool_tiles(tiles, 2)), head_values, 0.6)
    np.testing.assert_allclose(got, want, atol=1e-3)
    with pytest.raises(ValueError, match="not built as a file"):
        ev.build("stain_normalised", Path("never.onnx"))


def test_the_per_slide_graph_outputs_its_features_and_standardises_them_as_it_is_fed() -> None:
    """The per-slide file's graph: ``features`` = ``multilayer_means``; its expression = NSL
    mixed with the head on the features standardised by the fed ``feature_mean`` /
    ``feature_std`` (what the fold runs' ``loader("multilayer_per_slide")`` gave the head)."""
    import onnx
    import onnxruntime as ort
    import torch

    from models.ensemble import pool_tiles
    from models.feature_context import Head, Setting
    from models.protocol import BUNDLED
    from napari_virtual_st.contract import read_metadata
    from napari_virtual_st.slide_statistics import SlideStatistics

    rng = np.random.default_rng(4)
    tiles = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)  # synthetic
    net = fe.encoder()
    with torch.no_grad():
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
        features = ev.multilayer_means(net, net.normalise(x)).numpy().astype(np.float64)
    nsl = onnx.load(str(BUNDLED / "nsl_her2st.onnx"))
    genes = list(read_metadata(nsl).genes)
    width = features.shape[1]
    head = Head(
        Setting("none"),
        rng.normal(size=(1, width)) * 0.1,
        rng.normal(size=(len(genes), width)) * 0.01,
        rng.normal(size=len(genes)) + 2.0,
    )
    graph = fe.export_encoder_head(head, genes, 32, tiles, ev.multilayer_means, features_only=True)
    model = fe.combined_graph(nsl, graph, 0.7, 32, fe.linear_head(head))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ones = np.ones(width, np.float32)
    (raw,) = session.run(
        ["features"], {"image": tiles, "feature_mean": 0 * ones, "feature_std": ones}
    )
    np.testing.assert_allclose(raw, features, rtol=1e-4, atol=1e-4)
    # (statistics of the graph's own features, as the engine takes them: a near-constant
    # feature of six synthetic tiles would magnify torch's and ONNX Runtime's rounding)
    stats = SlideStatistics.of(raw)
    got = session.run(
        ["expression"], {"image": tiles, "feature_mean": stats.mean, "feature_std": stats.std}
    )[0]
    standardised = ev.standardise_per_slide(raw)
    head_values = np.maximum(head.predict(standardised[:, None, :]), 0.0)
    nsl_values = expression_of(nsl, pool_tiles(tiles, 2))
    want = fe.combine(nsl_values, head_values, 0.7)
    np.testing.assert_allclose(got, want, atol=2e-3)
    # with a floor, the fed SD is raised to at least it (the floored variant)
    floor = np.full(width, 2.0 * float(np.median(stats.std)), np.float32)
    floored = fe.combined_graph(nsl, graph, 0.7, 32, fe.linear_head(head), floor)
    session = ort.InferenceSession(floored.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(
        ["expression"], {"image": tiles, "feature_mean": stats.mean, "feature_std": stats.std}
    )[0]
    z = (raw - stats.mean) / np.maximum(stats.std, floor)
    want = fe.combine(nsl_values, np.maximum(head.predict(z[:, None, :]), 0.0), 0.7)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_the_shipped_multilayer_file_reproduces_its_recorded_held_out_metrics() -> None:
    from models.protocol import BUNDLED

    assert_file_reproduces_its_recorded_metrics(BUNDLED / ev.SHIPPED_NAME)


def test_the_shipped_multilayer_file_names_itself_and_keeps_nsl_and_its_head_float_in_int8() -> (
    None
):
    import onnx

    from models.protocol import BUNDLED, METHODS
    from napari_virtual_st.precision import QUANTISED_OPS, declared_float_nodes
    from napari_virtual_st.predictor import Predictor

    path = BUNDLED / ev.SHIPPED_NAME
    info = Predictor(path, providers=["cpu"]).info
    assert info.family == ev.NAMING.family  # the protocol scores it under this name
    assert [m.onnx for m in METHODS if m.name == info.family] == [ev.SHIPPED_NAME]
    assert info.metadata["training"]["code"] == "models/encoder_variants.py"
    model = onnx.load(str(path))
    declared = declared_float_nodes(info)
    assert declared == fe.int8_float_nodes(model)
    heavy = [n.name for n in model.graph.node if n.op_type in QUANTISED_OPS]
    assert {n for n in heavy if n.startswith("nsl/")} <= set(declared)
    encoder = [n for n in heavy if n.startswith("enc/")]
    assert encoder[0] in declared and encoder[-1] in declared  # its stem and its head


def test_the_shipped_floored_file_reproduces_its_recorded_held_out_metrics() -> None:
    from models.protocol import BUNDLED

    assert_file_reproduces_its_recorded_metrics(BUNDLED / ev.FLOORED_NAME)


def test_the_shipped_floored_file_declares_its_statistics_and_floors_the_fed_sd() -> None:
    """The default: it names itself as the protocol scores it, asks the engine for the
    statistics of at most :data:`FLOOR_SPOTS` spots, and its graph raises a fed SD to its
    floor (half the feature's SD over patient C), so a slide on which features hardly vary
    gives what the floor gives (a plain per-slide model would divide by the tiny spreads)."""
    import onnx
    from onnx import numpy_helper

    from models.protocol import BUNDLED, METHODS
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.registry import DEFAULT_MODEL_NAME
    from napari_virtual_st.slide_statistics import SlideStatistics

    path = BUNDLED / ev.FLOORED_NAME
    predictor = Predictor(path, providers=["cpu"])
    info = predictor.info
    assert f"{DEFAULT_MODEL_NAME}.onnx" == ev.FLOORED_NAME
    assert info.family == ev.FILES["multilayer_floored"][1].family
    assert [m.onnx for m in METHODS if m.name == info.family] == [ev.FLOORED_NAME]
    assert info.slide_statistics is not None
    assert info.slide_statistics.spots == ev.FLOOR_SPOTS
    rng = np.random.default_rng(8)
    tiles = rng.integers(0, 256, (4, info.tile_px, info.tile_px, 3), dtype=np.uint8)  # synthetic
    mean = predictor.slide_features(tiles).mean(axis=0).astype(np.float32)
    model = onnx.load(str(path))
    (floor_node,) = [n for n in model.graph.node if n.op_type == "Max"]
    assert floor_node.input[0] == info.slide_statistics.std
    weights = {t.name: t for t in model.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    stored = floor_node.input[1]  # (weights are stored as float16 and cast back)
    floor = numpy_helper.to_array(weights[casts.get(stored, stored)]).astype(np.float32)
    # half of each feature's SD over patient C: one per feature, most of them above 0
    assert floor.shape == mean.shape and (floor >= 0).all() and (floor > 0).mean() > 0.99
    # (a feature constant over C has floor 0 and head weight 0: it is fed 1 in each case)
    fed = np.where(floor > 0, floor, 1.0).astype(np.float32)

    def expression(share: float) -> np.ndarray:
        spread = np.where(floor > 0, share * fed, 1.0).astype(np.float32)
        stats = SlideStatistics(mean, spread, 4)
        return predictor.with_slide_statistics(stats).predict(tiles).expression

    under = expression(0.5)
    np.testing.assert_array_equal(under, expression(0.01))  # spreads under the floor: floor
    assert np.isfinite(under).all() and (under >= 0).all()
    np.testing.assert_allclose(under, expression(1.0), atol=1e-5)  # = fed at the floor
    assert not np.allclose(under, expression(3.0), atol=1e-3)  # above it, the slide's SD


def test_reinhard_moves_a_sections_colour_statistics_to_the_target() -> None:
    rng = np.random.default_rng(4)
    # synthetic pink-purple tiles, and the same scanned paler and bluer
    base = np.array([190.0, 120.0, 170.0])
    tiles = np.clip(base + rng.normal(0, 20, (6, 24, 24, 3)), 0, 255).astype(np.uint8)
    paler = np.clip(tiles * 0.8 + np.array([40.0, 50.0, 70.0]), 0, 255).astype(np.uint8)
    own = ev.lab_statistics(tiles)
    # mapped onto its own statistics a section is unchanged (up to rounding through CIELAB)
    same = ev.reinhard(tiles, own, own)
    assert np.abs(same.astype(int) - tiles.astype(int)).max() <= 1
    moved = ev.reinhard(paler, ev.lab_statistics(paler), own)
    np.testing.assert_allclose(ev.lab_statistics(moved), own, atol=1.0)
    assert np.abs(ev.lab_statistics(paler) - own).max() > 5.0  # it did have to move
    assert ev.reinhard(tiles[:0], own, own).shape == (0, 24, 24, 3)


def test_the_stain_normalised_variant_reads_its_own_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fe, "ENCODER_CACHE", tmp_path)
    _write_caches(tmp_path, "C9", 160)
    with pytest.raises(FileNotFoundError, match=r"stain_normalised_C9_160px\.npz.*extract"):
        ev.loader("stain_normalised")("C9", 160, False)
    normalised = np.full((6, 1280), 0.5, np.float32)  # synthetic
    np.savez(ev.stain_path("C9", 160), feat=normalised, feat_low=normalised + 1)
    np.testing.assert_allclose(ev.loader("stain_normalised")("C9", 160, True), normalised + 1)
