"""contract.py: the metadata a model author writes is what the Predictor reads back, each bad
key is refused naming it, and a saved model is one self-contained file."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from napari_virtual_st.context import SpotContext
from napari_virtual_st.contract import (
    REQUIRED_KEYS,
    ModelMetadata,
    attach_metadata,
    read_metadata,
    save_model,
)
from napari_virtual_st.errors import ModelError
from napari_virtual_st.predictor import CONTRACT_VERSION, Predictor
from synthetic_models import NOISE_SPEC, expected_mean_colour, mean_colour_graph


def test_metadata_round_trips_through_save_model_and_the_predictor(tmp_path: Path) -> None:
    genes = ["EPCAM", "PTPRC", "COL1A1"]
    training = {"data": "synthetic", "split": "none", "revision": "abc123"}
    metrics = {"pcc_mean": 0.25, "protocol": "held-out patients"}
    meta = ModelMetadata(
        genes=genes,
        tile_px=16,
        tile_um=112.0,
        family="dkan",
        target="log1p_cp10k",
        outputs=("expression", "variance"),
        name="round trip",
        training=training,
        metrics=metrics,
        license="CC0-1.0",
        extra_inputs={"noise": NOISE_SPEC},
        description="a synthetic model",
    ).to_props()
    assert all(key.startswith("vst.") and isinstance(v, str) for key, v in meta.items())
    assert meta["vst.format_version"] == CONTRACT_VERSION
    model = mean_colour_graph(len(genes), 16, with_variance=True, noise_input=(8,))
    path = save_model(attach_metadata(model, meta), tmp_path / "round_trip.onnx")

    info = Predictor(path).info
    assert info.genes == tuple(genes)
    assert (info.tile_px, info.tile_um, info.mpp) == (16, 112.0, 7.0)
    assert (info.family, info.target, info.name) == ("dkan", "log1p_cp10k", "round trip")
    assert info.outputs == ("expression", "variance")
    assert dict(info.extra_inputs) == {"noise": NOISE_SPEC}
    assert info.metadata["training"] == training
    assert info.metadata["metrics"] == metrics
    assert info.metadata["license"] == "CC0-1.0"
    assert info.metadata["description"] == "a synthetic model"


def test_optional_keys_are_left_out_when_not_given() -> None:
    meta = ModelMetadata(genes=["A"], tile_px=8, tile_um=8.0, family="nsl", target="counts")
    meta = meta.to_props()
    assert set(meta) == {
        "vst.format_version",
        "vst.family",
        "vst.genes",
        "vst.tile_px",
        "vst.tile_um",
        "vst.target",
        "vst.outputs",
    }
    assert meta["vst.outputs"] == '["expression"]'


def test_attaching_metadata_replaces_keys_and_keeps_the_others() -> None:
    model = mean_colour_graph(2, 8)
    attach_metadata(model, {"vst.family": "nsl", "author": "someone"})
    attach_metadata(model, {"vst.family": "stem"})
    props = [(p.key, p.value) for p in model.metadata_props]
    assert sorted(props) == [("author", "someone"), ("vst.family", "stem")]


def test_a_saved_model_is_one_self_contained_file(tmp_path: Path) -> None:
    n_genes = 4000  # a 48 kB weight matrix: large enough to be externalised if allowed
    model = mean_colour_graph(n_genes, 8)
    meta = ModelMetadata(
        genes=[f"G{i}" for i in range(n_genes)],
        tile_px=8,
        tile_um=8.0,
        family="baseline",
        target="synthetic",
    ).to_props()
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    path = save_model(attach_metadata(model, meta), out_dir / "big.onnx")
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.onnx"]
    loaded = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in loaded.graph.initializer)
    # the file alone, moved elsewhere, still runs
    moved = tmp_path / "elsewhere.onnx"
    path.rename(moved)
    tiles = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        Predictor(moved).predict(tiles).expression,
        expected_mean_colour(tiles, n_genes),
        rtol=1e-5,
        atol=1e-5,
    )


def test_saving_replaces_an_existing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old contents")
    meta = ModelMetadata(genes=["A", "B"], tile_px=8, tile_um=8.0, family="x", target="y")
    meta = meta.to_props()
    save_model(attach_metadata(mean_colour_graph(2, 8), meta), path)
    assert Predictor(path).genes == ("A", "B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("tile_um", [55, 55.5, 0.7000000001])
def test_tile_um_survives_the_string_round_trip_exactly(tmp_path: Path, tile_um: float) -> None:
    meta = ModelMetadata(genes=["A"], tile_px=8, tile_um=tile_um, family="x", target="y")
    meta = meta.to_props()
    path = save_model(attach_metadata(mean_colour_graph(1, 8), meta), tmp_path / "m.onnx")
    assert Predictor(path).info.tile_um == float(tile_um)


# -- ModelMetadata: to_props and from_props are inverse, and each bad key is refused ---------
FULL = ModelMetadata(
    genes=("EPCAM", "PTPRC"),
    tile_px=16,
    tile_um=55.5,
    family="stem",
    target="log1p_cp10k",
    outputs=("expression", "variance"),
    name="full",
    license="CC0-1.0",
    description="every key",
    training={"data": "synthetic", "split": "none"},
    metrics={"raw": {"PCC-ALL": 0.1}},
    extra_inputs={"noise": {"dtype": "float32", "shape": ["N", 8], "seed": 7}},
    context=SpotContext(sigma_um=150.0, radius_um=300.0),
    other_keys={"author": "someone"},
)


@pytest.mark.parametrize(
    "meta",
    [FULL, ModelMetadata(genes=["A"], tile_px=8, tile_um=0.7000000001, family="x", target="y")],
    ids=["every-key", "required-only"],
)
def test_metadata_round_trips_through_its_strings(meta: ModelMetadata) -> None:
    props = meta.to_props()
    assert all(k.startswith("vst.") and isinstance(v, str) for k, v in props.items())
    assert ModelMetadata.from_props(props) == meta
    # keys without the prefix are not the contract's
    assert ModelMetadata.from_props({**props, "producer": "torch"}) == meta


def test_metadata_from_lists_equals_metadata_from_tuples() -> None:
    assert replace(FULL, genes=["EPCAM", "PTPRC"], outputs=["expression", "variance"]) == FULL


def test_metadata_reads_back_from_an_onnx_model() -> None:
    model = attach_metadata(mean_colour_graph(2, 16), FULL.to_props())
    assert read_metadata(model) == FULL


def test_as_dict_holds_every_key_parsed() -> None:
    parsed = FULL.as_dict()
    assert parsed["genes"] == ["EPCAM", "PTPRC"] and parsed["tile_um"] == 55.5
    assert parsed["training"] == FULL.training and parsed["author"] == "someone"
    assert parsed["format_version"] == CONTRACT_VERSION
    assert set(parsed) == {k[len("vst.") :] for k in FULL.to_props()}


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_missing_required_key_is_refused_naming_it(key: str) -> None:
    props = FULL.to_props()
    del props[f"vst.{key}"]
    with pytest.raises(ModelError, match=f"lacks required metadata key 'vst.{key}'"):
        ModelMetadata.from_props(props)


BAD_VALUES: list[tuple[str, Any]] = [
    ("format_version", "2"),
    ("genes", "EPCAM"),
    ("genes", "[]"),
    ("genes", '["A", "A"]'),
    ("tile_px", "16.0"),
    ("tile_px", "0"),
    ("tile_um", "wide"),
    ("tile_um", "-1"),
    ("outputs", '["variance"]'),
    ("outputs", '["expression", "logits"]'),
    ("training", "{data: none}"),
    ("metrics", "PCC 0.1"),
    ("extra_inputs", '["noise"]'),
    ("extra_inputs", json.dumps({"noise": {"dtype": "float64", "shape": ["N", 8]}})),
    ("extra_inputs", json.dumps({"noise": {"dtype": "float32", "shape": [8]}})),
    ("extra_inputs", json.dumps({"noise": {"dtype": "float32", "shape": ["N"], "seed": -1}})),
    ("context", "gaussian 150"),
    ("context", '{"sigma_um": 150}'),
    ("context", '{"kind": "box", "sigma_um": 150, "radius_um": 300}'),
    ("context", '{"sigma_um": 0, "radius_um": 300}'),
    ("context", '{"sigma_um": true, "radius_um": 300}'),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_each_bad_key_is_refused_naming_it(key: str, value: str) -> None:
    with pytest.raises(ModelError, match=f"metadata 'vst.{key}'"):
        ModelMetadata.from_props({**FULL.to_props(), f"vst.{key}": value})


def test_a_declared_spot_context_reaches_the_engine_and_its_absence_means_per_tile(
    tmp_path: Path,
) -> None:
    context = SpotContext(sigma_um=120.0, radius_um=250.0)
    props = replace(FULL, genes=["A", "B"], outputs=["expression"], extra_inputs={})
    model = mean_colour_graph(2, 16)
    path = save_model(
        attach_metadata(model, replace(props, context=context).to_props()), tmp_path / "c.onnx"
    )
    info = Predictor(path).info
    assert info.context == context
    assert info.metadata["context"] == {"kind": "gaussian", "sigma_um": 120.0, "radius_um": 250.0}
    assert info.values_description == "contextual (Gaussian context, σ 120 µm within 250 µm)"
    # written as the JSON object the model-evaluation scripts write by hand
    assert json.loads(replace(props, context=context).to_props()["vst.context"]) == {
        "kind": "gaussian",
        "sigma_um": 120.0,
        "radius_um": 250.0,
    }
    assert replace(props, context={"sigma_um": 120.0, "radius_um": 250.0}).context == context

    old = save_model(
        attach_metadata(mean_colour_graph(2, 16), replace(props, context=None).to_props()),
        tmp_path / "old.onnx",
    )
    info = Predictor(old).info
    assert info.context is None and "context" not in info.metadata
    assert info.values_description == "per-tile"


def test_a_model_whose_graph_disagrees_with_valid_metadata_is_refused(tmp_path: Path) -> None:
    meta = replace(FULL, genes=["A", "B", "C"], extra_inputs={}).to_props()
    path = save_model(
        attach_metadata(mean_colour_graph(2, 16, with_variance=True), meta), tmp_path / "m.onnx"
    )
    with pytest.raises(ModelError, match=r"'vst\.genes' lists 3 genes but output 'expression'"):
        Predictor(path)


@pytest.mark.parametrize(
    ("tile_px", "tile_um", "key"),
    [
        (32, 20000.0, "'vst.tile_um' is 20000"),  # read a 40,000-px region per tile: OOM
        (32, 0.5, "= 0.0156 µm per pixel"),  # 32× finer than any microscope resolves
        (2, 1.0, "'vst.tile_px' is 2"),
        (100000, 50.0, "'vst.tile_px' is 100000"),
        (4, 400.0, "= 100 µm per pixel"),
    ],
)
def test_implausible_tile_geometry_is_refused_naming_the_key(
    tile_px: int, tile_um: float, key: str
) -> None:
    meta = ModelMetadata(genes=["A"], tile_px=tile_px, tile_um=tile_um, family="x", target="y")
    with pytest.raises(ModelError, match=re.escape(key)):
        ModelMetadata.from_props(meta.to_props())
