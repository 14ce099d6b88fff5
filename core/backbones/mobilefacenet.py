"""MobileFaceNet: the light backbone of the Partial FC / arcface_torch "mbf" configs.

Module nesting (``layers`` / ``conv_sep`` / ``features`` and the inner ``.layers``
Sequentials) mirrors insightface's ``arcface_torch`` MobileFaceNet so its released
``mbf`` checkpoints load with ``strict=True``. Its expansion widths are fixed numbers
(128, 256, 512, 256) rather than multiples of ``scale``, a quirk kept on purpose because
the checkpoints' shapes depend on it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.backbones.iresnet import downsampled_size

__all__ = ["MobileFaceNet", "mobilefacenet"]


class ConvBlock(nn.Module):
    """Conv -> BN -> PReLU, the non-linear unit used everywhere in the trunk.

    ``activation=False`` gives the linear bottleneck projection (Conv -> BN); the
    Sequential keeps insightface's parameter names (``layers.0``, ``layers.1``, ``layers.2``).
    """

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, activation: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        ]
        if activation:
            layers.append(nn.PReLU(out_c))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``width``, depthwise 3x3, 1x1 linear project."""

    def __init__(self, in_c: int, out_c: int, width: int, stride: int = 2,
                 residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, width, kernel=1),
            ConvBlock(width, width, kernel=3, stride=stride, padding=1, groups=width),
            ConvBlock(width, out_c, kernel=1, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """A stack of stride-1 residual bottlenecks at constant width."""

    def __init__(self, channels: int, num_block: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, width, stride=1, residual=True)
              for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head.

    A learned per-channel spatial weighting replaces global average pooling because
    face crops are aligned: the centre of the feature map (eyes, nose) matters more
    than its corners.
    """

    def __init__(self, embedding_size: int, spatial: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(512, 512, kernel=spatial, groups=512, activation=False),
            nn.Flatten(1),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet with configurable stage depths, width scale and embedding size.

    ``blocks`` gives the number of residual bottlenecks per stage (a first entry of 1
    means a plain depthwise ConvBlock, as in the original paper); ``(1, 4, 6, 2)`` with
    ``scale=2`` is insightface's ``mbf`` and ``(2, 8, 12, 4)`` with ``scale=4`` its
    ``mbf_large``.

    Initialisation differs from insightface on purpose (the state_dict does not):
    Kaiming fan-in instead of fan-out, because for depthwise kernels fan-out counts all
    output channels and shrinks every depthwise layer by ~sqrt(C), so eval-mode outputs
    before BN statistics exist are ~1e-6, i.e. fp16 underflow; and ``zero_init_residual``
    (default on) starts every residual bottleneck as the identity so that, without BN
    statistics, sums along the residual stages do not grow to ~1e4. In train mode
    BatchNorm makes the conv scale irrelevant either way.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        input_size: int = 112,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"MobileFaceNet needs 4 stage depths, got {list(blocks)}")
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        c64, c128 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c64, kernel=3, stride=2, padding=1))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c64, c64, kernel=3, stride=1, padding=1, groups=64))
        else:
            self.layers.append(Residual(c64, blocks[0], width=128))
        self.layers.extend([
            DepthWise(c64, c64, width=128, stride=2),
            Residual(c64, blocks[1], width=128),
            DepthWise(c64, c128, width=256, stride=2),
            Residual(c128, blocks[2], width=256),
            DepthWise(c128, c128, width=512, stride=2),
            Residual(c128, blocks[3], width=256),
        ])
        self.conv_sep = ConvBlock(c128, 512, kernel=1)
        self.features = GDC(self.embedding_size, downsampled_size(self.input_size, 4))
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # a=0.25 is PReLU's initial slope, the non-linearity after most convs.
                nn.init.kaiming_normal_(m.weight, a=0.25, mode="fan_in",
                                        nonlinearity="leaky_relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, DepthWise) and m.residual:
                    nn.init.zeros_(m.layers[2].layers[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        x = self.conv_sep(x)
        return self.features(x)


def mobilefacenet(embedding_size: int = 512, input_size: int = 112,
                  blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2,
                  zero_init_residual: bool = True) -> MobileFaceNet:
    """insightface's ``mbf`` configuration unless ``blocks``/``scale`` say otherwise."""
    return MobileFaceNet(embedding_size=embedding_size, input_size=input_size,
                         blocks=tuple(blocks), scale=scale,
                         zero_init_residual=zero_init_residual)
