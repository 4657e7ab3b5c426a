"""NSL + DKAN-style as one model: the two families' predictions averaged (issue 19).

    python -m models.feature_context extract --methods dkan   # first: DKAN-style per fold
    python -m models.frozen_encoder extract                   # first: NSL per fold
    python -m models.ensemble folds     # nested weights -> models/.cache/folds/nsl_dkan__*.npz
                                        # (+ the learnt DKAN context variant, measured)
    python -m models.ensemble build     # src/napari_virtual_st/bundled_models/nsl_dkan_her2st.onnx

Why: the two families read different things. NSL reads stain concentrations on 16 px tiles
(6.9 µm/px, colour); DKAN-style reads 64 px tiles (1.72 µm/px, morphology through an
EfficientNet). Under the protocol NSL is the better single model (LOSO-C and A1), while the
issue's blind test on a third patient at full resolution ranked DKAN-style first; their errors
differ, so their mean may beat both. What is measured, not assumed, is in
``models/results/summary.md``.

The model (one ONNX graph, input the 64 px / 110 µm tile DKAN reads):

- **DKAN branch**: the shipped ``dkan_her2st`` graph up to its gene-wise image features
  ``(n, G, 128)``, then a **per-gene ridge head** in place of its shared readout (fitted on
  the training sections' features, penalty chosen on inner leave-one-section-out folds;
  ``models/feature_context.py``'s ``"none"`` head: alone it lifts DKAN-style's LOSO-C from
  0.101 to 0.160, the shared readout underfits).
- **NSL branch**: the shipped ``nsl_her2st`` graph on the same tile averaged over 4 × 4 pixel
  blocks to 16 px (:func:`pool_tiles`, the same arithmetic in the graph: mean, round half to
  even, uint8). The engine's own 16 px tile is a bilinear sample of a finer level, not an
  area mean; NSL on the pooled tile scores as well on every C section and on A1
  (``results/ensemble.json``, ``branches_loso_C_raw``).
- **Output**: ``(1 − w) · NSL + w · DKAN-head``, clamped at 0. The weight ``w`` is chosen as
  ``protocol.py`` chooses a kernel's σ: for held-out section k, the best mean raw PCC-ALL over
  the *other* sections' held-out predictions; the shipped ``w`` on all five. A1 never chooses.

Fold runs (:func:`load_fold_runs`): nothing is trained here. NSL's held-out predictions on
the pooled 64 px tiles (full and degraded to A1's µm/px, for the resolution check) come from
``python -m models.frozen_encoder extract``, which retrains NSL per fold exactly as
``models/folds.py`` does and checks it against the fold cache; DKAN-style's gene-wise features,
full resolution and degraded, from the fold's one training in ``python -m
models.feature_context extract --methods dkan``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import onnx

from models.evaluate import C_SECTIONS, TILE_PX, TILE_UM
from models.folds import fold_path
from models.protocol import BUNDLED
from models.workshop.data import SectionData, load_her2st

REPO = Path(__file__).resolve().parents[1]
RESULT_JSON = REPO / "models" / "results" / "ensemble.json"
#: The protocol's name of the combined method (fold cache ``nsl_dkan__<fold>.npz``).
METHOD = "nsl_dkan"
NSL_METHOD = "nsl_light_ridgehead"
DKAN_METHOD = "dkan"
#: Pixel blocks averaged to turn DKAN's 64 px tile into NSL's 16 px one (both 110 µm).
POOL = 4
#: Weights of the DKAN branch tried (0 = NSL alone, 1 = the DKAN head alone).
WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
#: DKAN's tile, the combined model's input (checked against the DKAN file when building).
TILE_PX_DKAN = 64


def pool_tiles(tiles: NDArray[np.uint8], factor: int = POOL) -> NDArray[np.uint8]:
    """``(n, s, s, 3)`` uint8 tiles averaged over ``factor`` × ``factor`` blocks, rounded half
    to even (as ONNX ``Round``) back to uint8: ``(n, s / factor, s / factor, 3)``."""
    n, size = tiles.shape[0], tiles.shape[1]
    if size % factor:
        raise ValueError(f"{size} px tiles do not split into {factor} x {factor} blocks")
    s = size // factor
    blocks = tiles.astype(np.float32).reshape(n, s, factor, s, factor, tiles.shape[-1])
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)


# ---------------------------------------------------------------- the combined fold runs


def weight_scores(
    nsl: dict[str, NDArray], dkan: dict[str, NDArray], labels: dict[str, NDArray]
) -> dict[float, float]:
    """Mean raw PCC-ALL over the sections of ``labels`` of each weight in :data:`WEIGHTS`."""
    from models.workshop.metrics import pearson_per_gene

    return {
        w: float(
            np.mean(
                [pearson_per_gene(combine(nsl[k], dkan[k], w), labels[k]).mean() for k in labels]
            )
        )
        for w in WEIGHTS
    }


def combine(nsl: NDArray, dkan: NDArray, weight: float) -> NDArray[np.float32]:
    """``(1 − w) · NSL + w · DKAN-head``, clamped at 0 (what the graph computes)."""
    return np.maximum((1.0 - weight) * nsl + weight * dkan, 0.0).astype(np.float32)


def choose_weight(
    nsl: dict[str, NDArray], dkan: dict[str, NDArray], labels: dict[str, NDArray]
) -> float:
    """The weight with the best mean raw PCC-ALL over the sections of ``labels`` (the first of
    equals, so the smaller DKAN share wins a tie)."""
    scores = weight_scores(nsl, dkan, labels)
    return max(WEIGHTS, key=lambda w: (scores[w], -w))


def nested_mix(
    nsl: dict[str, NDArray], dkan: dict[str, NDArray], labels: dict[str, NDArray]
) -> tuple[dict[str, NDArray[np.float32]], dict[str, float]]:
    """Each section's mix with the weight chosen on the *other* sections' labels (its own never
    read), and those weights."""
    preds, weights = {}, {}
    for k in labels:
        weights[k] = choose_weight(nsl, dkan, {j: y for j, y in labels.items() if j != k})
        preds[k] = combine(nsl[k], dkan[k], weights[k])
    return preds, weights


def dkan_head_fold(
    fold: str, sections: dict[str, SectionData]
) -> tuple[list[str], NDArray[np.float32], NDArray[np.float32], float]:
    """The per-gene head on the fold's DKAN features (penalty chosen on inner folds of the
    training sections): held-out predictions at full resolution and on the degraded tiles,
    and the penalty chosen."""
    from models import feature_context as fc

    genes, head, test = dkan_head(fold, sections)
    with np.load(fc.feature_path(DKAN_METHOD, fold)) as z:
        if f"feat_low_{fold}" not in z:
            raise FileNotFoundError(
                f"{fc.feature_path(DKAN_METHOD, fold).name} has no degraded-tile features: "
                f"rerun python -m models.feature_context extract --methods {DKAN_METHOD} --force"
            )
        low = fc.SectionFeatures(test.name, z[f"feat_low_{fold}"], test.xy_um, None)
    return genes, fc.predict_head(head, test), fc.predict_head(head, low), head.setting.alpha


def dkan_head(fold: str, sections: dict[str, SectionData]) -> tuple[list[str], Any, Any]:
    """DKAN-style's per-gene head for ``fold``: fitted on the fold's training sections'
    features (``feature_context``'s cache; penalty chosen on their inner folds). Returns the
    genes, the head and the held-out section's features (labels withheld)."""
    from models import feature_context as fc

    genes, train, test, _ = fc.section_features(DKAN_METHOD, fold, sections)
    own = [s for s in fc.FAMILY_CANDIDATES[DKAN_METHOD] if s.variant == "none"]
    best, _ = fc.choose(train, own)
    return genes, fc.fit_head(train, best), test


@dataclass
class FoldRuns:
    """Per C section: the two branches' held-out predictions (full and degraded tiles)."""

    genes: dict[str, list[str]]
    nsl: dict[str, NDArray]
    nsl_low: dict[str, NDArray]
    nsl_16px: dict[str, NDArray]
    dkan: dict[str, NDArray]
    dkan_low: dict[str, NDArray]
    alpha: dict[str, float]


def load_fold_runs(sections: dict[str, SectionData]) -> FoldRuns:
    from models import frozen_encoder as fe

    runs = FoldRuns({}, {}, {}, {}, {}, {}, {})
    missing = [k for k in C_SECTIONS if not fe.nsl_path(k).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no NSL fold runs for {', '.join(missing)}: run "
            "python -m models.frozen_encoder extract first"
        )
    for k in C_SECTIONS:
        genes, pred, pred_low, alpha = dkan_head_fold(k, sections)
        with np.load(fe.nsl_path(k)) as z:
            if [str(g) for g in z["genes"]] != genes:
                raise ValueError(f"fold {k}: NSL and DKAN-style gene panels differ")
            if f"pooled_{TILE_PX_DKAN}" not in z:
                raise FileNotFoundError(
                    f"{fe.nsl_path(k).name} has no NSL run on {TILE_PX_DKAN} px tiles: rerun "
                    "python -m models.frozen_encoder extract --force"
                )
            runs.nsl[k] = np.maximum(z[f"pooled_{TILE_PX_DKAN}"], 0.0)
            runs.nsl_low[k] = np.maximum(z[f"pooled_low_{TILE_PX_DKAN}"], 0.0)
            runs.nsl_16px[k] = np.maximum(z["own"], 0.0)
        runs.dkan[k], runs.dkan_low[k], runs.alpha[k] = pred, pred_low, alpha
        runs.genes[k] = genes
    return runs


def write_folds(sections: dict[str, SectionData]) -> dict[str, Any]:
    """The combined method's held-out predictions, one fold cache per C section, with the
    weight chosen on the other sections; returns the record of what was chosen."""
    runs = load_fold_runs(sections)
    # each fold has its own gene panel (the top genes of its training sections)
    raw = {k: sections[k].targets(runs.genes[k]) for k in C_SECTIONS}
    record: dict[str, Any] = {"weights_tried": list(WEIGHTS), "folds": {}}
    preds, weights = nested_mix(runs.nsl, runs.dkan, raw)
    low = {k: combine(runs.nsl_low[k], runs.dkan_low[k], weights[k]) for k in C_SECTIONS}
    for k in C_SECTIONS:
        np.savez_compressed(
            fold_path(METHOD, k),
            genes=np.array(runs.genes[k]),
            pred=preds[k],
            pred_lowres=low[k],
            weight=weights[k],
            dkan_head_alpha=runs.alpha[k],
            tile_px=TILE_PX_DKAN,
        )
        record["folds"][k] = {
            "weight_chosen_on_the_others": weights[k],
            "dkan_head_alpha": runs.alpha[k],
        }
    scores = weight_scores(runs.nsl, runs.dkan, raw)
    record["weight_on_all_C"] = choose_weight(runs.nsl, runs.dkan, raw)
    record["loso_C_raw_by_weight (every weight, for reading; not a held-out choice)"] = {
        str(w): round(v, 4) for w, v in scores.items()
    }
    from models.workshop.metrics import pearson_per_gene

    def mean_score(preds: dict[str, NDArray]) -> float:
        return round(
            float(np.mean([pearson_per_gene(preds[k], raw[k]).mean() for k in C_SECTIONS])), 4
        )

    record["branches_loso_C_raw"] = {
        "nsl_on_its_16px_tiles": mean_score(runs.nsl_16px),
        "nsl_on_pooled_64px_tiles": mean_score(runs.nsl),
        "dkan_per_gene_head": mean_score(runs.dkan),
    }
    return record


def with_learnt_dkan_context(sections: dict[str, SectionData], n_boot: int = 1000) -> dict:
    """Measured, not shipped: the mix with DKAN's branch replaced by the learnt feature-space
    context head (``feature_context``: per-gene ridge on own + Gaussian neighbour-mean
    features, setting chosen on inner folds), NSL's branch with the shipped Gaussian
    (σ 100 µm) or without, the weight nested as in :func:`write_folds`; against the shipped
    design (the mix, then the Gaussian σ 100 µm), paired, LOSO-C."""
    from models import feature_context as fc
    from models import protocol

    runs = load_fold_runs(sections)
    raw = {k: sections[k].targets(runs.genes[k]) for k in C_SECTIONS}
    folds = {
        k: protocol.make_fold(sections[k], runs.genes[k], i, n_boot)
        for i, k in enumerate(C_SECTIONS)
    }
    learnt, settings = {}, {}
    for k in C_SECTIONS:
        _, train, test, _ = fc.section_features(DKAN_METHOD, k, sections)
        best, _ = fc.choose(train, fc.FAMILY_CANDIDATES[DKAN_METHOD])
        learnt[k], settings[k] = fc.predict_head(fc.fit_head(train, best), test), best.describe()

    def nested(nsl: dict[str, NDArray], dkan: dict[str, NDArray]) -> dict[str, NDArray]:
        return nested_mix(nsl, dkan, raw)[0]

    def gauss(preds: dict[str, NDArray]) -> dict[str, NDArray]:
        return {k: protocol.contextual(preds[k], folds[k], 100.0) for k in C_SECTIONS}

    shipped = gauss(nested(runs.nsl, runs.dkan))
    variants = {
        "nsl + dkan_learnt_context": nested(runs.nsl, learnt),
        "nsl_gauss100 + dkan_learnt_context": nested(gauss(runs.nsl), learnt),
    }
    record: dict[str, Any] = {"dkan_head_setting_per_fold": settings}
    for kind in protocol.LABEL_KINDS:
        base = protocol.section_scores(shipped, folds, kind)
        record[f"shipped_design_{kind}"] = protocol.summarise(*base)
        for name, preds in variants.items():
            point, boots = protocol.section_scores(preds, folds, kind)
            record[f"{name}_{kind}"] = protocol.summarise(point, boots)
            record[f"{name}_minus_shipped_design_{kind}"] = protocol.difference(
                point, boots=boots, other=base
            )
    return record


# ---------------------------------------------------------------- the shipped file

SHIPPED_NAME = "nsl_dkan_her2st.onnx"


def feature_tensor(dkan: onnx.ModelProto) -> str:
    """The name of the DKAN graph's gene-wise image features: the input of the ``MatMul``
    whose result the shared readout's bias is added to."""
    producers = {out: node for node in dkan.graph.node for out in node.output}
    for node in dkan.graph.node:
        if node.op_type == "Add" and "readout.bias" in node.input:
            matmul = producers.get(next(i for i in node.input if i != "readout.bias"))
            if matmul is not None and matmul.op_type == "MatMul":
                return str(matmul.input[0])
    raise ValueError("the DKAN graph has no shared readout (readout.bias) to replace")


def shipped_dkan_features(tiles: NDArray[np.uint8], dkan_path: Path | None = None) -> NDArray:
    """``(n, G, 128)`` gene-wise features of the shipped DKAN-style file on 64 px tiles."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(dkan_path or BUNDLED / "dkan_her2st.onnx"))
    name = feature_tensor(model)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run([name], {"image": tiles[i : i + 64]})[0] for i in range(0, len(tiles), 64)]
    )


def fit_shipped_head(sections: dict[str, SectionData], genes: Sequence[str]) -> Any:
    """The per-gene head on the shipped DKAN file's features of all five C sections (in-sample,
    as every fold's head), its penalty chosen on leave-one-section-out folds of them."""
    from models import feature_context as fc
    from models.dkan.train import at_dkan_resolution

    feats = []
    for k in C_SECTIONS:
        sec = sections[k]
        tiles = at_dkan_resolution(sec).tiles
        feats.append(
            fc.SectionFeatures(
                k, shipped_dkan_features(tiles), sec.measured.xy_fullres_px * sec.mpp,
                sec.targets(list(genes)),
            )
        )  # fmt: skip
    own = [s for s in fc.FAMILY_CANDIDATES[DKAN_METHOD] if s.variant == "none"]
    best, _ = fc.choose(feats, own)
    return fc.fit_head(feats, best)


def pool_constants(size: int, factor: int, shape: str, axes: str) -> list[onnx.TensorProto]:
    """The initializers of :func:`pool_nodes`: ``factor`` × ``factor`` blocks of an image of
    ``size`` × ``factor`` px."""
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(np.array([-1, size, factor, size, factor, 3], np.int64), shape),
        numpy_helper.from_array(np.array([2, 4], np.int64), axes),
    ]


def pool_nodes(source: str, target: str, shape: str, axes: str) -> list[onnx.NodeProto]:
    """Nodes computing :func:`pool_tiles` in a graph: uint8 ``source`` averaged over blocks
    (:func:`pool_constants` named ``shape`` and ``axes``), rounded half to even, uint8 ``target``."""
    from onnx import TensorProto, helper

    p = f"{target}/pool"
    return [
        helper.make_node("Cast", [source], [f"{p}/float"], name=f"{p}/to_float", to=TensorProto.FLOAT),
        helper.make_node("Reshape", [f"{p}/float", shape], [f"{p}/blocks"], name=f"{p}/blocks"),
        helper.make_node("ReduceMean", [f"{p}/blocks", axes], [f"{p}/mean"], name=f"{p}/mean", keepdims=0),
        helper.make_node("Round", [f"{p}/mean"], [f"{p}/rounded"], name=f"{p}/round"),
        helper.make_node("Cast", [f"{p}/rounded"], [target], name=f"{p}/to_uint8", to=TensorProto.UINT8),
    ]  # fmt: skip


def combined_graph(
    nsl: onnx.ModelProto, dkan: onnx.ModelProto, head: Any, weight: float
) -> onnx.ModelProto:
    """One graph: ``image`` (n, 64, 64, 3) uint8 → ``expression`` = (1 − w) · NSL(pooled
    16 px tile) + w · per-gene head(DKAN features), clamped at 0."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    from napari_virtual_st.onnx_export import clamp_non_negative

    feat = feature_tensor(dkan)
    dk = compose.add_prefix(onnx.utils.Extractor(dkan).extract_model(["image"], [feat]), "dkan/")
    ns = compose.add_prefix(nsl, "nsl/")
    genes = head.w.shape[0]
    size = TILE_PX_DKAN // POOL
    w_head = head.w.astype(np.float32)
    c_head = (head.b - (head.mu * head.w).sum(axis=1)).astype(np.float32)  # (G,)

    def const(name: str, value: NDArray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        *pool_constants(size, POOL, "ens/pool_shape", "ens/pool_axes"),
        const("ens/head_w", w_head),
        const("ens/head_axes", np.array([2], np.int64)),
        const("ens/head_c", c_head),
        const("ens/w_nsl", np.array(1.0 - weight, np.float32)),
        const("ens/w_dkan", np.array(weight, np.float32)),
    ]
    nodes = [
        helper.make_node("Identity", ["image"], ["dkan/image"], name="ens/dkan_input"),
        *pool_nodes("image", "nsl/image", "ens/pool_shape", "ens/pool_axes"),
        *dk.graph.node,
        *ns.graph.node,
        helper.make_node("Mul", [f"dkan/{feat}", "ens/head_w"], ["ens/head_terms"], name="ens/head_mul"),
        helper.make_node("ReduceSum", ["ens/head_terms", "ens/head_axes"], ["ens/head_sum"], name="ens/head_sum", keepdims=0),
        helper.make_node("Add", ["ens/head_sum", "ens/head_c"], ["ens/dkan_expression"], name="ens/head_add"),
        helper.make_node("Mul", ["nsl/expression", "ens/w_nsl"], ["ens/nsl_part"], name="ens/nsl_part"),
        helper.make_node("Mul", ["ens/dkan_expression", "ens/w_dkan"], ["ens/dkan_part"], name="ens/dkan_part"),
        helper.make_node("Add", ["ens/nsl_part", "ens/dkan_part"], ["expression"], name="ens/mix"),
    ]  # fmt: skip
    image = helper.make_tensor_value_info(
        "image", TensorProto.UINT8, ["N", TILE_PX_DKAN, TILE_PX_DKAN, 3]
    )
    out = helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", genes])
    graph = helper.make_graph(
        nodes,
        "nsl_dkan",
        [image],
        [out],
        initializer=[*dk.graph.initializer, *ns.graph.initializer, *inits],
    )
    model = helper.make_model(graph, opset_imports=list(dkan.opset_import))
    model.ir_version = dkan.ir_version
    clamp_non_negative(model)
    onnx.checker.check_model(model)
    return model


def int8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """The weight nodes the combined graph's int8 variants keep float (``vst.int8_float_nodes``):
    every NSL-branch node (NSL's own int8 fails its gate: its stain-space products need float;
    the branch is a small share of the time), and DKAN-style's stem and every node after its
    last convolution (token projections and attention over 5 tokens: little time). Inside the
    combined graph ``precision.sensitive_nodes`` would take NSL's last product for DKAN's
    head, so the graph names its own."""
    import onnx

    from napari_virtual_st.precision import QUANTISED_OPS, fold_weight_casts

    folded = onnx.ModelProto()
    folded.CopyFrom(model)  # (folding rewrites the graph in place)
    heavy = [n for n in fold_weight_casts(folded).graph.node if n.op_type in QUANTISED_OPS]
    nsl = [n.name for n in heavy if n.name.startswith("nsl/")]
    dkan = [n for n in heavy if n.name.startswith("dkan/")]
    convs = [i for i, n in enumerate(dkan) if n.op_type == "Conv"]
    if not convs or not nsl:
        raise ValueError("not the combined graph: no DKAN convolution or no NSL node")
    return [dkan[0].name, *(n.name for n in dkan[convs[-1] + 1 :]), *nsl]


def build(weight: float, sections: dict[str, SectionData], out: Path | None = None) -> Path:
    """Write the combined model: the shipped NSL and DKAN-style files, the per-gene head fitted
    on all of C, the DKAN weight ``weight`` (chosen on the fold runs, :func:`write_folds`)."""
    import hashlib

    import onnx

    from models.workshop.provenance import HER2ST_LICENCE_NOTE, git_revision
    from napari_virtual_st.contract import (
        ModelMetadata,
        attach_metadata,
        read_metadata,
        save_model,
    )
    from napari_virtual_st.predictor import Predictor

    out = out or BUNDLED / SHIPPED_NAME
    paths = {"nsl": BUNDLED / "nsl_her2st.onnx", "dkan": BUNDLED / "dkan_her2st.onnx"}
    nsl, dkan = (onnx.load(str(paths[k])) for k in ("nsl", "dkan"))
    genes = list(read_metadata(nsl).genes)
    if list(read_metadata(dkan).genes) != genes:
        raise ValueError("nsl_her2st and dkan_her2st predict different genes")
    if (
        read_metadata(dkan).tile_px != TILE_PX_DKAN
        or read_metadata(nsl).tile_px * POOL != TILE_PX_DKAN
    ):
        raise ValueError(
            f"expected DKAN at {TILE_PX_DKAN} px and NSL at {TILE_PX_DKAN // POOL} px"
        )
    head = fit_shipped_head(sections, genes)
    model = combined_graph(nsl, dkan, head, weight)
    training = {
        "data": "HER2ST legacy ST, patient C sections C2-C6 (910 spots)",
        "targets": "log1p counts per 10k (library size over all genes)",
        "branches": {
            k: {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for k, p in paths.items()
        },
        "dkan_head": {
            "what": "per-gene ridge on the DKAN file's gene-wise image features (128 per gene), "
            "replacing its shared readout; fitted on C2-C6 (in-sample features)",
            "alpha": head.setting.alpha,
            "alpha_chosen_on": "leave-one-section-out folds of C2-C6",
        },
        "nsl_input": f"the 64 px tile averaged over {POOL} x {POOL} blocks (16 px, 110 um)",
        "dkan_weight": weight,
        "dkan_weight_chosen_on": "held-out predictions of the leave-one-C-section-out fold "
        "runs, all five C sections (models/results/ensemble.json); A1 chose nothing",
        "code": "models/ensemble.py",
        "code_revision": git_revision(),
    }
    metadata = ModelMetadata(
        genes=genes,
        tile_px=TILE_PX_DKAN,
        tile_um=TILE_UM,
        family=METHOD,
        target="log1p_cp10k",
        name="NSL + DKAN-style (HER2ST)",
        training=training,
        license="Code BSD-3-Clause; EfficientNet-Lite0 ImageNet weights Apache-2.0; "
        "all-MiniLM-L6-v2 Apache-2.0; " + HER2ST_LICENCE_NOTE,
        description=f"{1 - weight:g} x NSL (stain features, 16 px) + {weight:g} x DKAN-style "
        "(EfficientNet-Lite0 + gene-text queries, 64 px) with a per-gene head; one graph, "
        "one 64 px / 110 um tile per spot.",
        metrics={  # the scores themselves: models/ship.py measures them on this file
            "protocol": "models/evaluate.py cross_patient: both branches, the head and the "
            "weight fitted on C2-C6, test A1; raw and 3x3-smoothed labels",
            "test_section": "A1",
            "n_test_spots": 346,
        },
        other_keys={"int8_float_nodes": json.dumps(int8_float_nodes(model))},
    )
    attach_metadata(model, metadata.to_props())
    save_model(model, out)
    Predictor(out, providers=["cpu"])  # a valid contract model
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=("folds", "build"))
    args = parser.parse_args(argv)
    if args.step == "folds":
        sections = load_her2st(TILE_PX, TILE_UM)
        record = write_folds(sections)
        record["learnt_dkan_context (measured, not shipped)"] = with_learnt_dkan_context(sections)
        RESULT_JSON.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record, indent=1))
    if args.step == "build":
        record = json.loads(RESULT_JSON.read_text())
        path = build(float(record["weight_on_all_C"]), load_her2st(TILE_PX, TILE_UM))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
