"""Deformable 3x3 convolutions in a torchvision ResNet: the "DCN" backbones of the paper's Table 4.

DCNv1 (Dai et al., ICCV 2017) learns a 2-D offset for every kernel tap at every output position;
DCNv2 (Zhu et al., CVPR 2019, the paper's [34]) adds a per-tap modulation scalar. The offsets
(and modulations) come from a plain conv over the block's input to the 3x3 conv, zero-initialised
as in detectron2's ``DeformBottleneckBlock`` that AdelaiDet's configs use, so that a converted
block computes exactly what the plain one did until training moves the offsets.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models.resnet import ResNet
from torchvision.ops import deform_conv2d


class DeformableConv2d(nn.Module):
    """A deformable version of ``conv``: the same ``weight`` (parameter name and shape, so an
    ImageNet state dict of the plain ResNet loads into it) sampled at learned offsets.

    ``offset`` is a conv with ``conv``'s kernel, stride, padding and dilation predicting
    ``2 * k * k`` offsets per output position, plus ``k * k`` modulation logits when
    ``modulated`` (DCNv2). Both start at zero. The modulation is ``2 * sigmoid(logit)``, which
    is 1 at initialisation; DCNv2 and detectron2 use ``sigmoid(logit)``, which starts at 0.5 and
    so halves a pretrained conv's response at step 0. The range (0, 2) keeps the plain conv as
    the starting point, as the offsets do.
    """

    def __init__(self, conv: nn.Conv2d, modulated: bool = False):
        super().__init__()
        self.modulated = modulated
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = conv.weight
        self.bias = conv.bias
        taps = conv.kernel_size[0] * conv.kernel_size[1]
        self.offset = nn.Conv2d(
            conv.in_channels,
            (3 if modulated else 2) * taps,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deformable conv of ``x``. A kernel tap whose offset is NaN (a diverged step, NaN
        or overflowing inputs) samples nothing but gets a NaN modulation, so its output is NaN
        as a plain conv's would be, the loss is non-finite and the step is skipped: given the
        NaN offset, torchvision's kernel would read memory at a NaN position (on the CPU, a
        segmentation fault)."""
        offset = self.offset(x)
        batch, channels, height, width = offset.shape
        taps = channels // 3 if self.modulated else channels // 2
        if self.modulated:
            offset, logits = offset.split([2 * taps, taps], dim=1)
            mask = 2 * logits.sigmoid()
        else:
            mask = offset.new_ones(batch, taps, height, width)
        invalid = offset.isnan()
        mask = mask.masked_fill(invalid.view(batch, taps, 2, height, width).any(2), float("nan"))
        return deform_conv2d(
            x,
            offset.masked_fill(invalid, 0.0),
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def extra_repr(self) -> str:
        out_channels, in_channels, kh, kw = self.weight.shape
        version = "v2 (modulated)" if self.modulated else "v1"
        return f"{in_channels}, {out_channels}, {kh}x{kw}, stride={self.stride}, {version}"


def deform_resnet(
    resnet: ResNet, stages: Iterable[int], interval: int = 1, modulated: bool = False
) -> None:
    """Make the 3x3 conv of blocks of ``resnet`` deformable, in place.

    In each of ``stages`` (2..5 for res2..res5), every ``interval``-th block from its first
    gets a :class:`DeformableConv2d` for its ``conv2``: the 3x3 of a Bottleneck, the second 3x3
    of a BasicBlock. detectron2's ``DEFORM_ON_PER_STAGE`` picks the stages; AdelaiDet's
    ``DEFORM_INTERVAL`` (its "dcni3" configs: 3) the blocks, block ``i`` when ``i % interval == 0``.
    torchvision's Bottleneck strides in its 3x3 conv, so a stage's first block deforms a stride-2
    conv; detectron2 with the MSRA weights strides in the 1x1 conv (same parameters).
    """
    for stage in stages:
        for index, block in enumerate(getattr(resnet, f"layer{stage - 1}")):
            if index % interval == 0:
                block.conv2 = DeformableConv2d(block.conv2, modulated)
