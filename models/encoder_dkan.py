"""The default plus DKAN-style's per-gene head, measured on/off (issue 19; not shipped).

    python -m models.feature_context extract --methods dkan   # DKAN-style's features per fold
    python -m models.encoder_variants folds --variants multilayer   # the default's fold runs
    python -m models.encoder_dkan   # -> fold caches nsl_lite0_multilayer_dkan__*,
                                    #    results/encoder_dkan.json, .md

The question the model cards left open ("NSL + DKAN head + frozen encoder in one graph"): does
DKAN-style, which fine-tunes EfficientNet-Lite0 on 64 px tiles (1.72 µm/px), add anything to
the default, which reads a frozen ImageNet EfficientNet-Lite0 on 160 px tiles beside NSL?

The method: ``(1 − u) · the default's fold run + u · DKAN-style's per-gene head`` (the head of
``nsl_dkan_her2st``, fitted per fold on the fold's training sections, :func:`models.ensemble.dkan_head`),
clamped at 0. The share ``u`` is chosen exactly as ``models/ensemble.py`` chooses its DKAN
weight (:func:`models.ensemble.nested_mix`): for held-out C section k, the best mean raw
PCC-ALL over the *other* sections' held-out predictions; A1 gets the share chosen on all five.
It is then paired against the default's own fold runs with :func:`models.protocol.on_off`
(per tile and with each run's own nested Gaussian kernel).

As one file it would run two encoders per tile (DKAN-style at 64 px beside Lite0 at 160 px);
nothing here builds it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import ensemble
from models.evaluate import C_SECTIONS, TEST_SECTION
from models.folds import FOLDS, fold_path
from models.workshop.data import SectionData

RESULTS = Path(__file__).resolve().parent / "results"
#: The default's fold runs (``models/encoder_variants.py``) and this method's.
BASE = "nsl_lite0_multilayer"
METHOD = "nsl_lite0_multilayer_dkan"


def mix_folds(
    base: dict[str, NDArray],
    dkan: dict[str, NDArray],
    labels: dict[str, NDArray],
) -> tuple[dict[str, NDArray[np.float32]], dict[str, float]]:
    """Each fold's mix with DKAN-style's head and the share it got: a C section of ``labels``
    the share chosen on the others' labels (its own never read), every other fold (A1) the
    share chosen on all of ``labels``."""
    on_c = [k for k in base if k in labels]
    preds, shares = ensemble.nested_mix(
        {k: base[k] for k in on_c}, {k: dkan[k] for k in on_c}, labels
    )
    all_c = ensemble.choose_weight({k: base[k] for k in on_c}, {k: dkan[k] for k in on_c}, labels)
    for k in base:
        if k not in labels:
            shares[k] = all_c
            preds[k] = ensemble.combine(base[k], dkan[k], all_c)
    return preds, shares


def _inputs(
    sections: dict[str, SectionData],
) -> tuple[dict[str, list[str]], dict[str, dict[str, NDArray]]]:
    """Per fold: the genes, and the default's and DKAN-style head's held-out predictions at
    full resolution and on the tiles degraded to A1's µm/px (A1's own tiles for A1)."""
    from models import feature_context as fc

    genes: dict[str, list[str]] = {}
    runs: dict[str, dict[str, NDArray]] = {"base": {}, "base_low": {}, "dkan": {}, "dkan_low": {}}
    for k in FOLDS:
        if not fold_path(BASE, k).is_file():
            raise FileNotFoundError(
                f"no fold run {fold_path(BASE, k).name}: run "
                "python -m models.encoder_variants folds --variants multilayer first"
            )
        genes[k], head, test = ensemble.dkan_head(k, sections)
        with np.load(fold_path(BASE, k)) as z:
            if [str(g) for g in z["genes"]] != genes[k]:
                raise ValueError(f"fold {k}: the default's and DKAN-style's gene panels differ")
            runs["base"][k], runs["base_low"][k] = z["pred"], z["pred_lowres"]
        runs["dkan"][k] = fc.predict_head(head, test)
        runs["dkan_low"][k] = runs["dkan"][k]
        if k != TEST_SECTION:
            with np.load(fc.feature_path(ensemble.DKAN_METHOD, k)) as z:
                low = fc.SectionFeatures(test.name, z[f"feat_low_{k}"], test.xy_um, None)
            runs["dkan_low"][k] = fc.predict_head(head, low)
    return genes, runs


def write_folds(sections: dict[str, SectionData]) -> dict[str, float]:
    """This method's fold caches (C sections and A1); returns the share each fold got."""
    genes, runs = _inputs(sections)
    labels = {k: sections[k].targets(genes[k]) for k in C_SECTIONS}
    preds, shares = mix_folds(runs["base"], runs["dkan"], labels)
    for k in FOLDS:
        low = ensemble.combine(runs["base_low"][k], runs["dkan_low"][k], shares[k])
        out = fold_path(METHOD, k)
        tmp = out.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp, genes=np.array(genes[k]), pred=preds[k], pred_lowres=low, weight=shares[k]
        )
        os.replace(tmp, out)
    return shares


def markdown(record: dict[str, Any]) -> str:
    from models.protocol import on_off_table

    shares = ", ".join(f"{k} {v:g}" for k, v in record["dkan_share"].items())
    intro = (
        "Produced by `python -m models.encoder_dkan` from the fold runs of the default "
        f"(`{BASE}`) and of DKAN-style (`feature_context` features, its per-gene head). "
        f"DKAN-style's share chosen nested: {shares}."
    )
    return on_off_table(
        "The default plus DKAN-style's per-gene head, on/off (issue 19)",
        intro,
        record,
        "the default",
        "with DKAN-style's head",
    )


def main(argv: Sequence[str] | None = None) -> int:
    from models.evaluate import TILE_PX, TILE_UM
    from models.protocol import Method, on_off
    from models.workshop.data import load_her2st

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    shares = write_folds(load_her2st(TILE_PX, TILE_UM))
    measured = on_off(Method(BASE, BASE, BASE), Method(METHOD, METHOD, METHOD), context=True)
    if measured is None:  # write_folds writes every fold, so only a vanished cache gets here
        raise FileNotFoundError(f"no fold runs of {BASE} and {METHOD} to pair")
    record = {"dkan_share": shares, **measured}
    (RESULTS / "encoder_dkan.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "encoder_dkan.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
