"""CondInst's mask branch: fuses P3-P5 into compact mask features at stride 8."""

from __future__ import annotations

import torch
from torch import nn

from boxinst.models.layers import aligned_bilinear, conv_norm_relu


class MaskBranch(nn.Module):
    """P3, P4, P5 -> 3x3 conv each -> upsampled to P3 and summed -> ``num_convs`` 3x3 convs ->
    1x1 conv to ``out_channels`` (8 in CondInst and BoxInst). BatchNorm, as the official code."""

    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 128,
        out_channels: int = 8,
        num_convs: int = 4,
        num_inputs: int = 3,
        norm: str = "BN",
    ):
        super().__init__()
        self.refine = nn.ModuleList(
            conv_norm_relu(in_channels, channels, norm) for _ in range(num_inputs)
        )
        self.tower = nn.Sequential(
            *[conv_norm_relu(channels, channels, norm) for _ in range(num_convs)],
            nn.Conv2d(channels, out_channels, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: P3, P4, P5 (strides 8, 16, 32). Returns ``[B, out_channels, H3, W3]``."""
        fused = self.refine[0](features[0])
        for level, (refine, feature) in enumerate(
            zip(self.refine[1:], features[1:], strict=True), start=1
        ):
            fused = fused + aligned_bilinear(refine(feature), 2**level)
        return self.tower(fused)
