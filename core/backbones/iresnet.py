"""Improved ResNet (IResNet) backbones as used by ArcFace / Partial FC.

Parameter names and shapes follow insightface's ``arcface_torch`` IResNet exactly so
that published ``r18``/``r34``/``r50``/``r100`` backbone checkpoints load with
``strict=True``: that is the only way results here can be compared with the papers'
released models, and the reason the module attribute names below must not change.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

__all__ = [
    "IBasicBlock",
    "IResNet",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "IRESNET_LAYERS",
    "downsampled_size",
]

#: Blocks per stage for each depth (the stage widths are always 64-128-256-512).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def downsampled_size(size: int, halvings: int) -> int:
    """Spatial size after ``halvings`` stride-2 convolutions (3x3 pad 1 or 1x1 pad 0).

    Both kinds of stride-2 convolution map ``n`` to ``ceil(n / 2)``, so the flattened
    feature size is known before the first forward pass; the fully connected layer
    needs it at construction time.
    """
    for _ in range(halvings):
        size = (size + 1) // 2
    return size


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN -> conv -> BN -> PReLU -> conv -> BN.

    The stride sits on the second convolution and there is no activation after the
    addition; both are what distinguish IResNet from torchvision's BasicBlock and what
    the released checkpoints were trained with.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet trunk with the ArcFace "BN-Dropout-FC-BN" embedding head.

    ``input_size`` may differ from 112: the four stride-2 stages shrink it to
    ``ceil(input_size / 16)`` and the ``fc`` layer is sized for that, which keeps 112
    identical to insightface (7x7 -> 25088 inputs) while allowing cheaper inputs.

    ``zero_init_residual`` (default on, unlike insightface) zeroes the last BN of every
    residual branch so each block starts as the identity. Before BN running statistics
    exist, eval-mode outputs otherwise grow with depth (iresnet100 reaches ~1e11, which
    overflows fp16 autocast): an epoch-0 evaluation or a freshly copied DCQ momentum
    encoder would then produce inf/NaN. With it on, outputs stay O(1) at any depth.
    Pass ``False`` for insightface's starting point (up to the conv init scale, which
    BatchNorm makes irrelevant in train mode).
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {list(layers)}")
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        channels = 512 * IBasicBlock.expansion
        spatial = downsampled_size(self.input_size, 4)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-05)
        # In-place dropout is safe here: its input is a fresh flatten of bn2's output.
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(channels * spatial * spatial, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size, eps=1e-05)
        self._init_weights(zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample: Optional[nn.Module] = None
        out_planes = planes * IBasicBlock.expansion
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes, eps=1e-05),
            )
        modules = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        modules.extend(IBasicBlock(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Every convolution feeds a BatchNorm, so in train mode the conv scale is
        # irrelevant; it matters in eval mode before running statistics exist (an epoch-0
        # evaluation, a fresh momentum encoder). insightface's N(0, 0.1) overflows there
        # (iresnet100 gives NaN, iresnet50 ~1e26); Kaiming fan-out keeps fp32 finite even
        # without zero_init_residual.
        # The embedding BN keeps ArcFace's frozen unit scale so that the margin loss, not
        # a learned gamma, controls the feature norm.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn3.weight, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def _iresnet(name: str, embedding_size: int, input_size: int, dropout: float,
             zero_init_residual: bool) -> IResNet:
    return IResNet(IRESNET_LAYERS[name], embedding_size=embedding_size, input_size=input_size,
                   dropout=dropout, zero_init_residual=zero_init_residual)


def iresnet18(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0,
              zero_init_residual: bool = True) -> IResNet:
    """IResNet-18: the smallest depth, for quick GPU experiments."""
    return _iresnet("iresnet18", embedding_size, input_size, dropout, zero_init_residual)


def iresnet34(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0,
              zero_init_residual: bool = True) -> IResNet:
    """IResNet-34."""
    return _iresnet("iresnet34", embedding_size, input_size, dropout, zero_init_residual)


def iresnet50(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0,
              zero_init_residual: bool = True) -> IResNet:
    """IResNet-50: the depth most Partial FC / DCQ tables report."""
    return _iresnet("iresnet50", embedding_size, input_size, dropout, zero_init_residual)


def iresnet100(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0,
               zero_init_residual: bool = True) -> IResNet:
    """IResNet-100: the large-scale (WebFace42M / Glint360K) reference depth."""
    return _iresnet("iresnet100", embedding_size, input_size, dropout, zero_init_residual)
