"""An attention stage over neighbouring spots (issue 19 item 3, TRIPLEX / mclSTExp-style),
measured on/off against the default's own fold runs.

    python -m models.attention_context   # fold caches nsl_lite0_multilayer_{attention,own}__*
                                         # -> models/results/attention_context.json, .md

``feature_context.py`` reads a spot's neighbourhood through fixed averages (a Gaussian or
rings) and a per-gene ridge; here the neighbourhood is read by attention, as TRIPLEX (target
spot + neighbours) and mclSTExp (spots as tokens with their positions) do:

- each spot is a token: the default's frozen-encoder features (multi-layer means, 160 px, as
  ``nsl_lite0_multilayer_her2st`` reads them) reduced to :data:`SETTINGS` ``pca`` principal
  components fitted on the fold's training spots (standardised there), embedded by one layer;
- a spot attends (4 heads) over the tokens of the spots within ``radius_um`` of it, itself
  included, each key and value given its offset in µm through a small MLP;
- one linear layer maps [own token, attended] to the 250 genes (z-scored over the training
  spots), de-standardised and clamped at 0; squared error, AdamW, fixed epochs.

The settings were fixed before any score and nothing was tuned (no inner folds). ``own`` is the
same network whose spots attend to themselves only (no neighbour), the control that says what
the neighbours add to this learner. Each replaces the default's per-gene ridge and is mixed with
NSL's held-out predictions (the default's fold runs' NSL on the 160 px tile) at the default's
share, 0.6, so the paired difference to the default's fold runs compares the heads. Per fold
(leave one C section out; C2–C6 → A1) one training on the training sections' spots, seed 0,
one torch thread; the held-out section is never read in training. Scored with
``protocol.on_off`` (per tile and through each run's own nested Gaussian).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

RESULTS = Path(__file__).resolve().parent / "results"
BASE = "nsl_lite0_multilayer"
METHODS = {"attention": f"{BASE}_attention", "own": f"{BASE}_own"}
SETTINGS: dict[str, Any] = {
    "tile_px": 160,
    "pca": 64,
    "width": 64,
    "heads": 4,
    "radius_um": 450.0,
    "epochs": 300,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "dropout": 0.1,
    "encoder_weight": 0.6,
}


def neighbourhoods(xy_um: NDArray, radius_um: float) -> tuple[NDArray, NDArray, NDArray]:
    """For each spot: the indices of the spots within ``radius_um`` (itself first), their
    offsets in µm and a padding mask, each padded to the largest neighbourhood."""
    d = np.hypot(*(xy_um[:, None, :] - xy_um[None, :, :]).transpose(2, 0, 1))
    near = [
        np.concatenate([[i], np.flatnonzero((d[i] <= radius_um) & (d[i] > 0))])
        for i in range(len(xy_um))
    ]
    k = max(len(n) for n in near)
    index = np.zeros((len(xy_um), k), np.int64)
    pad = np.ones((len(xy_um), k), bool)
    for i, n in enumerate(near):
        index[i, : len(n)], pad[i, : len(n)] = n, False
    offsets = (xy_um[index] - xy_um[:, None, :]) * ~pad[..., None]
    return index, offsets.astype(np.float32), pad


def network(n_in: int, n_genes: int) -> Any:
    """The attention stage (torch)."""
    import torch
    from torch import nn

    s = SETTINGS

    class AttentionStage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(
                nn.Dropout(s["dropout"]), nn.Linear(n_in, s["width"]), nn.GELU()
            )
            self.position = nn.Sequential(nn.Linear(2, 32), nn.GELU(), nn.Linear(32, s["width"]))
            self.attend = nn.MultiheadAttention(
                s["width"], s["heads"], dropout=s["dropout"], batch_first=True
            )
            self.head = nn.Linear(2 * s["width"], n_genes)

        def forward(self, tokens: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor,
                    pad: torch.Tensor) -> torch.Tensor:  # fmt: skip
            own = self.embed(tokens)
            keys = own[index] + self.position(offsets / 200.0)
            query = own[:, None, :]
            attended, _ = self.attend(query, keys, keys, key_padding_mask=pad)
            return self.head(torch.cat([own, attended[:, 0]], dim=1))

    return AttentionStage()


def fit_predict(
    train: Sequence[tuple[NDArray, NDArray, NDArray]],
    test: tuple[NDArray, NDArray],
    own_only: bool,
) -> NDArray[np.float32]:
    """Train on ``train`` = [(features, xy µm, labels)] and predict ``test`` = (features, xy
    µm); the PCA and the label scaling come from the training spots only."""
    import torch

    torch.manual_seed(0)
    x_all = np.concatenate([f for f, _, _ in train])
    mu, sd = x_all.mean(0), x_all.std(0) + 1e-6
    _, _, vt = np.linalg.svd((x_all - mu) / sd, full_matrices=False)
    basis = vt[: SETTINGS["pca"]].T

    def graph(features: NDArray, xy: NDArray) -> list[torch.Tensor]:
        radius = 0.0 if own_only else SETTINGS["radius_um"]
        index, offsets, pad = neighbourhoods(xy, radius)
        tokens = ((features - mu) / sd) @ basis
        return [torch.from_numpy(a) for a in (tokens.astype(np.float32), index, offsets, pad)]

    y_all = np.concatenate([y for _, _, y in train])
    y_mu, y_sd = y_all.mean(0), y_all.std(0) + 1e-6
    sections = [(graph(f, xy), torch.from_numpy(((y - y_mu) / y_sd).astype(np.float32)))
                for f, xy, y in train]  # fmt: skip
    net = network(SETTINGS["pca"], y_all.shape[1])
    opt = torch.optim.AdamW(
        net.parameters(), lr=SETTINGS["lr"], weight_decay=SETTINGS["weight_decay"]
    )
    net.train()
    for _ in range(SETTINGS["epochs"]):
        for inputs, target in sections:  # one step per training section (its whole graph)
            opt.zero_grad()
            loss = torch.mean((net(*inputs) - target) ** 2)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        z = net(*graph(*test)).numpy()
    return np.maximum(z * y_sd + y_mu, 0.0).astype(np.float32)


def write_folds() -> None:
    """Both networks' held-out predictions, mixed with NSL, as fold caches."""
    import torch

    from models import encoder_variants as ev
    from models import frozen_encoder as fe
    from models.folds import FOLDS, split
    from models.workshop.data import load_her2st

    torch.set_num_threads(1)
    sections = load_her2st(fe.NSL_TILE_PX, ev.TILE_UM)
    load = ev.loader("multilayer")
    px, w = SETTINGS["tile_px"], SETTINGS["encoder_weight"]

    def spots(s: Any) -> tuple[NDArray, NDArray]:
        return load(s.name, px, False), s.measured.xy_fullres_px * s.mpp

    for fold in FOLDS:
        train, test = split(sections, fold)
        with np.load(fe.nsl_path(fold)) as z:
            genes = [str(g) for g in z["genes"]]
            nsl = np.maximum(z[f"pooled_{px}"], 0.0)
        labelled = [(*spots(s), s.targets(genes)) for s in train]
        for kind, method in METHODS.items():
            head = fit_predict(labelled, spots(test), own_only=kind == "own")
            pred = fe.combine(nsl, head, w)
            fe._save(method, fold, genes, pred, pred, tile_px=px, weight=w)
            print(f"{method} {fold}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from models.protocol import Method, on_off, on_off_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--score-only", action="store_true", help="use the fold caches")
    args = parser.parse_args(argv)
    if not args.score_only:
        write_folds()
    records = {}
    pairs = {
        "attention − default": (BASE, METHODS["attention"]),
        "own-tile control − default": (BASE, METHODS["own"]),
        "attention − own-tile control": (METHODS["own"], METHODS["attention"]),
    }
    text = []
    for title, (a, b) in pairs.items():
        record = on_off(Method(a, a, a), Method(b, b, b), context=True)
        if record is None:
            raise FileNotFoundError(f"no fold runs of {a} and {b}")
        records[title] = record
        text.append(on_off_table(f"Attention stage: {title}", "", record, a, b))
    payload = {"settings": SETTINGS, "records": records}
    (RESULTS / "attention_context.json").write_text(json.dumps(payload, indent=1) + "\n")
    markdown = (
        "Produced by `python -m models.attention_context` (module docstring: what; settings "
        f"fixed before any score: {json.dumps(SETTINGS)}).\n\n" + "\n".join(text)
    )
    (RESULTS / "attention_context.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
