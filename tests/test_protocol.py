"""The evaluation protocol of issue 19 (models/protocol.py) and the non-negative clamp of shipped
models: the statistics, one headline number recomputed from the data, and no negative log1p
value out of any shipped model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from napari_virtual_st.contract import attach_metadata, save_model
from napari_virtual_st.onnx_export import CLAMP_NODE, clamp_non_negative
from napari_virtual_st.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_JSON = REPO / "models" / "results" / "protocol.json"


def _her2st() -> None:
    from tests.her2st import workshop_data

    workshop_data()


def test_bootstrap_pcc_with_every_spot_once_is_pcc_all_and_resamples_are_paired() -> None:
    from models.protocol import bootstrap_counts, difference, weighted_pcc_all
    from models.workshop.metrics import pearson_per_gene

    rng = np.random.default_rng(0)
    true = rng.normal(size=(60, 5))
    pred = true + rng.normal(size=(60, 5))
    pred[:, 4] = 1.0  # a constant prediction counts 0, as pearson_per_gene says
    ones = np.ones((1, 60))
    assert weighted_pcc_all(pred, true, ones)[0] == pytest.approx(
        pearson_per_gene(pred, true).mean(), abs=1e-12
    )
    counts = bootstrap_counts(60, 0, 200)
    assert counts.shape == (200, 60) and np.all(counts.sum(axis=1) == 60)
    np.testing.assert_array_equal(counts, bootstrap_counts(60, 0, 200))  # fixed seed
    good = weighted_pcc_all(pred, true, counts)
    noise = weighted_pcc_all(rng.normal(size=(60, 5)), true, counts)
    assert difference(good.mean(), boots=good, other=(noise.mean(), noise))["verdict"] == "a"
    assert difference(good.mean(), boots=good, other=(good.mean(), good + 1e-3))["verdict"] == "b"
    same = difference(0.1, boots=good, other=(0.1, good[::-1]))
    assert same["verdict"] == "tie"


def test_auc_and_marker_score_use_only_the_listed_genes_present() -> None:
    from models.protocol import auc, marker_score

    genes = ["ERBB2", "COL1A1", "OTHER"]
    values = np.array([[3.0, 0.0, 9.0], [2.0, 1.0, 0.0], [0.0, 3.0, 5.0], [0.5, 2.0, 1.0]])
    score = marker_score(values, genes)
    assert np.argsort(score).tolist() == [2, 3, 1, 0]
    positive = np.array([True, True, False, False])
    assert auc(score, positive) == 1.0
    assert auc(-score, positive) == 0.0
    assert auc(np.zeros(4), positive) == 0.5


def _graph_with_a_consumer(path: Path) -> Path:
    """``expression = image_mean - 1`` (negative for dark tiles) and ``variance = expression²``."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "one"], ["expression"]),
        helper.make_node("Mul", ["expression", "expression"], ["variance"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 4, 4, 3])],
        [
            helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("variance", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [100.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    attach_metadata(
        model,
        {
            "vst.format_version": "1",
            "vst.family": "baseline",
            "vst.genes": json.dumps(["A", "B", "C"]),
            "vst.tile_px": "4",
            "vst.tile_um": "10.0",
            "vst.target": "log1p_cp10k",
            "vst.outputs": json.dumps(["expression", "variance"]),
        },
    )
    return save_model(model, path)


def test_clamp_non_negative_clamps_only_the_expression_output_and_is_idempotent(
    tmp_path: Path,
) -> None:
    path = _graph_with_a_consumer(tmp_path / "m.onnx")
    tiles = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 250)])
    before = Predictor(path, providers=["cpu"]).predict(tiles)
    assert before.expression.min() < 0
    model = onnx.load(str(path))
    clamp_non_negative(clamp_non_negative(model))
    assert sum(n.name == CLAMP_NODE for n in model.graph.node) == 1
    after = Predictor(save_model(model, tmp_path / "c.onnx"), providers=["cpu"]).predict(tiles)
    np.testing.assert_allclose(after.expression, np.maximum(before.expression, 0))
    assert after.variance is not None and before.variance is not None
    np.testing.assert_allclose(after.variance, before.variance)  # read the unclamped values


def test_every_shipped_log1p_model_is_clamped_in_its_graph() -> None:
    from napari_virtual_st.registry import bundled_models

    models = [m for m in bundled_models() if m.info is not None]
    assert models
    for m in models:
        assert m.info is not None
        if m.info.target != "log1p_cp10k":
            continue
        graph = onnx.load(str(m.path)).graph
        assert any(n.name == CLAMP_NODE for n in graph.node), m.path.name


@pytest.mark.parametrize("family", ["nsl", "dkan", "stem"])
def test_the_demo_never_reports_a_negative_log1p_value(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_virtual_st.cli import main
    from napari_virtual_st.registry import bundled_models
    from napari_virtual_st.store import PredictionStore

    model = next(m for m in bundled_models() if m.info is not None and m.info.family == family)
    gene = "IGLC2" if "IGLC2" in model.info.genes else None  # type: ignore[union-attr]
    args = ["demo", "--out", str(tmp_path), "--model", str(model.path), "--quiet"]
    assert main(args + (["--gene", gene] if gene else [])) == 0
    line = re.search(r"predicted log1p_cp10k from (-?[\d.]+) to", capsys.readouterr().out)
    assert line is not None and float(line.group(1)) >= 0
    store = PredictionStore.open(next(tmp_path.glob("*.vst.zarr")))
    assert np.nanmin(store.expression()) >= 0


def test_protocol_headline_ridge_colour_on_a1_is_reproduced_from_the_data() -> None:
    """The colour-ridge baseline's C → A1 PCC-ALL and its bootstrap interval, recomputed."""
    _her2st()
    from models.evaluate import C_SECTIONS, N_GENES, TEST_SECTION, TILE_PX, TILE_UM
    from models.protocol import (
        NEGATIVE,
        POSITIVE,
        a1_labels,
        auc,
        bootstrap_counts,
        interval,
        marker_score,
        pcc_all,
        weighted_pcc_all,
    )
    from models.workshop.baselines import RidgeColour
    from models.workshop.data import gene_panel, load_her2st

    if not PROTOCOL_JSON.is_file():
        pytest.fail("models/results/protocol.json is missing: run python -m models.protocol")
    recorded = json.loads(PROTOCOL_JSON.read_text())
    sections = load_her2st(TILE_PX, TILE_UM)
    train = [sections[n] for n in C_SECTIONS]
    test = sections[TEST_SECTION]
    genes = gene_panel(train, N_GENES, test.measured.genes)
    pred = np.maximum(RidgeColour().fit(train, genes).predict(test.tiles), 0.0)
    true = test.targets(genes)
    counts = bootstrap_counts(len(true), len(C_SECTIONS), recorded["n_boot"])
    rec = recorded["methods"]["ridge_colour"]["a1_raw"]
    assert pcc_all(pred, true) == pytest.approx(rec["value"], abs=1e-4)
    assert interval(weighted_pcc_all(pred, true, counts)) == pytest.approx(rec["ci95"], abs=1e-4)
    # the pathologist check on the measured expression
    labels = a1_labels(test)
    keep = np.isin(labels, POSITIVE + NEGATIVE)
    measured = auc(marker_score(true, genes)[keep], np.isin(labels[keep], POSITIVE))
    assert measured == pytest.approx(recorded["pathologist"]["measured"]["value"], abs=1e-4)


#: A paired difference with its interval in the results tables: "+0.002 [-0.003, +0.006] (tie)"
#: in a cell, or "| +0.002 | [-0.003, +0.006] | tie |" in protocol.md's paired table.
_DIFF_CELL = re.compile(r"([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]( \(tie\)| \| tie \|)?")
_DIFF_ROW = re.compile(r"\| ([+-]\d+\.\d+) \| \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\] \| (\w+) \|")
GENERATED_TABLES = (
    "protocol.md",
    "context_stage.md",
    "auxiliary_genes.md",
    "encoder_variants.md",
    "encoder_dkan.md",
    "stem_mean_head.md",
    "attention_context.md",
    "encoder_size.md",
)


@pytest.mark.parametrize("name", GENERATED_TABLES)
def test_results_tables_state_each_test_sets_resolution_and_call_ties_ties(name: str) -> None:
    """Every generated results table says the µm/px of LOSO-C and A1 and how intervals are
    read, and each paired difference is called a tie exactly when its interval holds 0."""
    text = (REPO / "models" / "results" / name).read_text()
    assert re.search(r"LOSO-C = [^;]*\d\.\d{3}–\d\.\d{3} µm/px", text), name
    assert re.search(r"A1 = [^;]*\d\.\d{3} µm/px", text), name
    assert "95 % spot bootstrap" in text and "is a **tie**" in text, name
    found = 0
    for line in text.splitlines():
        for diff in [*_DIFF_CELL.finditer(line), *_DIFF_ROW.finditer(line)]:
            lo, hi = float(diff[2]), float(diff[3])
            said = diff[4] is not None and "tie" in diff[4]
            rest = line[diff.end() :].split("|")
            # auxiliary_genes.md and encoder_variants.md give the verdict in the next column
            said = said or (len(rest) > 1 and rest[1].strip() == "tie")
            found += 1
            if lo < 0 < hi:  # as printed; an end that rounds to 0 can go either way
                assert said, f"{name}: {line}"
            elif lo > 0 or hi < 0:
                assert not said, f"{name}: {line}"
    assert found, f"{name}: no paired difference found"


def test_the_registry_default_is_the_model_the_protocol_recommends() -> None:
    """``virtual-st predict`` without ``--model`` runs what ``models.protocol`` chose on C."""
    from models.protocol import METHODS
    from napari_virtual_st.registry import DEFAULT_MODEL_NAME

    if not PROTOCOL_JSON.is_file():
        pytest.fail("models/results/protocol.json is missing: run python -m models.protocol")
    chosen = json.loads(PROTOCOL_JSON.read_text())["default"]["model"]
    onnx_file = next(m.onnx for m in METHODS if m.name == chosen)
    assert onnx_file == f"{DEFAULT_MODEL_NAME}.onnx"


def test_on_off_pairs_a_technique_with_its_base_and_calls_no_difference_a_tie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``on_off`` (a technique measured on/off): the run that predicts the labels beats a noisy
    one on the sections both have, and a run against itself is a tie of exactly 0."""
    _her2st()
    import models.folds
    from models.evaluate import TILE_PX, TILE_UM
    from models.protocol import Method, on_off
    from models.workshop.data import load_her2st

    monkeypatch.setattr(models.folds, "FOLD_CACHE", tmp_path)
    rng = np.random.default_rng(0)
    for name, section in load_her2st(TILE_PX, TILE_UM, names=["C3", "A1"]).items():
        genes = list(section.measured.genes[:30])
        truth = section.targets(genes)
        noisy = truth + rng.normal(scale=3.0, size=truth.shape)  # synthetic predictions
        for method, pred in (("truth", truth), ("noisy", noisy)):
            np.savez(tmp_path / f"{method}__{name}.npz", genes=np.array(genes), pred=pred)
    noisy, truth = Method("noisy", "", "noisy"), Method("truth", "", "truth")
    assert on_off(noisy, Method("absent", "", "absent")) is None
    record = on_off(noisy, truth, n_boot=50)
    assert record is not None and record["sections"] == ["C3", "A1"]
    for key in ("loso_C_raw", "loso_C_smoothed_3x3", "A1_raw", "A1_smoothed_3x3"):
        assert record[key]["other_minus_base"]["verdict"] == "a", key
    assert record["loso_C_raw"]["other"]["value"] == pytest.approx(1.0, abs=1e-3)
    with_context = on_off(noisy, truth, n_boot=50, context=True)
    assert with_context is not None
    assert with_context["A1_raw"] == record["A1_raw"]  # the per-tile rows are unchanged
    # C3 is the only C section: nothing else to choose its kernel on, so none; A1's is chosen
    # on C3 (and smoothing noisy predictions helps them)
    assert with_context["context_sigma_um"]["base"]["C3"] is None
    assert with_context["context_sigma_um"]["base"]["A1"] is not None
    assert with_context["loso_C_ctx_raw"]["base"] == record["loso_C_raw"]["base"]
    assert "A1_ctx_smoothed_3x3" in with_context
    itself = on_off(noisy, noisy, n_boot=50)
    assert itself is not None
    assert itself["A1_raw"]["other_minus_base"] == {
        "difference": 0.0,
        "ci95": [0.0, 0.0],
        "verdict": "tie",
    }
