"""FCOS head with CondInst's controller (Tian et al., FCOS ICCV 2019; CondInst ECCV 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from boxinst.models.layers import conv_norm_relu


class Scale(nn.Module):
    """A learnable scalar multiplying a level's box regression (FCOS's per-level scales)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared over P3..P7: a classification tower and a box tower (4 GroupNorm convs each).

    The box tower feeds the box regression, the centerness (CondInst puts it on the regression
    branch) and the controller that predicts each location's dynamic mask-head parameters.
    Box regressions are ``ReLU(scale_l * conv(x))`` in units of the level's stride.
    """

    def __init__(
        self,
        num_classes: int,
        num_mask_params: int,
        num_levels: int = 5,
        channels: int = 256,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.cls_tower = nn.Sequential(
            *[conv_norm_relu(channels, channels, norm) for _ in range(num_convs)]
        )
        self.box_tower = nn.Sequential(
            *[conv_norm_relu(channels, channels, norm) for _ in range(num_convs)]
        )
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.controller = nn.Conv2d(channels, num_mask_params, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Per level: ``cls`` [B, C, H, W], ``box`` [B, 4, H, W], ``centerness`` [B, 1, H, W],
        ``params`` [B, P, H, W]."""
        out: dict[str, list[torch.Tensor]] = {"cls": [], "box": [], "centerness": [], "params": []}
        for level, feature in enumerate(features):
            cls_feature = self.cls_tower(feature)
            box_feature = self.box_tower(feature)
            out["cls"].append(self.cls_logits(cls_feature))
            out["box"].append(torch.relu(self.scales[level](self.box_pred(box_feature))))
            out["centerness"].append(self.centerness(box_feature))
            out["params"].append(self.controller(box_feature))
        return out
