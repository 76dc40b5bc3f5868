"""CIFAR-stem ResNets from torchvision's blocks, the projection head and the linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

_ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


class CifarResNet(ResNet):
    """torchvision's ResNet with the CIFAR stem (3x3 stride-1 conv, no max-pool), no fc, and
    every stage's width scaled by `width` so tiny CPU runs use the same architecture.

    Built by reusing torchvision's `_make_layer` rather than re-implementing blocks, so layer
    names (`layer2[1].conv2`, ...) match the reference's Grad-CAM layers.
    """

    def __init__(self, arch: str = "resnet18", width: float = 1.0, in_channels: int = 3) -> None:
        if arch not in _ARCHS:
            raise ValueError(f"unknown arch {arch!r} (allowed: {', '.join(_ARCHS)})")
        block, layers = _ARCHS[arch]
        self._width = width
        super().__init__(block, layers)
        stem = self.layer1[0].conv1.in_channels
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.Identity()
        self.fc = nn.Identity()
        self.feature_dim = self._scaled(512) * block.expansion

    def _scaled(self, planes: int) -> int:
        return max(1, round(planes * self._width))

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        if planes == 64:  # first stage: its input is the (scaled) stem, not torchvision's 64
            self.inplanes = self._scaled(64)
        return super()._make_layer(block, self._scaled(planes), blocks, stride, dilate)


class ProjectionHead(nn.Module):
    """dim -> dim -> ReLU -> out, L2-normalised (SupContrast's 'mlp' head)."""

    def __init__(self, dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class ExConNet(nn.Module):
    """Encoder + projection head + linear head. Every method uses the same container so
    checkpoints, probing and (later) Grad-CAM treat all methods alike."""

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet18",
        width: float = 1.0,
        in_channels: int = 3,
        proj_dim: int = 128,
    ) -> None:
        super().__init__()
        self.encoder = CifarResNet(arch, width, in_channels)
        dim = self.encoder.feature_dim
        self.projector = ProjectionHead(dim, proj_dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of encoder + linear head (what Grad-CAM and evaluation look at)."""
        return self.classifier(self.encoder(x))
