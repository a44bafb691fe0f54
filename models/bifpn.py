"""BiFPN (Tan et al., EfficientDet, CVPR 2020; the paper's [27]), the feature pyramid of Table 4's
strongest BoxInst models, laid out as AdelaiDet builds it for CondInst and BoxInst
(``build_fcos_resnet_bifpn_backbone``; its BoxInst configs: 160 channels, 6 cells, SyncBN).

From a ResNet's C3-C5: each is brought to the pyramid's width by a 1x1 conv and norm; P6 is C5
reduced by its own 1x1 conv and norm, then max-pooled by 2; P7 is P6 max-pooled by 2. Cells of
repeated top-down and bottom-up fusion then refine the five levels, which leave as P3-P7 at
strides 8-128, the levels the FCOS head expects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import ResNet

from boxinst.models.layers import group_norm


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        return group_norm(channels)
    raise ValueError(f"unknown BiFPN norm {norm!r}: expected 'BN' or 'GN'")


def _reduction(in_channels: int, channels: int, norm: str, bias: bool) -> nn.Module:
    """1x1 conv + norm to ``channels``, or nothing when the input has that width already
    (AdelaiDet's laterals and P6 resampler; they differ in the conv's bias, kept here so that
    the parameter counts match)."""
    if in_channels == channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=bias), _norm(norm, channels))


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """Half the resolution, rounded up: EfficientDet's 3x3 max pool with stride 2."""
    return F.max_pool2d(x, 3, stride=2, padding=1)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` at the spatial size of ``like``, a neighbouring level: max-pooled when ``x`` is
    the finer one, nearest-upsampled when it is the coarser one."""
    size = like.shape[-2:]
    if x.shape[-2] > size[0] or x.shape[-1] > size[1]:
        x = _downsample(x)
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode="nearest")
    return x


class FastFusion(nn.Module):
    """A BiFPN node: EfficientDet's fast normalised fusion ``sum_i w_i x_i / (sum_j w_j + 1e-4)``
    of same-shape maps, ``w = ReLU(learned weights)`` (initially 1), then swish and a 3x3 conv
    with norm (no bias, no activation after it), in AdelaiDet's order."""

    EPS = 1e-4

    def __init__(self, num_inputs: int, channels: int, norm: str):
        super().__init__()
        self.weights = nn.Parameter(torch.ones(num_inputs))
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = _norm(norm, channels)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        weights = F.relu(self.weights)
        weights = weights / (weights.sum() + self.EPS)
        fused = sum(w * x for w, x in zip(weights, inputs, strict=True))
        return self.norm(self.conv(F.silu(fused)))


class BiFPNCell(nn.Module):
    """One top-down and one bottom-up pass over ``num_levels`` maps of one width, finest first.

    Top-down, from the second-coarsest level to the finest, a node fuses the level's input with
    the top-down node above it (the coarsest input, for the first). Bottom-up, from the
    second-finest level to the coarsest, a node fuses the level's input, its top-down node
    (every level but the coarsest has one) and the output below it. The outputs are the finest
    top-down node and the bottom-up nodes: ``2 * num_levels - 2`` nodes, AdelaiDet's cell.
    """

    def __init__(self, num_levels: int, channels: int, norm: str):
        super().__init__()
        self.top_down = nn.ModuleList(FastFusion(2, channels, norm) for _ in range(num_levels - 1))
        self.bottom_up = nn.ModuleList(
            FastFusion(2 if level == num_levels - 1 else 3, channels, norm)
            for level in range(1, num_levels)
        )

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        coarsest = len(inputs) - 1
        top_down = {coarsest: inputs[coarsest]}
        for level, fuse in zip(range(coarsest - 1, -1, -1), self.top_down, strict=True):
            above = _resize(top_down[level + 1], inputs[level])
            top_down[level] = fuse([inputs[level], above])
        outputs = [top_down[0]]
        for level, fuse in zip(range(1, coarsest + 1), self.bottom_up, strict=True):
            below = _resize(outputs[-1], inputs[level])
            same = [inputs[level]] if level == coarsest else [inputs[level], top_down[level]]
            outputs.append(fuse([*same, below]))
        return outputs


class BiFPN(nn.Module):
    """C3, C4, C5 (``in_channels`` wide) -> P3-P7 of ``channels`` each, through ``repeats``
    :class:`BiFPNCell` s. Convs keep PyTorch's default initialisation, as the official code.

    The laterals run once, before the cells; AdelaiDet runs the same lateral at each node of its
    first cell that reads the level: the same values, but batch norm's running statistics of
    C4's and C5's laterals are updated twice per step there."""

    def __init__(
        self, in_channels: Sequence[int], channels: int = 160, repeats: int = 6, norm: str = "BN"
    ):
        super().__init__()
        self.laterals = nn.ModuleList(
            _reduction(width, channels, norm, bias=True) for width in in_channels
        )
        self.p6 = _reduction(in_channels[-1], channels, norm, bias=False)
        self.cells = nn.ModuleList(
            BiFPNCell(len(in_channels) + 2, channels, norm) for _ in range(repeats)
        )

    def forward(self, features: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        p6 = _downsample(self.p6(features[-1]))
        levels = [lateral(x) for lateral, x in zip(self.laterals, features, strict=True)]
        levels += [p6, _downsample(p6)]
        for cell in self.cells:
            levels = cell(levels)
        return OrderedDict((f"p{index + 3}", level) for index, level in enumerate(levels))


class BackboneWithBiFPN(nn.Module):
    """A ResNet's C3-C5 (``body``) and a :class:`BiFPN` over them (``fpn``), with the interface
    of torchvision's ``BackboneWithFPN``: images -> ordered dict ``p3``..``p7``."""

    def __init__(
        self, resnet: ResNet, in_channels: Sequence[int], channels: int, repeats: int, norm: str
    ):
        super().__init__()
        self.body = IntermediateLayerGetter(
            resnet, return_layers={"layer2": "c3", "layer3": "c4", "layer4": "c5"}
        )
        self.fpn = BiFPN(in_channels, channels, repeats, norm)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(list(self.body(images).values()))
