"""One whole-slide run of TIAToolbox's ``PatchPredictor`` (BENCHMARK ONLY; run by
``bench_tiatoolbox.py`` with the Python of a separate environment where TIAToolbox is
installed).

It never imports ``napari_virtual_st``: only the standard library, numpy, torch,
TIAToolbox, onnxruntime (for ``--path ort``) and ``resnet18_torch.py`` beside it, whose
network it loads with the saved benchmark weights. Two paths:

- ``torch``: TIAToolbox's default. The network wrapped as a TIAToolbox ``ModelABC`` whose
  ``infer_batch`` is that of TIAToolbox's own CNN models (``CNNModel.infer_batch``: the
  uint8 patches to float NCHW, ``torch.inference_mode``) and so is its post-processing
  (argmax over the outputs); ``forward`` hands the network the NHWC layout it normalises
  itself. The raw outputs are kept (``return_probabilities=True``) for the agreement check:
  without it TIAToolbox saves only the post-processed values, cast to the smallest integer
  type that holds them.
- ``ort``: TIAToolbox has no ONNX Runtime path of its own. Its engine (slide reading,
  patch grid, DataLoader, output) with ``infer_batch`` replaced by an ONNX Runtime session
  of the same network's ONNX export (uint8 NHWC patches in, as the contract takes them).

The patches are TIAToolbox's regular grid (stride = patch) at the resolution the parent
chose (``baseline`` where the slide's own pixels are the model's scale, else 0.5 µm/px),
kept to the cells the parent chose by a mask whose pixels cover whole cells; see
:func:`cell_mask`.

Usage (by ``bench_tiatoolbox.py``)::

    TIA_PYTHON benchmarks/tiatoolbox_child.py SPEC.json SPAWN_EPOCH_S
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MARK = "@@TIA_RESULT@@ "
#: Mask pixels per cell side tried, largest first (each divides the 224 px patch).
MASK_STEPS = (32, 16, 8, 4, 2, 1)


def mask_step(wsi_shape: tuple[int, int], patch_px: int) -> int:
    """The largest step (patch pixels per mask pixel) dividing the patch side and both
    sides of the slide at the read resolution, so mask pixels tile cells exactly."""
    width, height = wsi_shape
    for step in MASK_STEPS:
        if patch_px % step == 0 and width % step == 0 and height % step == 0:
            return step
    return 1


def cell_mask(wsi_shape: tuple[int, int], cells_rc: np.ndarray, patch_px: int) -> np.ndarray:
    """A ``uint8`` mask (height, width) at ``1 / step`` of the read resolution that is 1
    exactly on the cells ``cells_rc`` ((row, col) of the patch grid, stride = patch).

    TIAToolbox scales each patch's bounds by ``mask size / slide size`` and keeps a patch
    when any mask pixel inside is set (``min_mask_ratio=0``): with a step dividing the
    patch and the slide, a cell's bounds are whole mask pixels, so exactly these cells stay.
    """
    step = mask_step(wsi_shape, patch_px)
    width, height = wsi_shape
    mask = np.zeros((height // step, width // step), np.uint8)
    side = patch_px // step
    for row, col in np.asarray(cells_rc, dtype=np.int64).reshape(-1, 2):
        mask[row * side : (row + 1) * side, col * side : (col + 1) * side] = 1
    return mask


def cells_from_bounds(bounds: np.ndarray, patch_px: int) -> np.ndarray:
    """(row, col) grid cells of TIAToolbox's patch bounds ``(x0, y0, x1, y1)`` at the read
    resolution (top-left corners on multiples of the patch side)."""
    bounds = np.asarray(bounds).reshape(-1, 4)
    return np.stack([bounds[:, 1], bounds[:, 0]], axis=1).astype(np.int64) // patch_px


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _model(spec: dict[str, Any], first: dict[str, float]) -> Any:
    """The network as a TIAToolbox model for ``spec['path']`` (``torch`` or ``ort``)."""
    import torch
    from tiatoolbox.models.architecture.vanilla import CNNModel
    from tiatoolbox.models.models_abc import ModelABC

    if spec["path"] == "torch":
        from resnet18_torch import load_benchmark_module

        class TorchNet(ModelABC):  # type: ignore[misc]
            def __init__(self, net: torch.nn.Module) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                # TIAToolbox hands float NCHW; the network takes NHWC and normalises itself
                return self.net(x.permute(0, 2, 3, 1))

            postproc = staticmethod(CNNModel.postproc)

            @staticmethod
            def infer_batch(model: Any, batch_data: Any, *, device: str = "cpu") -> Any:
                out = CNNModel.infer_batch(model, batch_data, device=device)
                first.setdefault("epoch", time.time())
                return out

        return TorchNet(load_benchmark_module(spec["weights"], spec["genes"]))

    import onnxruntime as ort

    class OrtNet(ModelABC):  # type: ignore[misc]
        def __init__(self, onnx_path: str, threads: int) -> None:
            super().__init__()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                onnx_path, options, providers=["CPUExecutionProvider"]
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.session.run(["expression"], {"image": x.numpy()})[0])

        postproc = staticmethod(CNNModel.postproc)

        @staticmethod
        def infer_batch(model: Any, batch_data: Any, *, device: str = "cpu") -> Any:
            image = np.ascontiguousarray(batch_data.numpy(), dtype=np.uint8)  # NHWC uint8
            out = model.session.run(["expression"], {"image": image})[0]
            first.setdefault("epoch", time.time())
            return out

    return OrtNet(spec["onnx"], spec["threads"])


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed run; writes the outputs (cells, values) to ``spec['out_npz']``."""
    import tiatoolbox
    import torch
    from tiatoolbox.models.engine.io_config import IOPatchPredictorConfig
    from tiatoolbox.models.engine.patch_predictor import PatchPredictor
    from tiatoolbox.wsicore.wsireader import WSIReader

    torch.set_num_threads(spec["threads"])
    patch_px, read = int(spec["tile_px"]), spec["tia_read"]
    slide = Path(spec["slide"])
    reader = WSIReader.open(slide)
    wsi_shape = tuple(int(v) for v in reader.slide_dimensions(**read))
    mask = cell_mask(wsi_shape, np.asarray(spec["cells_rc"]), patch_px)
    del reader
    first: dict[str, float] = {}
    out: dict[str, Any] = {
        "path": spec["path"],
        "tiatoolbox": tiatoolbox.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mask_step": mask_step(wsi_shape, patch_px),
    }
    if spec["path"] == "ort":
        import onnxruntime as ort

        out["onnxruntime"] = ort.__version__
    with tempfile.TemporaryDirectory(prefix="vst-bench-tia-") as tmp:
        t0, c0 = time.perf_counter(), _cpu_s()
        engine = PatchPredictor(
            model=_model(spec, first),
            batch_size=spec["batch_size"],
            num_workers=spec["num_workers"],
            device="cpu",
            verbose=False,
        )
        saved = engine.run(
            [slide],
            masks=[mask],
            patch_mode=False,
            ioconfig=IOPatchPredictorConfig(
                input_resolutions=[read],
                patch_input_shape=(patch_px, patch_px),
                stride_shape=(patch_px, patch_px),
            ),
            save_dir=Path(tmp) / "out",
            auto_get_mask=False,
            return_probabilities=True,
        )
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        import zarr

        group = zarr.open(str(next(iter(saved.values()))), mode="r")
        values = np.asarray(group["probabilities"], dtype=np.float32)
        cells = cells_from_bounds(np.asarray(group["coordinates"]), patch_px)
    np.savez(spec["out_npz"], cells_rc=cells, values=values)
    n = len(values)
    out.update(
        spots=n,
        seconds=round(wall, 3),
        tps=round(n / wall, 2),
        cpu_ms_per_tile=round(1000 * cpu / n, 2),
        first_result_s=round(first["epoch"] - spec["spawn_epoch"], 3),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        imported_our_package="napari_virtual_st" in sys.modules,
    )
    return out


def main() -> int:
    spec = {**json.loads(Path(sys.argv[1]).read_text()), "spawn_epoch": float(sys.argv[2])}
    print(MARK + json.dumps(run(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
