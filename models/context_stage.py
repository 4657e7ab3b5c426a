"""The learnt context stage (issue 19 item 3): per-gene ring weights, fitted nested within C.

Called by ``models/protocol.py`` (``python -m models.protocol`` regenerates its numbers). The
stage is ``napari_virtual_st.context``'s ``"rings"`` kind: a spot's value of gene ``g`` is the
mean of its own and its neighbours' per-tile values, each neighbour weighted by ``a_bg``, the
weight of its distance ring ``b`` for that gene (ring 0 = the spot itself; rings to
:data:`RING_EDGES_UM`, between the distances of the 200 µm ST lattice: 200, 283, 400, 447 µm).
The fixed Gaussian kernel is the case ``a_bg = exp(-d_b^2 / 2σ^2)`` for every gene.

Fitting (:func:`fit_rings`), on held-out (LOSO) predictions and their labels of the training
sections only:

- per spot, the mean prediction of each ring; only spots whose rings are all full (the
  interior, where the stage is exactly a convex combination of the ring means: ``c_b = a_b n_b
  / sum a n`` with ``n_b`` the full ring's count) are fitted;
- per gene, the non-negative combination ``c`` of the ring means that best predicts the label
  by least squares (NNLS), within each section (both centred per section: PCC is per
  section, so neither a section's offset nor the intercept is the stage's business), then
  ``c / sum(c)`` (scale does not change a correlation and keeps the values on the model's
  scale); a gene that no ring predicts gets its own value (``c = e_0``);
- ``"shared"``: one ``c`` for every gene (each gene's rows scaled by its label's SD per section,
  as PCC-ALL weighs genes alike); fewer parameters, less to overfit.

Run alone (``python -m models.context_stage``) it scores the stage for the methods with fold
runs on at least :data:`MIN_SECTIONS` C sections (on those sections) and writes ``results/context_stage.json`` / ``.md``, without touching
``results/protocol.*`` (which ``python -m models.protocol`` regenerates, this stage included,
once every method's folds are run).

Nested, as the Gaussian's σ is chosen (:func:`nested`): for held-out section k, the variant
(per-gene or shared) is the one with the best mean raw PCC-ALL over inner leave-one-out folds
of the other sections; it is then fitted on all the other sections and applied to k; k's labels
are never used. What would ship is chosen and fitted the same way on all five C sections and
applied to A1 (which never fits or chooses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import minimize

from napari_virtual_st.context import RingWeights, SpotContext, apply_context, context_weights

#: Outer ring edges (µm): rings of 200, 283, 400 and 447 µm on the 200 µm ST lattice (the
#: edges lie between lattice distances, so pixel rounding never moves a spot across one); the
#: last is the widest Gaussian's radius chosen so far (σ 200 µm × 2.5).
RING_EDGES_UM = (240.0, 340.0, 420.0, 500.0)
VARIANTS = ("per_gene", "shared")
#: Bound of a neighbour ring's weight (the spot itself weighs 1): 100 is "ignore itself".
MAX_RING_WEIGHT = 100.0
MAX_ITER = 500
#: Fewest C sections with fold runs to score a method on (inner folds need two to fit on).
MIN_SECTIONS = 3


def ring_means(
    pred: NDArray[np.floating], xy_um: NDArray[np.floating], edges: Sequence[float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(R, n, G)`` mean prediction of each ring around each spot (NaN for an empty ring)
    and ``(R, n)`` how many spots each ring holds (``R = len(edges) + 1``, ring 0 = itself)."""
    n, g = pred.shape
    unit = SpotContext.rings(edges, np.ones((g, len(edges) + 1)))
    weights = context_weights(xy_um, unit)
    assert isinstance(weights, RingWeights)
    rings = weights.rings
    means = np.empty((len(edges) + 1, n, g))
    counts = np.empty((len(edges) + 1, n))
    for b in range(len(edges) + 1):
        member = sparse.csr_matrix(
            ((rings.data == b + 1).astype(np.float64), rings.indices, rings.indptr), shape=(n, n)
        )
        counts[b] = np.asarray(member.sum(axis=1)).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            means[b] = np.asarray(member @ pred.astype(np.float64)) / counts[b][:, None]
    return means, counts


class _Section:
    """A training section ready to fit: each ring's sum and count around every spot."""

    def __init__(
        self, pred: NDArray, labels: NDArray, xy_um: NDArray, edges: Sequence[float]
    ) -> None:
        means, counts = ring_means(pred, xy_um, edges)
        self.own = pred.astype(np.float64)
        self.sums = np.nan_to_num(means[1:]) * counts[1:, :, None]  # (B, n, G)
        self.counts = counts[1:]  # (B, n)
        y = labels.astype(np.float64)
        self.y = y - y.mean(axis=0)
        sd = self.y.std(axis=0)
        #: (shared variant) genes weigh alike, as in PCC-ALL
        self.scale = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 0)

    def values(self, a: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
        """The stage's values ``(n, G)`` for neighbour-ring weights ``a`` ``(B, G)`` (itself
        weighs 1), and their denominator ``(n, G)``."""
        num = self.own + np.einsum("bng,bg->ng", self.sums, a)
        den = 1.0 + np.einsum("bn,bg->ng", self.counts, a)
        return num / den, den


def _fit(
    sections: Sequence[_Section], shared: bool, n_rings: int, start: NDArray | None = None
) -> NDArray[np.float64]:
    """Neighbour-ring weights ``(B, G)`` (itself weighs 1) that best fit, per gene, the
    centred labels by a slope β_g times the centred stage values, pooled over the sections.

    β is profiled out (its least-squares value for the current weights), so what is fitted
    is the correlation, not the scale; L-BFGS-B on the weights, bounded to
    ``[0, MAX_RING_WEIGHT]``, with the exact gradient (envelope theorem: β's own derivative
    is 0 at its optimum)."""
    n_genes = sections[0].y.shape[1]
    weights = [s.scale if shared else np.ones(n_genes) for s in sections]

    def unpack(x: NDArray) -> NDArray:
        return np.tile(x[:, None], (1, n_genes)) if shared else x.reshape(n_rings, n_genes)

    def cost_and_gradient(x: NDArray) -> tuple[float, NDArray]:
        a = unpack(x)
        fitted = [s.values(a) for s in sections]
        centred = [f - f.mean(axis=0) for f, _ in fitted]
        num = sum(
            ((s.y * fc) * w * w).sum(axis=0)
            for s, fc, w in zip(sections, centred, weights, strict=True)
        )
        den = sum(((fc * fc) * w * w).sum(axis=0) for fc, w in zip(centred, weights, strict=True))
        beta = np.divide(num, den, out=np.zeros(n_genes), where=den > 0)
        cost = 0.0
        grad = np.zeros((n_rings, n_genes))
        for s, (f, d), fc, w in zip(sections, fitted, centred, weights, strict=True):
            r = (s.y - beta * fc) * w * w  # (the residual times its weight, for the gradient)
            cost += float(((s.y - beta * fc) ** 2 * w * w).sum())
            for b in range(n_rings):
                df = (s.sums[b] - f * s.counts[b][:, None]) / d  # ∂f/∂a_bg; r sums to 0
                grad[b] -= 2.0 * beta * (r * df).sum(axis=0)
        return cost, (grad.sum(axis=1) if shared else grad.ravel())

    n = n_rings if shared else n_rings * n_genes
    fit = minimize(
        cost_and_gradient, np.full(n, 0.3), jac=True, method="L-BFGS-B",
        bounds=[(0.0, MAX_RING_WEIGHT)] * n, options={"maxiter": MAX_ITER},
    )  # fmt: skip
    return unpack(np.clip(fit.x, 0.0, MAX_RING_WEIGHT))


def _fit_per_gene(
    sections: Sequence[_Section], start: NDArray[np.float64], iterations: int = 40
) -> NDArray[np.float64]:
    """Per gene, the same fit as :func:`_fit` with its own weights: Levenberg–Marquardt on
    (β_g, a_g), every gene at once (a 5×5 system each), weights projected onto
    ``[0, MAX_RING_WEIGHT]``; a gene's step is kept only when it lowers that gene's cost."""
    n_rings, n_genes = start.shape
    a = start.copy()
    beta = np.ones(n_genes)
    damping = np.full(n_genes, 1e-3)

    def cost(a: NDArray, beta: NDArray) -> NDArray:
        total = np.zeros(n_genes)
        for s in sections:
            f, _ = s.values(a)
            total += ((s.y - beta * (f - f.mean(axis=0))) ** 2).sum(axis=0)
        return total

    current = cost(a, beta)
    for _ in range(iterations):
        jtj = np.zeros((n_genes, n_rings + 1, n_rings + 1))
        jtr = np.zeros((n_genes, n_rings + 1))
        for s in sections:
            f, den = s.values(a)
            fc = f - f.mean(axis=0)
            r = s.y - beta * fc
            cols = [fc]  # ∂(β fc)/∂β
            for b in range(n_rings):
                df = (s.sums[b] - f * s.counts[b][:, None]) / den
                cols.append(beta * (df - df.mean(axis=0)))
            j = np.stack(cols, axis=2)  # (n, G, 1 + B)
            jtj += np.einsum("ngp,ngq->gpq", j, j)
            jtr += np.einsum("ngp,ng->gp", j, r)
        diag = np.einsum("gpp->gp", jtj)
        system = jtj + (damping[:, None] * (diag + 1e-12))[:, :, None] * np.eye(n_rings + 1)
        step = np.linalg.solve(system, jtr[:, :, None])[:, :, 0]
        beta_new = beta + step[:, 0]
        a_new = np.clip(a + step[:, 1:].T, 0.0, MAX_RING_WEIGHT)
        trial = cost(a_new, beta_new)
        better = trial < current
        a[:, better], beta[better], current[better] = (
            a_new[:, better],
            beta_new[better],
            trial[better],
        )
        damping = np.where(better, damping / 3.0, damping * 10.0)
    return a


def fit_rings(
    preds: Sequence[NDArray],
    labels: Sequence[NDArray],
    xy_um: Sequence[NDArray],
    variant: str = "per_gene",
    edges: Sequence[float] = RING_EDGES_UM,
) -> SpotContext:
    """A rings kernel fitted on training sections (module doc).

    Parameters
    ----------
    preds, labels, xy_um
        Per training section: held-out per-tile predictions ``(n, G)``, their labels ``(n,
        G)`` and the spot centres ``(n, 2)`` in µm.
    variant
        ``"per_gene"`` (a weight per ring and gene) or ``"shared"`` (one set for all genes).
    edges
        The rings' outer edges, µm.

    Returns
    -------
    SpotContext
        ``kind="rings"``, one row of coefficients per gene (itself 1, then each ring), in
        the predictions' gene order.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    sections = [_Section(p, y, xy, edges) for p, y, xy in zip(preds, labels, xy_um, strict=True)]
    # one set for all genes first: the per-gene fit starts there (fewer iterations)
    a = _fit(sections, True, len(edges))
    if variant == "per_gene":
        a = _fit_per_gene(sections, a)
    coefficients = np.vstack([np.ones((1, a.shape[1])), a]).T
    return SpotContext.rings(edges, np.round(coefficients, 6))


def apply_rings(pred: NDArray, xy_um: NDArray, context: SpotContext) -> NDArray[np.float32]:
    """The engine's values for a section (the one implementation, ``apply_context``)."""
    return apply_context(pred, context_weights(xy_um, context))


def _pcc_all(pred: NDArray, true: NDArray) -> float:
    from models.workshop.metrics import pearson_per_gene

    return float(pearson_per_gene(pred, true).mean())


def choose_and_fit(
    preds: Mapping[str, NDArray],
    labels: Mapping[str, NDArray],
    xy_um: Mapping[str, NDArray],
    sections: Sequence[str],
) -> tuple[str, SpotContext, dict[str, float]]:
    """The variant with the best mean raw PCC-ALL over inner leave-one-out folds of
    ``sections``, fitted on all of them; and each variant's inner score."""
    inner: dict[str, float] = {}
    for variant in VARIANTS:
        scores = []
        for j in sections:
            rest = [k for k in sections if k != j]
            ctx = fit_rings(
                [preds[k] for k in rest], [labels[k] for k in rest], [xy_um[k] for k in rest],
                variant,
            )  # fmt: skip
            scores.append(_pcc_all(apply_rings(preds[j], xy_um[j], ctx), labels[j]))
        inner[variant] = round(float(np.mean(scores)), 4)
    best = max(VARIANTS, key=lambda v: inner[v])
    ctx = fit_rings(
        [preds[k] for k in sections], [labels[k] for k in sections],
        [xy_um[k] for k in sections], best,
    )  # fmt: skip
    return best, ctx, inner


def nested(
    preds: Mapping[str, NDArray], labels: Mapping[str, NDArray], xy_um: Mapping[str, NDArray]
) -> tuple[dict[str, NDArray], dict[str, Any], SpotContext]:
    """Held-out contextual predictions of every section (fitted without its labels), what was
    chosen per outer fold, and the kernel chosen and fitted on all sections (to ship)."""
    out: dict[str, NDArray] = {}
    record: dict[str, Any] = {}
    sections = list(preds)
    for k in sections:
        variant, ctx, inner = choose_and_fit(preds, labels, xy_um, [j for j in sections if j != k])
        out[k] = apply_rings(preds[k], xy_um[k], ctx)
        record[k] = {"variant": variant, "inner_raw_pcc_all": inner}
    variant, final, inner = choose_and_fit(preds, labels, xy_um, sections)
    record["all_C"] = {"variant": variant, "inner_raw_pcc_all": inner}
    return out, record, final


WEIGHTS_KEY = "weight_of_each_ring_median_over_genes (itself 1)"


def coefficient_summary(context: SpotContext) -> dict[str, Any]:
    """The fitted kernel for reading: each neighbour ring's weight (itself = 1) over genes."""
    a = np.asarray(context.coefficients)[:, 1:]
    return {
        "ring_edges_um": list(context.ring_edges_um),
        WEIGHTS_KEY: np.round(np.median(a, axis=0), 3).tolist(),
        "weight_of_first_ring_quartiles": np.round(
            np.quantile(a[:, 0], [0.25, 0.5, 0.75]), 3
        ).tolist(),
        "genes_on_their_own_value_only": int(np.sum(a.max(axis=1) < 1e-3)),
    }


def markdown(out: dict[str, Any]) -> str:
    """``results/context_stage.md`` from the record :func:`main` writes to its JSON."""
    from models.protocol import learned_markdown, test_sets_text

    lines = [
        test_sets_text(out["resolution_um_per_px"], out["n_boot"]),
        "",
        *learned_markdown(out),
    ]
    lines += [
        "",
        "Gaussian σ (µm) chosen per outer fold (on all C): "
        + "; ".join(
            f"{r['label']}: {', '.join(str(v) for v in r['gaussian_sigma_per_outer_fold'].values())}"
            f" ({r['gaussian_sigma_on_all_C']})"
            for r in out["methods"].values()
        ),
        f"Not run (fold predictions missing): {', '.join(out['not_run']) or 'none'}.",
        "",
        "Weights fitted on all C (itself = 1), median over genes, per ring to "
        + ", ".join(f"{e:g}" for e in RING_EDGES_UM)
        + " µm (a Gaussian of σ 100 µm within 250 µm: 0.135, 0, 0, 0):",
        *(
            f"- {r['label']}: {r['learned_context']['fitted_on_all_C'][WEIGHTS_KEY]} "
            f"(LOSO-C sections: {', '.join(r['loso_sections'])})"
            for r in out["methods"].values()
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Score the stage (module doc) for the methods whose fold runs are all there."""
    import argparse
    import json
    from pathlib import Path

    from models.evaluate import C_SECTIONS, TEST_SECTION, TILE_PX, TILE_UM
    from models.folds import fold_path
    from models.protocol import (
        METHODS,
        N_BOOT,
        REPO,
        context_method,
        learned_context_method,
        load_predictions,
    )
    from models.workshop.data import load_her2st

    results = REPO / "models" / "results"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=results / "context_stage.json")
    parser.add_argument("--markdown", type=Path, default=results / "context_stage.md")
    parser.add_argument("--n-boot", type=int, default=N_BOOT)
    args = parser.parse_args(argv)
    ready = [
        m
        for m in METHODS
        if m.name != "mean"  # (constant predictions: no neighbour can change a correlation)
        and sum(fold_path(m.fold_method, k).is_file() for k in C_SECTIONS) >= MIN_SECTIONS
        and (m.onnx or fold_path(m.fold_method, TEST_SECTION).is_file())
    ]
    sections = load_her2st(TILE_PX, TILE_UM)
    p = load_predictions(sections, args.n_boot, ready)
    out: dict[str, Any] = {
        "n_boot": args.n_boot,
        "resolution_um_per_px": {k: round(s.mpp, 3) for k, s in sections.items()},
        "methods": {},
    }
    for m in ready:
        print(f"{m.name}: Gaussian (nested sigma), then the learnt rings", flush=True)
        gaussian = context_method(m, p)
        out["methods"][m.name] = {
            "label": m.label,
            "shipped_file": m.onnx,
            "gaussian_sigma_per_outer_fold": gaussian["sigma_chosen_per_outer_fold"],
            "gaussian_sigma_on_all_C": gaussian["sigma_chosen_on_all_C"],
            "gaussian_loso_C_raw": gaussian["loso_C_raw"],
            "gaussian_a1_raw": gaussian["a1_raw"],
            "loso_sections": sorted(p.by["loso"][m.name]),
            "learned_context": learned_context_method(m, p),
        }
    out["not_run"] = [m.name for m in METHODS if m not in ready and m.name != "mean"]
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    text = markdown(out)
    args.markdown.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
