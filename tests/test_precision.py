"""Precision: the int8 accuracy gate, quantisation, the int8 cache and the choice for a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from napari_virtual_st import precision
from napari_virtual_st.contract import ModelMetadata, attach_metadata, save_model
from napari_virtual_st.errors import ModelError, ParameterError
from napari_virtual_st.precision import PrecisionGate, choose_model, gene_agreement
from napari_virtual_st.predictor import Predictor
from synthetic_models import write_mean_colour_model

TILE_PX = 16


def write_conv_model(
    path: Path,
    n_genes: int = 6,
    seed: int = 0,
    flip_gene: int | None = None,
    head_bias: bool = False,
) -> Path:
    """A small convolutional contract model: three 3×3 convolutions, mean pool, a linear head.

    ``flip_gene`` negates one gene's head weights (a model that disagrees on that gene);
    ``head_bias`` adds a per-gene intercept after the head's product (``MatMul`` + ``Add``, as
    a ridge head exported from torch is).
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    w3 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    head = rng.normal(0, 1.0, (8, n_genes)).astype(np.float32)
    if flip_gene is not None:
        head[:, flip_gene] *= -1
    nodes = [
        helper.make_node("Cast", ["image"], ["x0"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x0", "c255"], ["x1"]),
        helper.make_node("Transpose", ["x1"], ["x2"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x2", "w1"], ["c1"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="body1"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], name="body2"),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("ReduceMean", ["r3", "axes"], ["pooled"], keepdims=0),
        helper.make_node(
            "MatMul", ["pooled", "head"], ["product" if head_bias else "expression"], name="head"
        ),
    ]
    if head_bias:
        nodes.append(helper.make_node("Add", ["product", "bias"], ["expression"], name="bias"))
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(head, "head"),
    ]
    if head_bias:
        inits.append(
            numpy_helper.from_array(rng.normal(3.0, 1.0, n_genes).astype(np.float32), "bias")
        )
    graph = helper.make_graph(
        nodes,
        "synthetic_conv",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", TILE_PX, TILE_PX, 3])],
        [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", n_genes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = ModelMetadata(
        genes=[f"G{i}" for i in range(n_genes)],
        tile_px=TILE_PX,
        tile_um=55.0,
        family="baseline",
        target="synthetic",
        outputs=("expression",),
        name="synthetic conv model",
    ).to_props()
    attach_metadata(model, meta)
    return save_model(model, path)


def tissue_like_tiles(n: int, seed: int = 1) -> np.ndarray:
    """Smooth pink-purple tiles with varying stain (enough spread for per-gene r)."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 180], np.float64)
    shade = rng.uniform(-60, 40, (n, 1, 1, 1))
    texture = rng.normal(0, 18, (n, TILE_PX, TILE_PX, 3))
    return np.clip(base + shade + texture, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _cache_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VST_CACHE_DIR", str(tmp_path / "cache"))


def passing_gate(fp32_sha256: str, **changes: object) -> PrecisionGate:
    values: dict[str, object] = {
        "fp32_sha256": fp32_sha256,
        "held_out": "test tiles",
        "n_tiles": 64,
        "median_gene_r": 0.995,
        "min_gene_r": 0.97,
        "metric": "PCC-ALL",
        "metric_fp32": 0.10,
        "metric_int8": 0.099,
        "metric_ci95": (0.08, 0.12),
    }
    values.update(changes)
    return PrecisionGate(**values)  # type: ignore[arg-type]


# -- the gate ---------------------------------------------------------------------------------
def test_gene_agreement_is_one_for_equal_outputs_and_negative_for_a_flipped_gene() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4)).astype(np.float32)
    b = a.copy()
    b[:, 2] = -b[:, 2]
    r = gene_agreement(a, b)
    assert r[[0, 1, 3]] == pytest.approx(1.0)
    assert r[2] == pytest.approx(-1.0)


def test_gene_agreement_of_constant_genes_depends_on_their_value() -> None:
    a = np.ones((10, 2), np.float32)
    b = a.copy()
    b[:, 1] = 2.0
    assert gene_agreement(a, b).tolist() == [1.0, 0.0]


def test_the_gate_passes_only_when_agreement_and_the_held_out_metric_both_hold() -> None:
    assert passing_gate("x").passed
    low_median = passing_gate("x", median_gene_r=0.985)
    assert not low_median.passed and "median per-gene r" in low_median.failures[0]
    one_bad_gene = passing_gate("x", min_gene_r=-0.45)
    assert not one_bad_gene.passed and "r = -0.4500" in one_bad_gene.failures[0]
    metric_out = passing_gate("x", metric_int8=0.05)
    assert not metric_out.passed and "outside fp32's 95 % interval" in metric_out.failures[0]
    no_metric = passing_gate("x", metric=None, metric_int8=None, metric_ci95=None)
    assert no_metric.failures == ["no held-out metric was measured"]


def test_a_gate_survives_its_json_record() -> None:
    gate = passing_gate("abc", min_gene_r=0.9)
    again = PrecisionGate.from_json(gate.to_json())
    assert again == gate
    assert json.loads(gate.to_json())["passed"] is False
    with pytest.raises(ModelError, match="unreadable"):
        PrecisionGate.from_json('{"nonsense": 1}')


def test_judging_a_model_that_disagrees_on_one_gene_fails_the_gate(tmp_path: Path) -> None:
    fp32 = write_conv_model(tmp_path / "a.onnx")
    same = write_conv_model(tmp_path / "same.onnx")
    flipped = write_conv_model(tmp_path / "flipped.onnx", flip_gene=3)
    tiles = tissue_like_tiles(80)
    truth = Predictor(fp32, providers=["cpu"]).predict(tiles).expression
    truth = truth + np.random.default_rng(3).normal(0, truth.std(), truth.shape)
    good = precision.judge_int8(fp32, same, tiles, held_out="t", measured=truth, n_boot=200)
    assert good.passed, good.failures
    bad = precision.judge_int8(fp32, flipped, tiles, held_out="t", measured=truth, n_boot=200)
    assert not bad.passed
    assert bad.min_gene_r == pytest.approx(-1.0, abs=1e-4)
    assert bad.median_gene_r == pytest.approx(1.0, abs=1e-4)
    without_truth = precision.judge_int8(fp32, same, tiles, held_out="t")
    assert not without_truth.passed


# -- quantisation and the cache --------------------------------------------------------------
def test_quantising_keeps_stem_and_head_float_and_agrees_with_fp32(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    out = precision.quantize_int8(fp32, tmp_path / "conv_int8.onnx", tissue_like_tiles(64))
    # ONNX Runtime's calibrator prints its progress; none of it reaches the user's output
    assert "Number of tensors" not in capfd.readouterr().out
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    quantised_weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert not any(name.startswith(("w1", "head")) for name in quantised_weights)
    assert any(name.startswith("w2") for name in quantised_weights)
    int8 = Predictor(out, providers=["cpu"])
    assert int8.precision == "int8"
    assert int8.info.metadata["int8_of_sha256"] == Predictor(fp32, providers=["cpu"]).info.sha256
    check = tissue_like_tiles(64, seed=9)
    r = gene_agreement(
        Predictor(fp32, providers=["cpu"]).predict(check).expression,
        int8.predict(check).expression,
    )
    assert np.median(r) > 0.95


def test_a_head_the_optimiser_fuses_with_its_bias_stays_float(tmp_path: Path) -> None:
    """ONNX Runtime's pre-processing fuses ``MatMul`` + ``Add`` into a ``Gemm`` under a new
    name; the head stays float all the same (it was quantised, output included, and the
    default model's int8 disagreed with fp32 whatever else stayed float)."""
    fp32 = write_conv_model(tmp_path / "biased.onnx", head_bias=True)
    out = precision.quantize_int8(fp32, tmp_path / "biased_int8.onnx", tissue_like_tiles(64))
    model = onnx.load(str(out))
    dequantised = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert any(name.startswith("w2") for name in dequantised)  # the body is int8
    assert not any(
        name.startswith(("w1", "head", "bias", "pooled", "expression")) for name in dequantised
    )
    assert _recipe(out)["fused_float_nodes"] == 1
    check = tissue_like_tiles(64, seed=9)
    r = gene_agreement(
        Predictor(fp32, providers=["cpu"]).predict(check).expression,
        Predictor(out, providers=["cpu"]).predict(check).expression,
    )
    assert np.median(r) > 0.95


def test_a_model_without_convolution_or_matrix_product_is_not_quantised(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
                helper.make_node("ReduceMean", ["f", "axes"], ["expression"], keepdims=0),
            ],
            "plain",
            [
                helper.make_tensor_value_info(
                    "image", TensorProto.UINT8, ["N", TILE_PX, TILE_PX, 3]
                )
            ],
            [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", 3])],
            [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 9
    attach_metadata(
        model,
        ModelMetadata(
            genes=["R", "G", "B"],
            tile_px=TILE_PX,
            tile_um=55.0,
            family="baseline",
            target="synthetic",
            outputs=("expression",),
        ).to_props(),
    )
    save_model(model, path)
    with pytest.raises(ModelError, match="no convolution or matrix product"):
        precision.quantize_int8(path, tmp_path / "x.onnx", tissue_like_tiles(32))


def test_int8_is_made_once_and_cached_under_the_model_hash(tmp_path: Path) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    first = choose_model(fp32, "int8", calibration_tiles=tissue_like_tiles(32))
    assert first.precision == "int8"
    assert first.path.parent == tmp_path / "cache" / "int8"
    assert first.path.name.startswith(precision.file_sha256(fp32)[:24])
    made = first.path.stat().st_mtime_ns
    again = choose_model(fp32, "int8")  # no tiles needed: found in the cache
    assert again.path == first.path and again.path.stat().st_mtime_ns == made
    assert "cached" in again.reason
    assert not list(first.path.parent.glob("*.tmp*"))


def test_auto_takes_int8_only_with_a_passing_gate_for_this_very_file(tmp_path: Path) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    sha = precision.file_sha256(fp32)
    assert choose_model(fp32, "auto").precision == "fp32"  # nothing made yet
    variant = choose_model(fp32, "int8", calibration_tiles=tissue_like_tiles(32)).path
    no_gate = choose_model(fp32, "auto")
    assert no_gate.precision == "fp32" and "no recorded accuracy gate" in no_gate.reason
    precision.record_gate(variant, passing_gate(sha, min_gene_r=0.5))
    failed = choose_model(fp32, "auto")
    assert failed.precision == "fp32" and "failed its accuracy gate" in failed.reason
    precision.record_gate(variant, passing_gate(sha))
    chosen = choose_model(fp32, "auto")
    assert chosen.precision == "int8" and chosen.path == variant
    assert chosen.gate is not None and chosen.gate.passed
    with pytest.raises(ModelError, match="not made from"):
        precision.record_gate(variant, passing_gate("another model"))
    # the same model retrained (another file): the old gate does not apply
    other = write_conv_model(tmp_path / "conv.onnx", seed=5)
    assert choose_model(other, "auto").precision == "fp32"


def test_fp32_runs_the_model_itself_and_an_unknown_precision_is_refused(
    tmp_path: Path, synthetic_model: Path
) -> None:
    choice = choose_model(synthetic_model, "fp32")
    assert (choice.path, choice.precision) == (synthetic_model, "fp32")
    with pytest.raises(ParameterError, match="fp32, int8, auto"):
        choose_model(synthetic_model, "fp16")


def test_fp16_stored_weights_are_folded_before_quantising(tmp_path: Path) -> None:
    from napari_virtual_st.onnx_export import store_weights_fp16

    fp32 = write_conv_model(tmp_path / "conv.onnx")
    half = tmp_path / "half.onnx"
    store_weights_fp16(fp32, half, check_tiles=tissue_like_tiles(8), min_elements=16)
    folded = precision.fold_weight_casts(onnx.load(str(half)))
    assert not [
        n for n in folded.graph.node if n.op_type == "Cast" and n.input[0].endswith("__fp16")
    ]
    out = precision.quantize_int8(half, tmp_path / "half_int8.onnx", tissue_like_tiles(32))
    assert any(
        n.op_type == "DequantizeLinear" and n.input[0].startswith("w2")
        for n in onnx.load(str(out)).graph.node
    )


def test_sample_slide_gives_real_calibration_tiles() -> None:
    tiles = precision.sample_calibration_tiles(TILE_PX, 55.0, limit=40)
    assert tiles.shape == (40, TILE_PX, TILE_PX, 3) and tiles.dtype == np.uint8
    assert tiles.reshape(40, -1).mean(axis=1).max() < 215


def test_a_shipped_variant_of_another_file_of_the_same_name_is_not_used(
    tmp_path: Path,
) -> None:
    # a shipped variant is looked up by file name and must have been made from this file
    model = write_mean_colour_model(tmp_path / "nsl_her2st.onnx")
    assert choose_model(model, "auto").precision == "fp32"


# -- the faces: RunSpec, CLI, cohort; the store's record ----------------------------------------
def test_a_run_spec_refuses_an_unknown_precision(tmp_path: Path) -> None:
    from napari_virtual_st.run import RunSpec

    where = {"slide_path": tmp_path / "s.svs", "model_path": "m", "store_path": tmp_path / "o"}
    with pytest.raises(
        ParameterError, match="precision must be one of fp32, int8, auto; got 'fp16'"
    ):
        RunSpec(**where, precision="fp16")
    spec = RunSpec(**where, precision="auto")
    assert (spec.precision, spec.read_threads, spec.intra_op_threads) == ("auto", None, None)


def test_a_cohort_refuses_an_unknown_precision_before_any_slide(
    tmp_path: Path, cmu_small_svs: Path, synthetic_model: Path
) -> None:
    from napari_virtual_st.cohort import CohortSpec, run_cohort

    with pytest.raises(ParameterError, match="precision must be one of"):
        run_cohort(
            [cmu_small_svs], CohortSpec(synthetic_model, tmp_path / "out", precision="half")
        )
    assert not (tmp_path / "out").exists()


def test_predict_int8_records_the_precision_and_a_resume_in_fp32_is_refused(
    tmp_path: Path, cmu_small_svs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_virtual_st.cli import EXIT_USER_ERROR, main
    from napari_virtual_st.store import PredictionStore

    model = write_conv_model(tmp_path / "conv.onnx")
    store = tmp_path / "cmu.vst.zarr"
    args = ["predict", str(cmu_small_svs), "--model", str(model), "--out", str(store), "--quiet"]
    assert main([*args, "--precision", "int8"]) == 0
    err = capsys.readouterr().err
    assert "int8 as asked (quantised now" in err
    # the model line names the user's model, not the cached int8 file's hashed name
    assert "model conv.onnx: " in err
    record = PredictionStore.open(store).attrs["model"]
    assert record["precision"] == "int8"
    assert record["fp32_sha256"] == precision.file_sha256(model)
    assert record["sha256"] != record["fp32_sha256"]
    assert main([*args, "--precision", "fp32"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "holds int8 predictions and this run uses fp32" in err
    assert "--precision int8" in err
    assert main([*args, "--precision", "int8"]) == 0  # the same precision resumes (done)
    assert main([*args, "--precision", "auto"]) == EXIT_USER_ERROR  # no gate: auto means fp32 here
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--precision", "bf16"])
    assert exit_info.value.code == 2


def test_an_fp32_store_records_fp32(
    tmp_path: Path, cmu_small_svs: Path, synthetic_model: Path
) -> None:
    from napari_virtual_st.cli import main
    from napari_virtual_st.store import PredictionStore

    store = tmp_path / "cmu.vst.zarr"
    assert (
        main(
            [
                "predict",
                str(cmu_small_svs),
                "--model",
                str(synthetic_model),
                "--out",
                str(store),
                "--quiet",
            ]
        )
        == 0
    )
    record = PredictionStore.open(store).attrs["model"]
    assert record["precision"] == "fp32" and "fp32_sha256" not in record


def test_a_damaged_cached_int8_model_is_made_again(tmp_path: Path) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    cached = choose_model(fp32, "int8", calibration_tiles=tissue_like_tiles(32)).path
    cached.write_bytes(b"truncated")
    again = choose_model(fp32, "int8", calibration_tiles=tissue_like_tiles(32))
    assert again.path == cached and "quantised now" in again.reason
    assert Predictor(cached, providers=["cpu"]).precision == "int8"


def test_unnamed_nodes_are_named_so_only_the_sensitive_ones_stay_float(tmp_path: Path) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    model = onnx.load(str(fp32))
    for node in model.graph.node:
        node.name = ""  # as onnx.helper graphs built without names have them
    unnamed = save_model(model, tmp_path / "unnamed.onnx")
    out = precision.quantize_int8(unnamed, tmp_path / "unnamed_int8.onnx", tissue_like_tiles(32))
    weights = {
        n.input[0] for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear"
    }
    assert any(name.startswith("w2") for name in weights)
    assert not any(name.startswith(("w1", "head")) for name in weights)


def test_nodes_the_model_declares_float_stay_float_whatever_the_recipe(tmp_path: Path) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    model = onnx.load(str(fp32))
    attach_metadata(model, {precision.META_FLOAT_NODES: json.dumps(["body2"])})
    declared = save_model(model, tmp_path / "declared.onnx")
    out = precision.quantize_int8(declared, tmp_path / "declared_int8.onnx", tissue_like_tiles(32))
    weights = {
        n.input[0] for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear"
    }
    assert any(name.startswith("w2") for name in weights)  # body1: quantised as before
    assert not any(name.startswith(("w3", "w1", "head")) for name in weights)
    assert _recipe(out)["declared_float_nodes"] == 1
    attach_metadata(model, {precision.META_FLOAT_NODES: '{"body2": true}'})
    broken = save_model(model, tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="JSON list of node names"):
        precision.quantize_int8(broken, tmp_path / "broken_int8.onnx", tissue_like_tiles(32))
    attach_metadata(model, {precision.META_FLOAT_NODES: json.dumps(["body2", "no_such"])})
    typo = save_model(model, tmp_path / "typo.onnx")
    with pytest.raises(ModelError, match=r"does not have, e\.g\. 'no_such'"):
        precision.quantize_int8(typo, tmp_path / "typo_int8.onnx", tissue_like_tiles(32))


def _gates_index_beside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder standing in for the package's shipped int8 variants; write its
    :data:`precision.GATES_INDEX` to record gates."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(precision, "shipped_int8_dir", lambda: shipped)
    return shipped / precision.GATES_INDEX


def test_a_recorded_failed_gate_refuses_int8_and_auto_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    index = _gates_index_beside(tmp_path, monkeypatch)
    # a variant made on first use before any gate was recorded (it stays in the cache) ...
    made = choose_model(fp32, "int8", calibration_tiles=tissue_like_tiles(32))
    assert made.precision == "int8" and made.path.is_file()
    # ... does not outlive the failure recorded afterwards for the same file
    failed = passing_gate(precision.file_sha256(fp32), median_gene_r=0.49)
    entry = {"gate": json.loads(failed.to_json()), "cannot": "no recipe agrees"}
    index.write_text(json.dumps({"conv.onnx": entry}))
    with pytest.raises(ModelError, match=r"cannot run in int8.*median per-gene r.*0\.4900"):
        choose_model(fp32, "int8")
    auto = choose_model(fp32, "auto")
    assert auto.precision == "fp32" and "failed its accuracy gate" in auto.reason
    # another file of the same name (retrained): the record does not apply
    other = write_conv_model(tmp_path / "conv.onnx", seed=4)
    assert choose_model(other, "int8", calibration_tiles=tissue_like_tiles(32)).precision == "int8"


def test_auto_says_when_int8_passed_its_gate_but_was_too_slow_to_ship(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    index = _gates_index_beside(tmp_path, monkeypatch)
    gate = passing_gate(precision.file_sha256(fp32))
    slow = "int8 ran 0.66x fp32 here (model only, interleaved; shipped from 1.1x)"
    index.write_text(
        json.dumps({"conv.onnx": {"gate": json.loads(gate.to_json()), "not_shipped": slow}})
    )
    auto = choose_model(fp32, "auto")
    assert auto.precision == "fp32" and auto.path == fp32
    assert auto.reason == f"fp32: int8 passed its accuracy gate, but {slow}"
    assert auto.gate is not None and auto.gate.passed
    # the record is for that file only: a retrained file of the same name has no gate
    other = write_conv_model(tmp_path / "conv.onnx", seed=4)
    assert "no int8 variant with a recorded accuracy gate" in choose_model(other, "auto").reason


def test_the_bundled_models_precision_as_their_gates_recorded() -> None:
    from napari_virtual_st.registry import DEFAULT_MODEL_NAME, resolve_model

    nsl = resolve_model("nsl_her2st")
    assert choose_model(nsl, "auto").precision == "fp32"
    with pytest.raises(ModelError, match=r"nsl_her2st\.onnx cannot run in int8"):
        choose_model(nsl, "int8")
    # NSL + DKAN-style and the previous default pass their gates but run slower in int8: no
    # variant ships, auto is fp32 and says why
    for name in ("nsl_dkan_her2st", "nsl_lite0_multilayer_her2st"):
        slower = choose_model(resolve_model(name), "auto")
        assert slower.precision == "fp32", name
        assert "passed its accuracy gate, but int8 ran 0." in slower.reason, slower.reason
    # the previous default's int8 fails its gate (least gene r 0.943 on A1): refused
    lite0 = resolve_model("nsl_lite0_her2st")
    assert choose_model(lite0, "auto").precision == "fp32"
    with pytest.raises(ModelError, match=r"nsl_lite0_her2st\.onnx cannot run in int8"):
        choose_model(lite0, "int8")
    # the default standardises its features per slide, which int8 calibration cannot measure
    default = resolve_model(DEFAULT_MODEL_NAME)
    assert "standardises its features per slide" in choose_model(default, "auto").reason
    with pytest.raises(ModelError, match="int8 calibration does not measure slide statistics"):
        choose_model(default, "int8")
    for name in ("stem_her2st", "dkan_her2st"):
        chosen = choose_model(resolve_model(name), "auto")
        assert chosen.precision == "int8", chosen.reason
        assert chosen.gate is not None and chosen.gate.passed
        assert chosen.gate.fp32_sha256 == precision.file_sha256(resolve_model(name))


# -- calibration within a memory budget ------------------------------------------------------
def _graph_bytes(path: Path) -> bytes:
    """The int8 model's graph (weights, scales, zero points), without its metadata."""
    return onnx.load(str(path)).graph.SerializeToString()


def _recipe(path: Path) -> dict:
    return json.loads(Predictor(path, providers=["cpu"]).info.metadata["int8_recipe"])


def _estimated_bytes_per_tile(
    fp32: Path, tiles: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """The calibrator's bytes per tile as quantisation estimates them (recorded when a
    budget of one byte makes it chunk), checked against the synthetic model's arithmetic."""
    budget = precision.CALIBRATION_BUDGET_BYTES
    monkeypatch.setattr(precision, "CALIBRATION_BUDGET_BYTES", 1)
    out = precision.quantize_int8(fp32, tmp_path / "probe.onnx", tiles)
    record = _recipe(out)["chunked_calibration"]
    assert record["tiles_per_batch"] == 16
    per_tile = record["estimated_bytes_per_batch"] // 16
    # float32 activations kept per tile: the stem's input (3×16×16), the inputs and outputs
    # of the three convolutions (5 of 8×16×16), the head's input (8) and output (6); plus the
    # flat copy and absolute value of the largest (8×16×16) while it is histogrammed
    assert per_tile == 4 * (3 * 256 + 5 * 8 * 256 + 8 + 6) + 2 * 4 * 8 * 256
    monkeypatch.setattr(precision, "CALIBRATION_BUDGET_BYTES", budget)
    return int(per_tile)


def test_calibration_chunks_are_near_equal_and_cover_every_batch() -> None:
    assert precision.calibration_chunk_batches(13, 100, 10_000) == 13  # all fit: one pass
    assert precision.calibration_chunk_batches(13, 100, 1_300) == 13
    assert precision.calibration_chunk_batches(13, 100, 1_299) == 7  # 12 fit: 2 passes, 7 + 6
    assert precision.calibration_chunk_batches(13, 100, 350) == 3  # 3 fit: 5 passes of ≤ 3
    assert precision.calibration_chunk_batches(13, 100, 10) == 1  # not one fits: one each
    tiles = tissue_like_tiles(100)  # 6 batches of 16, 4 tiles left over as before
    one_shot = precision._calibration_reader(tiles, {})
    chunked = precision._calibration_reader(tiles, {}, 4)
    assert len(chunked) == 2
    fed = []
    for i in range(len(chunked)):
        chunked.set_range(start_index=i, end_index=i + 1)
        fed += [b["image"] for b in iter(chunked.get_next, None)]
    expected = list(iter(one_shot.get_next, None))
    assert len(fed) == len(expected) == 6
    assert all(np.array_equal(a, b["image"]) for a, b in zip(fed, expected, strict=True))


def test_a_small_budget_calibrates_in_chunks_and_still_agrees_with_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    tiles = tissue_like_tiles(128)
    one_shot = precision.quantize_int8(fp32, tmp_path / "one.onnx", tiles)
    assert "chunked_calibration" not in _recipe(one_shot)
    per_tile = _estimated_bytes_per_tile(fp32, tiles, tmp_path, monkeypatch)
    # two batches' activations fit, not eight
    monkeypatch.setattr(precision, "CALIBRATION_BUDGET_BYTES", 2 * 16 * per_tile)
    chunked = precision.quantize_int8(fp32, tmp_path / "chunked.onnx", tiles)
    record = _recipe(chunked)["chunked_calibration"]
    assert record["chunks"] == 4 and record["batches_per_chunk"] == 2
    assert record["budget_bytes"] == 2 * 16 * per_tile
    check = tissue_like_tiles(64, seed=9)
    reference = Predictor(fp32, providers=["cpu"]).predict(check).expression
    for path in (one_shot, chunked):
        r = gene_agreement(reference, Predictor(path, providers=["cpu"]).predict(check).expression)
        assert np.median(r) > 0.95


def test_chunked_minmax_calibration_gives_the_one_pass_model_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # min and max merge exactly across passes: every batch reaches the ranges once
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    tiles = tissue_like_tiles(96)
    one_shot = precision.quantize_int8(fp32, tmp_path / "one.onnx", tiles, calibrate="minmax")
    monkeypatch.setattr(precision, "CALIBRATION_BUDGET_BYTES", 1)
    chunked = precision.quantize_int8(fp32, tmp_path / "chunked.onnx", tiles, calibrate="minmax")
    assert _recipe(chunked)["chunked_calibration"]["chunks"] == 6
    assert _graph_bytes(chunked) == _graph_bytes(one_shot)


def test_a_budget_that_fits_every_tile_gives_the_one_pass_file_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = write_conv_model(tmp_path / "conv.onnx")
    tiles = tissue_like_tiles(64)
    roomy = precision.quantize_int8(fp32, tmp_path / "roomy.onnx", tiles)
    per_tile = _estimated_bytes_per_tile(fp32, tiles, tmp_path, monkeypatch)
    monkeypatch.setattr(precision, "CALIBRATION_BUDGET_BYTES", 64 * per_tile)  # just fits
    tight = precision.quantize_int8(fp32, tmp_path / "tight.onnx", tiles)
    assert "chunked_calibration" not in _recipe(tight)
    assert tight.read_bytes() == roomy.read_bytes()
    monkeypatch.setattr(precision, "CALIBRATION_BUDGET_BYTES", 64 * per_tile - 1)
    over = precision.quantize_int8(fp32, tmp_path / "over.onnx", tiles)
    assert _recipe(over)["chunked_calibration"]["chunks"] == 2
    # no budget: one pass whatever the default (gate_int8.py calibrates in one pass up to 4.5 GiB)
    unbounded = precision.quantize_int8(
        fp32, tmp_path / "unbounded.onnx", tiles, calibration_budget=math.inf
    )
    assert unbounded.read_bytes() == roomy.read_bytes()


def test_int8_is_refused_for_a_model_that_standardises_per_slide_and_auto_says_why(
    tmp_path: Path,
) -> None:
    model = write_mean_colour_model(tmp_path / "s.onnx", with_slide_statistics=True)
    with pytest.raises(ModelError, match="standardises its features per slide"):
        choose_model(model, "int8")
    auto = choose_model(model, "auto")
    assert auto.path == model and auto.precision == "fp32"
    assert "calibration does not measure slide statistics" in auto.reason
