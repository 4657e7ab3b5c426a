"""``virtual-st``: the engine from the command line.

Every user error prints one line (``virtual-st: error: ...``) and exits with status 2; a
cancelled run (Ctrl-C) keeps its finished batches, says how to resume, and exits with 130.
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from napari_virtual_st._version import __version__
from napari_virtual_st.errors import CancelledError, VirtualSTError

if TYPE_CHECKING:  # (the commands import what they use when they run: --help stays quick)
    from napari_virtual_st.cohort import CohortProgress, SlideResult
    from napari_virtual_st.registry import BundledModel
    from napari_virtual_st.run import RunEvent
    from napari_virtual_st.store import PredictionStore

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1; got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``virtual-st``."""
    parser = argparse.ArgumentParser(
        prog="virtual-st",
        description="Predict spatial gene expression from H&E whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (
        _add_info,
        _add_predict,
        _add_evaluate,
        _add_export,
        _add_demo,
        _add_cohort,
        _add_check,
        _add_models,
        _add_runtime,
    ):
        add_command(sub)
    return parser


def _add_info(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = sub.add_parser("info", help="describe a slide (format, levels, µm/px)")
    info.add_argument("slide", type=Path, help="slide file")
    info.add_argument(
        "--mpp", type=_positive_float, help="µm per level-0 pixel, if the file lacks it"
    )
    info.add_argument("--json", action="store_true", help="print JSON")


def _add_predict(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predict = sub.add_parser("predict", help="predict gene expression over a slide")
    predict.add_argument("slide", type=Path, help="slide file")
    predict.add_argument(
        "--model",
        help="ONNX model file, or a bundled model's name "
        "(default: the default bundled model, marked in `virtual-st models`)",
    )
    predict.add_argument(
        "--mpp", type=_positive_float, help="µm per level-0 pixel, if the file lacks it"
    )
    predict.add_argument("--out", type=Path, help="output store (default: <slide>.vst.zarr here)")
    predict.add_argument(
        "--overlap-um", type=float, default=0.0, help="overlap of dense tiles in µm (default: 0)"
    )
    _add_run_arguments(predict, cohort=False)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_measured_arguments(
        predict, "predict at the measured spots of this data instead of a grid"
    )


def _add_run_arguments(parser: argparse.ArgumentParser, *, cohort: bool) -> None:
    """The options of a prediction run that ``predict`` and ``cohort`` share."""
    per = " per slide" if cohort else ""
    parser.add_argument(
        "--grid",
        choices=("visium", "st", "dense"),
        default="visium",
        help="spot layout (default: visium)",
    )
    parser.add_argument(
        "--min-tissue",
        type=_fraction,
        default=0.5,
        help="drop spots with less tissue than this (default: 0.5)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32, help="tiles per model call (default: 32)"
    )
    parser.add_argument(
        "--read-threads",
        type=_positive_int,
        help=f"threads reading tiles{per} (default: sized with the model's threads to the cores)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "int8", "auto"),
        default="fp32",
        help="fp32 (default); int8: the model's int8 variant (shipped, cached, or quantised "
        "on first use), faster on most CPUs; auto: int8 only where it passed its recorded "
        "accuracy gate against fp32, else fp32",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        metavar="P",
        help="execution providers, e.g. cuda cpu (default: "
        + ("each worker's GPU if it has one)" if cohort else "GPU if available)"),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing stores instead of skipping them"
        if cohort
        else "replace an existing store instead of resuming it",
    )
    parser.add_argument(
        "--allow-non-brightfield",
        action="store_true",
        help="predict even where a slide does not look like bright-field H&E (e.g. fluorescence)",
    )


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = sub.add_parser("evaluate", help="compare a prediction store with measured ST")
    evaluate.add_argument("store", type=Path, help="prediction store (.vst.zarr)")
    _add_measured_arguments(evaluate, "measured data to compare with", required=True)
    evaluate.add_argument("--csv", type=Path, help="write the per-gene table here")
    evaluate.add_argument("--top", type=int, default=10, help="genes to list (default: 10)")


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export",
        help="export predictions to .h5ad (scanpy/squidpy) and/or GeoJSON (QuPath)",
        description="Export the predicted spots (only those inside --regions, when given) to "
        "an AnnData .h5ad in scanpy's Visium layout and/or a QuPath GeoJSON of detections "
        "with the genes as measurements. Files appear complete or not at all.",
    )
    export.add_argument("store", type=Path, help="prediction store (.vst.zarr)")
    export.add_argument(
        "--regions", type=Path, help="QuPath GeoJSON of annotations: export only the spots inside"
    )
    export.add_argument("--h5ad", type=Path, help="write an AnnData file here")
    export.add_argument("--geojson", type=Path, help="write a QuPath GeoJSON file here")
    export.add_argument(
        "--slide", type=Path, help="the slide, if it moved since the prediction (for the image)"
    )
    export.add_argument(
        "--library-id", help="key under uns['spatial'] (default: the slide's name)"
    )
    _add_measured_arguments(export, "add the measured values as layers['measured']")
    export.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="run the whole job on the bundled real slide with a bundled model"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("vst-demo"), help="output folder (default: ./vst-demo)"
    )
    demo.add_argument(
        "--model",
        help="bundled model name or ONNX file (default: the default bundled model)",
    )
    demo.add_argument("--gene", help="gene to draw (default: the most variable predicted gene)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_cohort(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cohort = sub.add_parser(
        "cohort",
        help="predict many slides on a Dask cluster (local, or a scheduler address)",
        description="Predict every slide of a cohort, one store per slide, on a Dask cluster. "
        "Exit status: 0 when every slide is done or was done already, 1 when some slides "
        "failed (each is reported; the others finish), 2 for errors in the arguments, "
        "130 after Ctrl-C.",
    )
    cohort.add_argument(
        "slides", nargs="*", type=Path, metavar="SLIDE", help="slide files or folders of slides"
    )
    cohort.add_argument(
        "--list", type=Path, metavar="CSV", help="CSV of slides: a 'slide' column, optional 'mpp'"
    )
    cohort.add_argument(
        "--model", required=True, help="ONNX model file, or a bundled model's name"
    )
    cohort.add_argument(
        "--out", type=Path, required=True, help="folder for the stores and cohort_summary.csv"
    )
    cohort.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)",
    )
    cohort.add_argument(
        "--workers", type=_positive_int, help="local cluster workers (default: by cores)"
    )
    cohort.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        help="model threads per worker (default: cores / workers locally)",
    )
    cohort.add_argument(
        "--mpp", type=_positive_float, help="µm per level-0 pixel for slides whose files lack it"
    )
    _add_run_arguments(cohort, cohort=True)
    cohort.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra attempts after an unexpected failure or a lost worker (default: 2)",
    )
    cohort.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check",
        help="say whether a prediction store is whole (every spot predicted, no value lost)",
        description="Read every chunk of a prediction store and report unfinished runs and "
        "spots whose saved values are missing or unreadable. Exit status 0: whole; 1: "
        "unfinished or damaged (running the same prediction again completes or repairs it).",
    )
    check.add_argument("store", type=Path, help="prediction store (.vst.zarr)")


def _add_models(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser(
        "models",
        help="list the bundled models: the default, their metrics, cards and terms of use",
    )
    models.add_argument("--json", action="store_true", help="print JSON")


def _add_runtime(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "runtime",
        help="which ONNX Runtime build is installed, what it runs on, and how to use the GPU",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``virtual-st``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {
        "info": _cmd_info,
        "predict": _cmd_predict,
        "models": _cmd_models,
        "demo": _cmd_demo,
        "evaluate": _cmd_evaluate,
        "export": _cmd_export,
        "cohort": _cmd_cohort,
        "check": _cmd_check,
        "runtime": _cmd_runtime,
    }[args.command]
    try:
        return handler(args)
    except CancelledError as exc:
        print(f"virtual-st: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except VirtualSTError as exc:
        if args.debug:
            raise
        print(f"virtual-st: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if args.debug:
            raise
        print(
            f"virtual-st: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return EXIT_USER_ERROR


def _cmd_info(args: argparse.Namespace) -> int:
    from napari_virtual_st.slide import Slide

    with Slide(args.slide, mpp=args.mpp) as slide:
        description = slide.describe()
        w, h = slide.dimensions
        mpp = slide.mpp_or_none
        levels = list(zip(slide.level_dimensions, slide.level_downsamples, strict=True))
    if args.json:
        print(json.dumps(description, indent=2))
        return 0
    mpp_text = f"{mpp:.4f} µm/px ({description['mpp_source']})" if mpp else "unknown (give --mpp)"
    print(f"slide:       {description['name']}")
    print(f"format:      {description['format']}")
    print(
        f"size:        {w} × {h} px"
        + (f" = {w * mpp / 1000:.2f} × {h * mpp / 1000:.2f} mm" if mpp else "")
    )
    print(f"resolution:  {mpp_text}")
    print(f"levels:      {description['level_count']}")
    for level, ((lw, lh), ds) in enumerate(levels):
        print(f"  level {level}: {lw} × {lh} px, downsample {ds:g}")
    print(f"fingerprint: {description['fingerprint']}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from napari_virtual_st.registry import (
        BUNDLED_MODEL_TERMS,
        DEFAULT_MODEL_NAME,
        DEFAULT_MODEL_REASON,
        bundled_models,
    )

    rows = [_model_row(model) for model in bundled_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(
            "No models are bundled with this installation; pass any contract ONNX file with --model."
        )
        return 0
    for row in rows:
        _print_model_row(row)
    if any(row["default"] for row in rows):
        print(
            f"\nDefault ({DEFAULT_MODEL_NAME}, used when no --model is given): {DEFAULT_MODEL_REASON}."
        )
    print(f"\nTerms of use: {BUNDLED_MODEL_TERMS}")
    return 0


def _model_row(model: BundledModel) -> dict[str, Any]:
    """What ``virtual-st models`` says of one bundled model (a row of its ``--json``)."""
    from napari_virtual_st.registry import BUNDLED_MODEL_TERMS, DEFAULT_MODEL_REASON

    card = model.card
    row: dict[str, Any] = {
        "name": model.name,
        "path": str(model.path),
        "default": model.is_default,
        "card": None if card is None else str(card),
    }
    if model.is_default:
        row["default_reason"] = DEFAULT_MODEL_REASON
    if model.info is None:
        row["problem"] = model.problem
    else:
        info = model.info
        row.update(
            family=info.family,
            genes=len(info.genes),
            tile_px=info.tile_px,
            tile_um=info.tile_um,
            target=info.target,
            outputs=list(info.outputs),
            metrics=info.metadata.get("metrics"),
            license=info.metadata.get("license"),
            values=info.values_description,
            context=None if info.context is None else info.context.as_dict(),
            precision_auto=_auto_precision(model.path),
        )
    row["terms"] = BUNDLED_MODEL_TERMS
    return row


def _auto_precision(path: Path) -> dict[str, str | None]:
    """What ``--precision auto`` runs for a bundled model, and why (its recorded int8 gate);
    never quantises anything. Where ``auto`` would be refused (e.g. an unreadable gates
    index), ``runs`` is ``None`` and the reason is the refusal a run would print."""
    from napari_virtual_st.errors import VirtualSTError
    from napari_virtual_st.precision import choose_model

    try:
        choice = choose_model(path, "auto")
    except VirtualSTError as exc:
        return {"runs": None, "reason": f"refused: {exc}"}
    return {"runs": choice.precision, "reason": choice.reason}


def _print_model_row(row: dict[str, Any]) -> None:
    """One bundled model in ``virtual-st models``' text listing."""
    if "problem" in row:
        print(f"{row['name']}: unusable ({row['problem']})")
        return
    print(
        f"{row['name']}{' (default)' if row['default'] else ''}: {row['family']}, "
        f"{row['genes']} genes, tiles {row['tile_px']} px / {row['tile_um']:g} µm, "
        f"outputs {', '.join(row['outputs'])}, target {row['target']}"
    )
    print(f"    values: {row['values']}")
    print(f"    --precision auto: {row['precision_auto']['reason']}")
    metrics = row.get("metrics") or {}
    raw = metrics.get("raw", {}) if isinstance(metrics, dict) else {}
    if "PCC-ALL" in raw:
        test = metrics.get("test_section", "held-out data")
        print(
            f"    held-out PCC-ALL {raw['PCC-ALL']:.3f} (raw labels) on {test}; protocol: {metrics.get('protocol', '?')}"
        )
    if row.get("license"):
        print(f"    licence: {row['license']}")
    if row["card"]:
        print(f"    model card: {row['card']}")


def _cmd_runtime(args: argparse.Namespace) -> int:
    from napari_virtual_st.onnxruntime_build import describe_runtime

    report = describe_runtime()
    print(report.text())
    return 0


def _cmd_cohort(args: argparse.Namespace) -> int:
    import time

    from napari_virtual_st.cohort import CohortSpec, find_slides, read_slide_list, run_cohort
    from napari_virtual_st.errors import ParameterError

    if bool(args.slides) == (args.list is not None):
        raise ParameterError("give either slide files/folders or --list CSV (one of the two)")
    if args.retries < 0:
        raise ParameterError(f"--retries must be 0 or more; got {args.retries}")
    slides = read_slide_list(args.list) if args.list is not None else find_slides(args.slides)
    where = args.scheduler or "a local Dask cluster"
    print(f"{len(slides)} slides → {args.out}, on {where}", file=sys.stderr)
    report = _CohortBars(quiet=args.quiet)
    start = time.perf_counter()
    with _CtrlC() as ctrl_c:
        try:
            spec = CohortSpec(
                args.model,
                args.out,
                scheduler=args.scheduler,
                workers=args.workers,
                threads_per_worker=args.threads_per_worker,
                grid=args.grid,
                min_tissue=args.min_tissue,
                batch_size=args.batch_size,
                read_threads=args.read_threads,
                precision=args.precision,
                providers=args.providers,
                retries=args.retries,
                mpp=args.mpp,
                overwrite=args.overwrite,
                allow_non_brightfield=args.allow_non_brightfield,
            )
            results = run_cohort(
                slides, spec, progress=report, should_cancel=ctrl_c.requested.is_set
            )
        finally:
            report.close()
    return _cohort_summary(results, time.perf_counter() - start, args.out)


class _CohortBars:
    """The cohort's progress bars on stderr (slides, spots), made at the first report, once
    the model and the cluster are up."""

    def __init__(self, *, quiet: bool) -> None:
        self._quiet = quiet
        self._bars: list[Any] = []

    def __call__(self, p: CohortProgress) -> None:
        from tqdm import tqdm

        if not self._bars:
            options: dict[str, Any] = {
                "disable": self._quiet,
                "file": sys.stderr,
                "dynamic_ncols": True,
            }
            self._bars.append(tqdm(total=p.slides_total, unit="slide", position=0, **options))
            self._bars.append(tqdm(total=0, unit="spot", position=1, **options))
        slide_bar, spot_bar = self._bars
        slide_bar.n = p.slides_done
        slide_bar.set_postfix(failed=p.failed, refresh=False)
        slide_bar.refresh()
        spot_bar.total = p.spots_total
        spot_bar.n = p.spots_done
        spot_bar.refresh()

    def close(self) -> None:
        for bar in reversed(self._bars):
            bar.close()


def _cohort_summary(results: Sequence[SlideResult], elapsed: float, out: Path) -> int:
    """Print what a cohort run did; its exit status (cancelled, any failed, or 0)."""
    from napari_virtual_st.cohort import SUMMARY_NAME

    counts = {
        s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)
    }
    for result in results:
        if result.status == "failed":
            print(f"virtual-st: failed: {result.slide}: {result.error}", file=sys.stderr)
    spots_new = sum(r.spots_new for r in results)
    per_hour = sum(r.status in ("done", "resumed") for r in results) / max(elapsed, 1e-9) * 3600
    print(
        f"{len(results)} slides in {elapsed:.1f} s: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; {spots_new} spots predicted ({per_hour:.0f} slides/hour)"
    )
    print(f"stores in {out}; summary: {out / SUMMARY_NAME}")
    if counts.get("cancelled"):
        print("virtual-st: cancelled; run the same command again to resume", file=sys.stderr)
        return EXIT_CANCELLED
    return 1 if counts.get("failed") else 0


class _CtrlC:
    """First Ctrl-C asks the run to stop after the current batch; a second one aborts."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()
        print(
            "\nvirtual-st: stopping after this batch (Ctrl-C again to abort)...", file=sys.stderr
        )

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _cmd_predict(args: argparse.Namespace) -> int:
    from napari_virtual_st.onnxruntime_build import gpu_advice
    from napari_virtual_st.registry import default_model, resolve_model
    from napari_virtual_st.run import RunSpec, run
    from napari_virtual_st.run.engine import open_slide, prepare_model

    providers = None if args.providers is None else tuple(args.providers)
    model_path = default_model().path if args.model is None else resolve_model(args.model)
    if args.providers is None:
        advice = gpu_advice()
        if advice:
            print(f"virtual-st: {advice}", file=sys.stderr)
    spots, transform = None, None
    spec = RunSpec(
        slide_path=args.slide,
        model_path=model_path,
        store_path=args.out if args.out is not None else Path(f"{args.slide.stem}.vst.zarr"),
        grid_kind=args.grid,
        mpp=args.mpp,
        min_tissue_fraction=args.min_tissue,
        overlap_um=args.overlap_um,
        providers=providers,
        batch_size=args.batch_size,
        read_threads=args.read_threads,
        precision=args.precision,
        overwrite=args.overwrite,
        allow_non_brightfield=args.allow_non_brightfield,
    )
    predictor, _, choice, plan = prepare_model(spec)  # (the run reuses this session)
    with open_slide(spec) as slide:
        mpp = slide.mpp  # the clear message first, when the resolution is unknown
        if getattr(args, "measured", None) is not None:
            measured, transform = _load_measured(args)
            spots = measured.spot_grid(mpp, transform)
    spec = replace(spec, spots=spots, transform=transform)
    print(
        f"model {model_path.name}: {len(predictor.genes)} genes, tiles of "
        f"{predictor.info.tile_um:g} µm at {predictor.info.tile_px} px, values "
        f"{predictor.info.values_description}; running on {predictor.runs_on}, "
        f"{plan.read_threads} reading"
        + ("" if args.precision == "fp32" else f" ({choice.reason})"),
        file=sys.stderr,
    )
    report = _SpotBar(spec.grid_name, quiet=args.quiet)
    with _CtrlC() as ctrl_c:
        try:
            store = run(spec, report, ctrl_c.requested.is_set)
        finally:
            report.close()
    _print_run_summary(store, spec.store_path)
    return 0


class _SpotBar:
    """A prediction's progress bar on stderr, made when the store is ready (after its
    checks passed)."""

    def __init__(self, grid_name: str, *, quiet: bool) -> None:
        self._grid_name = grid_name
        self._quiet = quiet
        self._bar: Any = None

    def __call__(self, event: RunEvent) -> None:
        from tqdm import tqdm

        from napari_virtual_st.run import BatchEvent, StoreReadyEvent

        if isinstance(event, StoreReadyEvent):
            total = event.progress.spots_total
            print(f"{total} {self._grid_name} spots on tissue", file=sys.stderr)
            self._bar = tqdm(
                total=total,
                unit="spot",
                disable=self._quiet,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if isinstance(event, StoreReadyEvent | BatchEvent) and self._bar is not None:
            self._bar.n = event.progress.spots_done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _print_run_summary(store: PredictionStore, store_path: Path) -> None:
    """What a finished prediction wrote (and repaired), and how fast."""
    if store.attrs.get("repaired_spots"):
        print(
            f"repaired: {store.attrs['repaired_spots']} spots whose saved values were missing "
            "or unreadable were predicted again",
            file=sys.stderr,
        )
    statistics = store.slide_statistics
    if statistics is not None:
        print(f"features standardised by the slide's statistics: {statistics.sampled_from}",
              file=sys.stderr)  # fmt: skip
    seconds = store.attrs.get("last_run_seconds")
    rate = store.attrs.get("last_run_tiles_per_s")
    timing = f" in {seconds:.1f} s ({rate:.0f} tiles/s)" if seconds else ""
    print(f"{store.n_spots} spots × {len(store.genes)} genes written to {store_path}{timing}")


def _add_measured_arguments(
    parser: argparse.ArgumentParser, help_text: str, required: bool = False
) -> None:
    parser.add_argument(
        "--measured",
        type=Path,
        required=required,
        help=f"{help_text}: Space Ranger outs/, .h5ad, or legacy ST counts .tsv",
    )
    parser.add_argument(
        "--spots", type=Path, help="legacy ST spot (selection) file, with a counts .tsv"
    )
    parser.add_argument(
        "--pixel-scale",
        type=_positive_float,
        default=1.0,
        help="legacy ST: spot-file px → image px (default: 1)",
    )
    parser.add_argument(
        "--transform",
        type=Path,
        help="alignment JSON: measured px → slide level-0 px (default: same image)",
    )


def _load_measured(args: argparse.Namespace) -> tuple[Any, Any]:
    from napari_virtual_st.align import Transform
    from napari_virtual_st.measured import read_measured

    measured = read_measured(args.measured, spots=args.spots, pixel_scale=args.pixel_scale)
    transform = Transform.from_json(args.transform.read_text()) if args.transform else None
    return measured, transform


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_virtual_st.compare import compare
    from napari_virtual_st.store import PredictionStore

    store = PredictionStore.open(args.store)
    _note_unusable_spots(store, "the metrics cover only the spots with values")
    measured, transform = _load_measured(args)
    if transform is None:
        transform = store.load_transform()
        if transform is not None:
            print(
                f"alignment: the transform saved with the store ({store.path.name}/transform.json)",
                file=sys.stderr,
            )
    result = compare(store, measured, transform)
    summary = result.summary()
    print(f"predicted values: {summary['values']}", file=sys.stderr)
    print(
        f"{summary['n_spots']} spots matched by {summary['spot_match']}, {summary['n_genes']} genes compared"
        + (
            f" ({summary['n_missing_genes']} model genes absent from the measured data)"
            if summary["n_missing_genes"]
            else ""
        )
    )
    print(
        f"mean Pearson {summary['mean_pearson']:.4f} (median {summary['median_pearson']:.4f}), "
        f"mean Spearman {summary['mean_spearman']:.4f}, mean SSIM {summary['mean_ssim']:.4f}, "
        f"genes with Pearson > 0: {summary['frac_pearson_gt_0']:.1%}"
    )
    for score in result.sorted_by()[: max(args.top, 0)]:
        print(
            f"  {score.gene:12s} Pearson {score.pearson:+.3f}  Spearman {score.spearman:+.3f}  SSIM {score.ssim:.3f}"
        )
    if args.csv:
        print(f"per-gene table: {result.write_csv(args.csv)}")
    return 0


def _note_unusable_spots(store: Any, consequence: str) -> None:
    """One note on stderr when a store is unfinished or damaged: which spots, and what to do."""
    from napari_virtual_st.store_health import check_store

    health = check_store(store)
    if not health.is_whole:
        print(
            f"virtual-st: note: {health.summary(store.path.name)}; {consequence}", file=sys.stderr
        )


def _cmd_check(args: argparse.Namespace) -> int:
    from napari_virtual_st.store import PredictionStore
    from napari_virtual_st.store_health import check_store

    store = PredictionStore.open(args.store)
    health = check_store(store)
    print(health.summary(store.path.name))
    print(
        f"slide {store.slide.name or '?'}, model {store.model.file or '?'}, "
        f"{len(store.genes)} genes, status {health.status}"
    )
    return 0 if health.is_whole else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from napari_virtual_st.export import ExportError, export_store
    from napari_virtual_st.regions import read_geojson_regions
    from napari_virtual_st.store import PredictionStore

    if args.h5ad is None and args.geojson is None:
        raise ExportError("say what to write: --h5ad OUT.h5ad, --geojson OUT.geojson, or both")
    store = PredictionStore.open(args.store)
    _note_unusable_spots(store, "only spots with values are exported")
    regions = read_geojson_regions(args.regions) if args.regions is not None else None
    measured, transform = _load_measured(args) if args.measured is not None else (None, None)
    from tqdm import tqdm

    bars: list[Any] = []  # a bar on a terminal only: errors stay one line in logs

    def report(p: Any) -> None:
        if not bars:
            quiet = args.quiet or not sys.stderr.isatty()
            options = {"disable": quiet, "file": sys.stderr, "dynamic_ncols": True}
            bars.append(tqdm(total=p.total, unit="step", **options))
        bars[0].n = p.done
        bars[0].set_description(p.message, refresh=True)

    with _CtrlC() as ctrl_c:  # Ctrl-C: stop at the next step, nothing written
        try:
            result = export_store(
                store,
                regions,
                h5ad=args.h5ad,
                geojson=args.geojson,
                slide=args.slide,
                measured=measured,
                transform=transform,
                library_id=args.library_id,
                progress=report,
                cancel=ctrl_c.requested.is_set,
            )
        finally:
            for bar in bars:
                bar.close()
    where = (
        " in " + ", ".join(f"{label}: {n}" for label, n in result.region_counts.items())
        if result.region_counts
        else ""
    )
    print(f"{result.n_spots} spots × {len(store.genes)} genes{where}")
    for path in (result.h5ad, result.geojson):
        if path is not None:
            print(f"written: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_virtual_st.overlay import most_variable_gene, save_gene_overlay
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.registry import (
        default_model,
        resolve_model,
        sample_note,
        sample_slide_path,
    )
    from napari_virtual_st.slide import Slide
    from napari_virtual_st.store import PredictionStore

    slide_path = sample_slide_path()
    model_path = resolve_model(args.model) if args.model else default_model().path
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / f"{slide_path.stem}.vst.zarr"
    print(f"demo: bundled slide {slide_path.name}, model {model_path.name}", file=sys.stderr)
    _cmd_info(argparse.Namespace(slide=slide_path, mpp=None, json=False))
    code = _cmd_predict(
        argparse.Namespace(
            slide=slide_path,
            model=str(model_path),
            grid="visium",
            mpp=None,
            out=store_path,
            batch_size=32,
            providers=None,
            min_tissue=0.5,
            overlap_um=0.0,
            read_threads=None,
            precision="fp32",
            overwrite=False,
            allow_non_brightfield=False,
            quiet=args.quiet,
        )
    )
    if code != 0:
        return code
    store = PredictionStore.open(store_path)
    gene = args.gene or most_variable_gene(store)
    store.gene_index([gene])  # a clear error for a gene the model does not predict
    with Slide(slide_path) as slide:
        file_gene = re.sub(r"[^\w.-]", "_", gene)  # (a gene name may hold "/" or ":")
        picture = save_gene_overlay(
            slide, store, gene, out_dir / f"{slide_path.stem}_{file_gene}.png"
        )
    values = store.gene_values(gene)
    print(
        f"{gene}: predicted {store.model.target} from {values.min():.2f} to {values.max():.2f} over {store.n_spots} spots"
        + (f", {store.model.context.describe()}" if store.model.context else "")
    )
    print(f"store:   {store_path}")
    print(f"heatmap: {picture}")
    note = sample_note(Predictor(model_path, providers=["cpu"]).info)
    if note:
        print(f"note:    {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
