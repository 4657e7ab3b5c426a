"""Which pooled colour statistics carry the signal? Ridge on frozen (Ruifrok) stain features.

    python -m models.nsl.pooling_diagnostic [--markdown models/results/nsl_pooling_diagnostic.md]

A diagnostic, not a model: every row is the ridge baseline's own procedure (penalty chosen by
inner leave-one-section-out) on a different per-tile feature set, scored on the harness's
splits and panel. It asks why NSL's optical-density pooling trailed the ridge-colour baseline,
and it was run on LOSO within patient C (the selection criterion) with A1 reported beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.evaluate import N_GENES, TILE_PX, TILE_UM, splits
from models.nsl.model import ruifrok_deconvolution
from models.workshop.baselines import RidgeColour, colour_statistics
from models.workshop.data import gene_panel, load_her2st
from models.workshop.metrics import neighbourhood_mean, pearson_per_gene

Features = Callable[[NDArray[np.uint8]], NDArray[np.float64]]


def _od(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
    return -np.log((tiles.reshape(len(tiles), -1, 3).astype(np.float64) + 1.0) / 256.0)


def _mean_std(values: NDArray[np.float64], weights: NDArray[np.float64]) -> list[NDArray]:
    mean = np.einsum("np,nps->ns", weights, values)
    centred = values - mean[:, None, :]
    return [mean, np.sqrt(np.einsum("np,nps->ns", weights, centred**2))]


def stain_features(n_stains: int, *, signed: bool, light: bool, tissue_only: bool) -> Features:
    """Mean and std of Ruifrok stain concentrations (and of their transmitted light)."""

    def features(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
        od = _od(tiles)
        conc = od @ ruifrok_deconvolution(n_stains).astype(np.float64)
        if not signed:
            conc = np.maximum(conc, 0.0)
        mask = (od.sum(-1) > 0.15) if tissue_only else np.ones(od.shape[:2], bool)
        weights = mask / np.maximum(mask.sum(1, keepdims=True), 1)
        out = _mean_std(conc, weights)
        if light:
            out += _mean_std(np.exp(-conc), weights)
        return np.concatenate(out, axis=1)

    return features


def od_channel_features(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Mean and std of each RGB channel's optical density over the tile."""
    od = _od(tiles)
    return np.concatenate([od.mean(1), od.std(1)], axis=1)


FEATURE_SETS: dict[str, Features] = {
    "colour statistics (the baseline, 13)": colour_statistics,
    "OD per channel, mean + std (6)": od_channel_features,
    "Ruifrok 2 stains, clipped, tissue pixels (4)": stain_features(
        2, signed=False, light=False, tissue_only=True
    ),
    "Ruifrok 3 stains, clipped, tissue pixels (6)": stain_features(
        3, signed=False, light=False, tissue_only=True
    ),
    "Ruifrok 3 stains, signed, all pixels (6)": stain_features(
        3, signed=True, light=False, tissue_only=False
    ),
    "Ruifrok 2 stains, signed, + transmitted light, all pixels (8)": stain_features(
        2, signed=True, light=True, tissue_only=False
    ),
    "Ruifrok 3 stains, signed, + transmitted light, all pixels (12)": stain_features(
        3, signed=True, light=True, tissue_only=False
    ),
}


def run(sections: dict) -> list[tuple[str, float, float, float]]:
    """(feature set, LOSO-C PCC-ALL raw, A1 raw, A1 smoothed) for every feature set."""
    rows = []
    for name, features in FEATURE_SETS.items():
        scores = {}
        for protocol in ("loso_C", "cross_patient"):
            raw, smooth = [], []
            for _fold, train, test in splits(sections, protocol):
                genes = gene_panel(train, N_GENES, test.measured.genes)
                pred = RidgeColour(features).fit(train, genes).predict(test.tiles)
                true = test.targets(genes)
                raw.append(pearson_per_gene(pred, true).mean())
                smooth.append(
                    pearson_per_gene(pred, neighbourhood_mean(true, test.array_rc)).mean()
                )
            scores[protocol] = (float(np.mean(raw)), float(np.mean(smooth)))
        rows.append((name, scores["loso_C"][0], *scores["cross_patient"]))
        print(f"{name}: LOSO-C {rows[-1][1]:.4f}, A1 {rows[-1][2]:.4f} / {rows[-1][3]:.4f}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    rows = run(load_her2st(TILE_PX, TILE_UM))
    if args.markdown:
        lines = [
            "# Ridge on frozen pooled colour features (PCC-ALL; `models/nsl/pooling_diagnostic.py`)",
            "",
            "| features | LOSO-C raw (selection) | A1 raw | A1 smoothed |",
            "|---|---|---|---|",
            *(f"| {n} | {a:.4f} | {b:.4f} | {c:.4f} |" for n, a, b, c in rows),
        ]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
