"""The frozen encoder's features, varied and measured on/off (issue 19 item 4).

    python -m models.frozen_encoder extract     # first: the shipped features; NSL per fold
    python -m models.encoder_variants extract   # stage and stain-normalised features
    python -m models.encoder_variants folds     # -> fold caches lite0_<v>__*, nsl_lite0_<v>__*
    python -m models.encoder_variants score     # -> results/encoder_variants.json, .md
    python -m models.encoder_variants build --variants multilayer_floored   # the default ->
                              # bundled_models/nsl_lite0_multilayer_floored_her2st.onnx
    python -m models.encoder_variants build --variants multilayer   # -> bundled_models/
                                                # nsl_lite0_multilayer_her2st.onnx (--out FILE)

Each variant changes only the head's input of ``models/frozen_encoder.py``; the tile size, the
ridge penalty and NSL's share are chosen nested exactly as for the shipped method
(:func:`models.frozen_encoder.write_folds`), and the result is the paired difference against
the shipped method's own fold runs (``lite0``, ``nsl_lite0``) under the protocol
(:func:`models.protocol.on_off`). Nothing here chooses a setting of the shipped model.

- ``per_slide`` (HESCAPE's lesson on batch effects): each section's features z-scored over
  that section's own spots, at training and at prediction, so a slide's overall stain and
  scanner shift is removed before the ridge reads it. As a file it declares
  ``vst.slide_statistics``: the engine measures the statistics on a sample of the slide's
  tissue before the first tile (:mod:`napari_virtual_st.slide_statistics`). Not shipped: its
  values move with that sample (``models/per_slide_sensitivity.py``).
- ``multilayer``: the spatial means of the feature maps that end the encoder's stages at
  strides 8, 16 and 32 (40, 112 and 320 channels) beside the last map (1280): texture at
  cell scale next to the last layer's ImageNet semantics (:data:`STAGE_ENDS`).
- ``multilayer_per_slide``: both.
- ``multilayer_centred``: multi-layer features centred per slide (each section's own mean
  subtracted, not divided by its spread): the per-slide shift removed without the division
  that makes ``multilayer_per_slide`` depend on which spots its statistics come from
  (``models/per_slide_sensitivity.py``).
- ``multilayer_floored``: multi-layer features standardised per slide as a run would do it
  (mean and SD over at most 128 of the slide's spots, evenly spread:
  ``slide_statistics.sample_evenly``) with each feature's SD floored at :data:`FLOOR_SHARE`
  of its SD over every spot of patient C (a reference fixed by the training data), so a
  feature that hardly varies within a slide is not blown up by the sample. For the LOSO-C
  folds the reference includes the held-out section's own (unlabelled) features, one fifth
  of its spots; the A1 fold's and a shipped file's reference is exactly the training data.
  Shipped as ``nsl_lite0_multilayer_floored_her2st.onnx``, the default since the protocol
  chose it (``models/nsl_lite0_multilayer_floored/README.md``).
- ``stain_normalised``: stain normalisation in image space instead (Reinhard 2001): each
  section's tiles mapped in CIELAB from that section's own mean and standard deviation to
  those of patient C's sections (their mean; images only, no label), before the encoder.
  NSL's branch reads the tiles as they are (its stain deconvolution is its own
  normalisation). Per section, so it needs slide statistics in the engine too.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import frozen_encoder as fe
from models.evaluate import TEST_SECTION, TILE_UM
from models.folds import degrade
from models.workshop.data import SectionData

RESULTS = Path(__file__).resolve().parent / "results"
#: Index of the last block of the stages whose outputs ``multilayer`` adds (EfficientNet-Lite0:
#: stage 3 ends at block 4 (40 ch, stride 8), stage 5 at block 10 (112 ch, stride 16), stage 7
#: at block 15 (320 ch, stride 32)).
STAGE_ENDS = (4, 10, 15)
STAGE_CHANNELS = 40 + 112 + 320
VARIANTS = (
    "per_slide",
    "multilayer",
    "multilayer_per_slide",
    "stain_normalised",
    "multilayer_centred",
    "multilayer_floored",
)
#: Variants built as files (stain normalisation is not: it ties on A1, and beside per-slide
#: features a run would need two rounds of statistics, models/results/summary.md).
BUILDABLE = ("multilayer", "multilayer_per_slide", "multilayer_floored")
#: The multi-layer mix and its floored per-slide variant (the default) as bundled files
#: (``build`` without ``--out``), scored by the protocol beside the other shipped files
#: (``models.protocol.METHODS``).
SHIPPED_NAME = "nsl_lite0_multilayer_her2st.onnx"
FLOORED_NAME = "nsl_lite0_multilayer_floored_her2st.onnx"
NAMING = fe.FileNaming(
    family="nsl_lite0_multilayer",
    title="NSL + frozen EfficientNet-Lite0, multi-layer features (HER2ST)",
    code="models/encoder_variants.py",
    choices="models/results/encoder_variants.json",
)
#: Each buildable variant's default file (bundled where it ships) and naming.
FILES = {
    "multilayer": (
        fe.REPO / "src" / "napari_virtual_st" / "bundled_models" / SHIPPED_NAME,
        NAMING,
    ),
    "multilayer_per_slide": (  # not shipped: models/per_slide_sensitivity.py
        fe.ENCODER_CACHE / "nsl_lite0_multilayer_per_slide_her2st.onnx",
        fe.FileNaming(
            family="nsl_lite0_multilayer_per_slide",
            title="NSL + frozen EfficientNet-Lite0, multi-layer features standardised per "
            "slide (HER2ST)",
            code="models/encoder_variants.py",
            choices="models/results/encoder_variants.json",
        ),
    ),
    "multilayer_floored": (  # the default since 2026-12-08: models/results/summary.md
        fe.REPO / "src" / "napari_virtual_st" / "bundled_models" / FLOORED_NAME,
        fe.FileNaming(
            family="nsl_lite0_multilayer_floored",
            title="NSL + frozen EfficientNet-Lite0, multi-layer features standardised per "
            "slide with a floored SD (HER2ST)",
            code="models/encoder_variants.py",
            choices="models/results/encoder_variants.json",
        ),
    ),
}


def multilayer_means(net: Any, x: Any) -> Any:
    """In torch, for normalised ``(N, 3, H, W)`` input: the spatial means of the outputs of
    the network's stages 3, 5 and 7 (Lite0: blocks :data:`STAGE_ENDS`) and of the last feature
    map, ``(N, 40 + 112 + 320 + 1280)`` for Lite0, in one pass (the ``multilayer`` head's
    input, in the order :func:`loader` concatenates them)."""
    import torch

    from models.workshop.efficientnet_lite import stage_ends

    ends = stage_ends(net.stages)
    x = torch.clamp(net._bn0(net._conv_stem(x)), 0.0, 6.0)
    means = []
    for b, block in enumerate(net._blocks):
        x = block(x)
        if b in ends:
            means.append(x.mean(dim=(2, 3)))
    last = torch.clamp(net._bn1(net._conv_head(x)), 0.0, 6.0)
    return torch.cat([*means, last.mean(dim=(2, 3))], dim=1)


def encode_multilayer(net: Any, tiles: NDArray[np.uint8], batch: int = 32) -> NDArray[np.float32]:
    """``(n, F)`` :func:`multilayer_means` of ``(n, s, s, 3)`` uint8 tiles."""
    import torch

    parts = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch])).permute(0, 3, 1, 2)
            parts.append(multilayer_means(net, net.normalise(x.float())).numpy())
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts).astype(np.float32)


def encode_stages(net: Any, tiles: NDArray[np.uint8], batch: int = 32) -> NDArray[np.float32]:
    """``(n, 40 + 112 + 320)`` spatial means of the stage outputs at :data:`STAGE_ENDS` of
    ``(n, s, s, 3)`` uint8 tiles (the last map's 1280 are :func:`models.frozen_encoder.encode`'s)."""
    means = encode_multilayer(net, tiles, batch)
    return means[:, :STAGE_CHANNELS] if len(means) else np.zeros((0, STAGE_CHANNELS), np.float32)


def stages_path(name: str, px: int) -> Path:
    return fe.ENCODER_CACHE / f"stages_{name}_{px}px.npz"


def extract_stages(sections: dict[str, SectionData], px: int) -> None:
    """The stage features of every section at ``px``, full resolution and degraded to A1's
    µm/px (as :func:`models.frozen_encoder.extract_features`)."""
    extract_cached(sections, px, fe.encoder, encode_stages, stages_path)


def extract_cached(
    sections: dict[str, SectionData],
    px: int,
    network: Callable[[], Any],
    encode: Callable[[Any, NDArray[np.uint8]], NDArray[np.float32]],
    path: Callable[[str, int], Path],
) -> None:
    """``encode(network(), tiles)`` of every section's tiles at ``px``, full resolution and
    degraded to A1's µm/px, cached at ``path(section, px)`` (written atomically; a section
    already cached is skipped, and the network is only made when one is not)."""
    todo = [name for name in sections if not path(name, px).is_file()]
    if not todo:
        return
    net = network()
    low_mpp = sections[TEST_SECTION].mpp
    for name in todo:
        tiles = fe.tiles_at(name, px)
        feat = encode(net, tiles)
        feat_low = encode(net, degrade(tiles, TILE_UM, low_mpp))
        path(name, px).parent.mkdir(parents=True, exist_ok=True)
        tmp = path(name, px).with_suffix(".tmp.npz")
        np.savez_compressed(tmp, feat=feat, feat_low=feat_low)
        tmp.replace(path(name, px))


def lab_statistics(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
    """``(2, 3)``: the mean and standard deviation of each CIELAB channel over every pixel of
    a section's ``(n, s, s, 3)`` tiles."""
    from skimage.color import rgb2lab

    lab = rgb2lab(tiles).reshape(-1, 3)
    return np.stack([lab.mean(axis=0), lab.std(axis=0)])


def reinhard(
    tiles: NDArray[np.uint8], source: NDArray[np.float64], target: NDArray[np.float64]
) -> NDArray[np.uint8]:
    """``tiles`` with each CIELAB channel mapped from the ``source`` statistics to the
    ``target`` ones (:func:`lab_statistics`), back in RGB (Reinhard et al. 2001)."""
    from skimage.color import lab2rgb, rgb2lab

    if len(tiles) == 0:
        return tiles
    scale = target[1] / np.maximum(source[1], 1e-6)
    lab = (rgb2lab(tiles) - source[0]) * scale + target[0]
    return np.clip(np.rint(lab2rgb(lab) * 255.0), 0, 255).astype(np.uint8)


def stain_path(name: str, px: int) -> Path:
    return fe.ENCODER_CACHE / f"stain_normalised_{name}_{px}px.npz"


def extract_stain_normalised(sections: dict[str, SectionData], px: int) -> None:
    """Encoder features of every section's tiles stain-normalised (:func:`reinhard`) to the
    mean statistics of the C sections, full resolution and degraded to A1's µm/px."""
    from models.evaluate import C_SECTIONS

    if all(stain_path(name, px).is_file() for name in sections):
        return
    stats = {name: lab_statistics(fe.tiles_at(name, px)) for name in sections}
    target = np.mean([stats[k] for k in C_SECTIONS], axis=0)
    net = fe.encoder()
    low_mpp = sections[TEST_SECTION].mpp
    for name in sections:
        if stain_path(name, px).is_file():
            continue
        tiles = reinhard(fe.tiles_at(name, px), stats[name], target)
        feat = fe.encode(net, tiles)
        feat_low = fe.encode(net, degrade(tiles, TILE_UM, low_mpp))
        tmp = stain_path(name, px).with_suffix(".tmp.npz")
        np.savez_compressed(tmp, feat=feat, feat_low=feat_low, lab_statistics=stats[name])
        tmp.replace(stain_path(name, px))


#: ``multilayer_floored``: a slide's SD of a feature is taken as at least this share of the
#: feature's SD over patient C (fixed before any score).
FLOOR_SHARE = 0.5
#: ``multilayer_floored``: the spots a run samples for the statistics (its file declares
#: this many: with the floor, 128 give what every spot gives, per_slide_sensitivity.md, in
#: half the time of 256 before the first value).
FLOOR_SPOTS = 128


def floored_standardise(features: NDArray, reference_sd: NDArray) -> NDArray[np.float64]:
    """``features`` standardised by the mean and SD of at most :data:`FLOOR_SPOTS` of them
    (evenly spread), the SD floored at :data:`FLOOR_SHARE` × ``reference_sd``."""
    from napari_virtual_st.slide_statistics import sample_evenly

    x = np.asarray(features, np.float64)
    sample = x[sample_evenly(len(x), FLOOR_SPOTS)]
    sd = np.maximum(sample.std(axis=0), FLOOR_SHARE * np.asarray(reference_sd, np.float64))
    return (x - sample.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)


def floored_loader(raw: fe.FeatureLoader) -> fe.FeatureLoader:
    """``raw``'s features standardised per section by :func:`floored_standardise`, the
    floor's reference each feature's SD over every spot of patient C at the same tile size
    and resolution (computed once per size)."""
    reference: dict[tuple[int, bool], NDArray] = {}

    def load(name: str, px: int, low: bool) -> NDArray:
        if (px, low) not in reference:
            pooled = np.concatenate([raw(k, px, low) for k in fe.C_SECTIONS])
            reference[(px, low)] = pooled.astype(np.float64).std(axis=0)
        return floored_standardise(raw(name, px, low), reference[(px, low)])

    return load


def centre_per_slide(features: NDArray) -> NDArray[np.float64]:
    """Each feature less its mean over the slide's own spots."""
    x = np.asarray(features, np.float64)
    return x - x.mean(axis=0)


def standardise_per_slide(features: NDArray) -> NDArray[np.float64]:
    """Each feature z-scored over the slide's own spots (a constant feature becomes 0)."""
    x = np.asarray(features, np.float64)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)


def loader(variant: str) -> fe.FeatureLoader:
    """The head's input of ``variant`` (a :data:`models.frozen_encoder.FeatureLoader`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")

    floored = floored_loader(loader("multilayer")) if variant == "multilayer_floored" else None

    def load(name: str, px: int, low: bool) -> NDArray:
        if floored is not None:
            return floored(name, px, low)
        if variant == "stain_normalised":
            if not stain_path(name, px).is_file():
                raise FileNotFoundError(
                    f"missing {stain_path(name, px).name}: run "
                    "python -m models.encoder_variants extract first"
                )
            with np.load(stain_path(name, px)) as z:
                return np.asarray(z["feat_low" if low else "feat"])
        feat = fe.cached_features(name, px, low)
        if variant.startswith("multilayer"):
            if not stages_path(name, px).is_file():
                raise FileNotFoundError(
                    f"missing {stages_path(name, px).name}: run "
                    "python -m models.encoder_variants extract first"
                )
            with np.load(stages_path(name, px)) as z:
                feat = np.concatenate([z["feat_low" if low else "feat"], feat], axis=1)
        if variant.endswith("centred"):
            return centre_per_slide(feat)
        return standardise_per_slide(feat) if variant.endswith("per_slide") else feat

    return load


def method_names(variant: str) -> tuple[str, str]:
    """The fold-cache names of ``variant``: the head alone and the mix with NSL."""
    return f"{fe.ENCODER_METHOD}_{variant}", f"{fe.METHOD}_{variant}"


def score(variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per variant and method (head alone, mix), ``variant − shipped`` under the protocol."""
    from models.protocol import Method, on_off

    records = []
    for variant in variants:
        for base, other in zip((fe.ENCODER_METHOD, fe.METHOD), method_names(variant), strict=True):
            measured = on_off(Method(base, base, base), Method(other, other, other), context=True)
            if measured is None:
                raise FileNotFoundError(
                    f"no fold runs of {other}: run python -m models.encoder_variants folds"
                )
            records.append({"variant": variant, "method": base, **measured})
    return records


def build(variant: str, out: Path | None = None) -> Path:
    """Write ``variant``'s combined model to ``out`` (default: its file in
    :data:`FILES`): the head fitted on all of C, tile size and NSL share as its fold
    runs chose them on all of C (``results/encoder_variants.json``), through
    :func:`models.frozen_encoder.build`. Needs no fold run: the features it reads are
    extracted first where they are not cached (~2 min), so it can be built and blind-tested
    from a fresh checkout."""
    from models.workshop.data import load_her2st

    if variant not in BUILDABLE:
        raise ValueError(f"{variant!r} is not built as a file; buildable: {', '.join(BUILDABLE)}")
    default_out, naming = FILES[variant]
    chosen = json.loads((RESULTS / "encoder_variants.json").read_text())["chosen_on_all_C"]
    px, weight = chosen[method_names(variant)[1]]
    sections = load_her2st(fe.NSL_TILE_PX, TILE_UM)
    fe.extract_features(sections, int(px))  # the head's inputs, where not cached yet
    extract_stages(sections, int(px))
    text = (
        f"spatial means of the stage outputs at blocks {', '.join(map(str, STAGE_ENDS))} "
        f"({STAGE_CHANNELS}) and of the last feature map (1280)"
    )
    return fe.build(
        int(px), float(weight), sections, out or default_out,
        load=loader(variant), features=multilayer_means, features_text=text, naming=naming,
        per_slide=variant.endswith(("per_slide", "floored")),
        std_floor=std_floor(int(px)) if variant == "multilayer_floored" else None,
        statistics_spots=FLOOR_SPOTS if variant == "multilayer_floored" else 256,
    )  # fmt: skip


def std_floor(px: int) -> NDArray[np.float32]:
    """The floored variant's SD floor at ``px``: :data:`FLOOR_SHARE` × each multi-layer
    feature's SD over every spot of patient C (what its fold runs' A1 fold used)."""
    raw = loader("multilayer")
    pooled = np.concatenate([raw(k, px, False) for k in fe.C_SECTIONS]).astype(np.float64)
    return (FLOOR_SHARE * pooled.std(axis=0)).astype(np.float32)


def markdown(records: Sequence[dict[str, Any]], chosen: dict[str, Any]) -> str:
    return on_off_markdown(
        records,
        chosen,
        title="The frozen encoder's features, on/off (issue 19 item 4)",
        intro="Produced by `python -m models.encoder_variants score` from the fold runs of "
        "`python -m models.encoder_variants folds` and `python -m models.frozen_encoder "
        "folds`. PCC-ALL over the 250-gene panel; per tile, and `_ctx` through each run's own "
        "Gaussian kernel (σ chosen nested on C as `models/protocol.py` does); 95 % paired "
        "spot-bootstrap intervals; A1 = the fold run on C2–C6 (its choices made on C). "
        "`lite0` is the ridge on the frozen encoder alone, `nsl_lite0` its mix with NSL "
        "(the shipped default); each variant's tile size, penalty and NSL share are chosen "
        "nested as the shipped method's.",
        columns=("shipped", "variant"),
    )


def on_off_markdown(
    records: Sequence[dict[str, Any]],
    chosen: dict[str, Any],
    *,
    title: str,
    intro: str,
    columns: tuple[str, str],
    after: Sequence[str] = (),
) -> str:
    """A results table of on/off records (:func:`models.protocol.on_off`): per variant and
    method, LOSO-C and A1, per tile and with context; the choices on all of C after it."""
    from models.protocol import on_off_cells, on_off_rows, test_sets_text

    lines = [
        f"# {title}",
        "",
        intro,
        "",
        test_sets_text(records[0]["resolution_um_per_px"], records[0]["n_boot"]),
        "",
        f"| variant | method | setting | labels | {columns[0]} | {columns[1]} | difference "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        for setting, kind, r in on_off_rows(rec, ("loso_C", "A1", "loso_C_ctx", "A1_ctx")):
            lines.append(
                f"| {rec['variant']} | {rec['method']} | {setting} | {kind} | "
                + on_off_cells(r["base"], r["other"], r["other_minus_base"])
            )
    lines += ["", "Choices on all of C (what A1 and a file built from them would get):", ""]
    lines += [f"- {name}: {value}" for name, value in chosen.items()]
    lines += [line for text in after for line in ("", text)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from models.workshop.data import load_her2st

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("extract", "folds", "score", "build"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--out",
        type=Path,
        help="build: the file to write (default: its file in FILES, bundled where it ships)",
    )
    args = parser.parse_args(argv)
    if args.command == "build":
        if len(args.variants) != 1:
            parser.error("build needs one --variants")
        from models.evaluate import evaluate_onnx

        out = build(args.variants[0], args.out)
        raw = evaluate_onnx(out)["raw"]  # the file itself on A1, per tile (no context)
        print(f"{out}: A1 PCC-ALL per tile {raw['PCC-ALL']:.4f} (raw labels)")
        return 0
    path = RESULTS / "encoder_variants.json"
    if args.command == "score":
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        records = score(args.variants)
        chosen = earlier.get("chosen_on_all_C", {})
        path.write_text(
            json.dumps({"chosen_on_all_C": chosen, "records": records}, indent=1) + "\n"
        )
        (RESULTS / "encoder_variants.md").write_text(markdown(records, chosen))
        print(markdown(records, chosen))
        return 0
    sections = load_her2st(fe.NSL_TILE_PX, TILE_UM)
    if args.command == "extract":
        for px in fe.TILE_SIZES:
            start = time.perf_counter()
            extract_stages(sections, px)
            extract_stain_normalised(sections, px)
            print(f"stage and stain-normalised features at {px} px "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        return 0
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    chosen = earlier.get("chosen_on_all_C", {})
    for variant in args.variants:
        names = method_names(variant)
        record = fe.write_folds(sections, loader(variant), names)
        chosen.update({name: record[name]["chosen"]["all_C"] for name in names})
        print(variant, {name: record[name]["chosen"] for name in names}, flush=True)
    path.write_text(json.dumps({**earlier, "chosen_on_all_C": chosen}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
