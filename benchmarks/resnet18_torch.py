"""The benchmark network as a torch export: ResNet-18 with random weights (BENCHMARK ONLY).

The field's tools (TIAToolbox and others) run a torch ResNet; a network built by hand with
``onnx.helper`` (the former ``resnet18_onnx.py``) was 8 % slower in ONNX Runtime than the
torch export of the same network, which flattered the pipeline's efficiency (its model was
the slow part), so every benchmark uses this export.
This builds the standard ResNet-18 (torchvision's topology, written out here: torchvision is
not a dependency) in torch, normalisation inside ``forward`` as the contract asks, and exports
it with the package's own exporter (:func:`napari_virtual_st.onnx_export.export_torch_model`:
dynamo, one self-contained file, checked against torch). Weights are random (seeded), batch
norm statistics too: the predictions mean nothing.

Usage::

    python benchmarks/resnet18_torch.py OUT.onnx [--genes 250] [--tile-um 112]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TILE_PX = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet18_module(n_genes: int = 250, seed: int = 0) -> Any:
    """A torch ResNet-18 mapping uint8 NHWC RGB tiles to ``(N, n_genes)``."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.down: nn.Module = nn.Identity()
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + self.down(x))

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            layers: list[nn.Module] = []
            c_in = 64
            for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Basic(c_in, c_out, stride), Basic(c_out, c_out, 1)]
                c_in = c_out
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(512, n_genes)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2).float()
            x = (x - self.mean) / self.std
            x = self.body(self.stem(x))
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(seed)
    module = ResNet18()
    with torch.no_grad():  # non-trivial batch-norm statistics, activations kept tame
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
                m.weight.uniform_(0.4, 0.8)
    return module.eval()


def build_benchmark_model(
    path: str | Path, n_genes: int = 250, tile_um: float = 112.0, seed: int = 0
) -> Path:
    """Export the random-weight torch ResNet-18 to the model contract at ``path``."""
    import numpy as np

    from napari_virtual_st.contract import ModelMetadata
    from napari_virtual_st.onnx_export import export_torch_model

    meta = ModelMetadata(
        genes=[f"BENCH{i:03d}" for i in range(n_genes)],
        tile_px=TILE_PX,
        tile_um=tile_um,
        family="benchmark",
        target="random (benchmark model; values mean nothing)",
        name="resnet18-torch-random-BENCHMARK",
        description=(
            "BENCHMARK ONLY: torch ResNet-18 (torchvision topology) with random weights "
            f"(seed {seed}), exported by the package's exporter; predictions are meaningless. "
            "Built by benchmarks/resnet18_torch.py."
        ),
        training={"data": "none: random weights", "seed": seed},
        license="BSD-3-Clause",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = np.random.default_rng(seed).integers(0, 256, (2, TILE_PX, TILE_PX, 3), dtype=np.uint8)
    export_torch_model(
        resnet18_module(n_genes, seed), path, meta, check_tiles=tiles, tolerance=1e-3
    )
    return path


def cached_benchmark_model(
    cache_dir: str | Path, n_genes: int = 250, tile_um: float = 112.0
) -> Path:
    """The torch-exported benchmark model under ``cache_dir``, built on first use."""
    path = Path(cache_dir) / f"resnet18_torch_random_g{n_genes}_{tile_um:g}um.onnx"
    if not path.exists():
        build_benchmark_model(path, n_genes=n_genes, tile_um=tile_um)
    return path


def save_benchmark_weights(path: str | Path, n_genes: int = 250, seed: int = 0) -> Path:
    """Save the benchmark network's ``state_dict`` (the weights :func:`build_benchmark_model`
    exports) at ``path``, for tools that run the torch network itself (TIAToolbox)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(resnet18_module(n_genes, seed).state_dict(), tmp)
    tmp.replace(path)
    return path


def cached_benchmark_weights(cache_dir: str | Path, n_genes: int = 250) -> Path:
    """The benchmark network's ``state_dict`` under ``cache_dir``, saved on first use (seed 0,
    as :func:`cached_benchmark_model`)."""
    path = Path(cache_dir) / f"resnet18_torch_random_g{n_genes}_seed0.pt"
    if not path.exists():
        save_benchmark_weights(path, n_genes=n_genes)
    return path


def load_benchmark_module(weights: str | Path, n_genes: int = 250) -> Any:
    """The benchmark network with the weights saved by :func:`save_benchmark_weights`
    (needs torch only: another environment can run it without this package)."""
    import torch

    module = resnet18_module(n_genes)
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return module.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--genes", type=int, default=250)
    parser.add_argument("--tile-um", type=float, default=112.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_benchmark_model(
        args.out, n_genes=args.genes, tile_um=args.tile_um, seed=args.seed
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
