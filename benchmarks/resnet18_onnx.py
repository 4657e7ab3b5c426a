"""A ResNet-18-sized BENCHMARK model with random weights, built with ``onnx.helper`` (no torch).

It follows the model contract (DESIGN.md): input ``image`` uint8 ``(N, 224, 224, 3)`` RGB,
normalisation inside the graph (Cast → ImageNet mean/std), Transpose to NCHW, the standard
ResNet-18 topology (7×7/2 stem, 3×3/2 max-pool, 4 stages of 2 basic blocks with 64/128/256/512
channels, batch-norm folded into the convolutions' biases, ReLU, residual additions, 1×1/2
projection shortcuts), global average pool, then ``Gemm`` to ``G`` genes as ``expression``
float32 ``(N, G)``.

The weights are random (seeded): the predictions mean nothing. It exists only to give the
pipeline a realistic amount of compute per tile (≈1.8 GFLOP, 11.3 M parameters).

Usage::

    python benchmarks/resnet18_onnx.py OUT.onnx [--genes 250] [--tile-um 112]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from napari_virtual_st.contract import ModelMetadata, attach_metadata, save_model

TILE_PX = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, stride: int, *, gain: float = 1.0
    ) -> str:
        """Convolution with batch-norm folded in (weight and bias); He-normal weights."""
        std = gain * np.sqrt(2.0 / (c_in * k * k))
        w = (self.rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32)
        b = (self.rng.standard_normal(c_out) * 0.01).astype(np.float32)
        out = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const(w, "W"), self.const(b, "B")],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        return out

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def basic_block(self, x: str, c_in: int, c_out: int, stride: int) -> str:
        y = self.op("Relu", [self.conv(x, c_in, c_out, 3, stride)])
        # residual branch scaled down so activations stay tame with random weights
        y = self.conv(y, c_out, c_out, 3, 1, gain=0.5)
        shortcut = x if stride == 1 and c_in == c_out else self.conv(x, c_in, c_out, 1, stride)
        return self.op("Relu", [self.op("Add", [y, shortcut])])


def resnet18_graph(n_genes: int = 250, tile_px: int = TILE_PX, seed: int = 0) -> onnx.ModelProto:
    """The ResNet-18 graph (random weights, no contract metadata yet)."""
    b = _Builder(seed)
    mean = np.array(IMAGENET_MEAN, np.float32) * 255.0
    inv_std = 1.0 / (np.array(IMAGENET_STD, np.float32) * 255.0)
    x = b.op("Cast", ["image"], to=TensorProto.FLOAT)
    x = b.op("Sub", [x, b.const(mean, "mean")])
    x = b.op("Mul", [x, b.const(inv_std.astype(np.float32), "inv_std")])
    x = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    x = b.op("Relu", [b.conv(x, 3, 64, 7, 2)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = b.basic_block(x, c_in, c_out, stride)
        x = b.basic_block(x, c_out, c_out, 1)
        c_in = c_out
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    w = (b.rng.standard_normal((n_genes, 512)) * np.sqrt(1.0 / 512)).astype(np.float32)
    bias = (b.rng.standard_normal(n_genes) * 0.1).astype(np.float32)
    b.nodes.append(
        helper.make_node(
            "Gemm", [x, b.const(w, "fc_W"), b.const(bias, "fc_B")], ["expression"], transB=1
        )
    )
    graph = helper.make_graph(
        b.nodes,
        "benchmark_resnet18_random",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", tile_px, tile_px, 3])],
        [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", n_genes])],
        b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="napari-virtual-st benchmarks/resnet18_onnx.py",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_benchmark_model(
    path: str | Path, *, n_genes: int = 250, tile_um: float = 112.0, seed: int = 0
) -> Path:
    """Write the random ResNet-18 benchmark model, with contract metadata, to ``path``."""
    model = resnet18_graph(n_genes, TILE_PX, seed)
    meta = ModelMetadata(
        genes=[f"BENCH{i:03d}" for i in range(n_genes)],
        tile_px=TILE_PX,
        tile_um=tile_um,
        family="benchmark",
        target="random (benchmark model; values mean nothing)",
        name="resnet18-random-BENCHMARK",
        description=(
            "BENCHMARK ONLY: ResNet-18 topology with random weights (seed "
            f"{seed}); predictions are meaningless. Built by benchmarks/resnet18_onnx.py."
        ),
        training={"data": "none: random weights", "seed": seed},
        license="BSD-3-Clause",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(attach_metadata(model, meta.to_props()), path)


def cached_benchmark_model(
    cache_dir: str | Path, n_genes: int = 250, tile_um: float = 112.0
) -> Path:
    """The benchmark model under ``cache_dir``, built on first use."""
    path = Path(cache_dir) / f"resnet18_random_g{n_genes}_{tile_um:g}um.onnx"
    if not path.exists():
        build_benchmark_model(path, n_genes=n_genes, tile_um=tile_um)
    return path


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
