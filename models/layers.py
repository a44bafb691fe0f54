"""Small building blocks shared by the CondInst modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def aligned_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample ``[B, C, H, W]`` by an integer ``factor`` to ``[B, C, factor*H, factor*W]`` so that
    output pixel centres stay aligned with the input's (CondInst's upsampling).

    An input cell ``i`` has its centre at ``factor * i + factor // 2`` of the output grid;
    interpolating corner-aligned between those centres, then shifting by ``factor // 2``
    (replicating the border), gives that alignment, unlike ``F.interpolate``'s half-pixel one.
    The border is replicated by indexing, not ``F.pad(mode="replicate")``, whose backward
    ``torch.compile`` cannot build here.
    """
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = _replicate(x, rows=range(h + 1), cols=range(w + 1))  # one row and column more
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    shift = factor // 2  # output pixel i is interpolated pixel i - shift, the first one repeated
    return _replicate(
        x, rows=range(-shift, factor * h - shift), cols=range(-shift, factor * w - shift)
    )


def _replicate(x: torch.Tensor, rows: range, cols: range) -> torch.Tensor:
    """``x[..., rows, cols]`` with the indices outside the map clamped to its border."""
    h, w = x.shape[-2:]
    row_index = torch.arange(rows.start, rows.stop, device=x.device).clamp(0, h - 1)
    col_index = torch.arange(cols.start, cols.stop, device=x.device).clamp(0, w - 1)
    return x.index_select(-2, row_index).index_select(-1, col_index)


def feature_locations(height: int, width: int, stride: int, device=None) -> torch.Tensor:
    """``[H*W, 2]`` image coordinates ``(x, y)`` of the centres of a feature map's cells."""
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride // 2
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of 32 groups (FCOS, CondInst); of ``channels / 2`` below 64 channels, so that
    every group holds two channels: a one-channel group of one image's 1x1 level (P7 of a small
    image) is a single value, which PyTorch refuses to normalise."""
    return nn.GroupNorm(32 if channels >= 64 else max(channels // 2, 1), channels)


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (no bias) + GroupNorm (:func:`group_norm`) or BatchNorm + ReLU."""
    if norm == "GN":
        norm_layer: nn.Module = group_norm(out_channels)
    elif norm == "BN":
        norm_layer = nn.BatchNorm2d(out_channels)
    else:
        raise ValueError(f"unknown norm {norm!r}: expected 'GN' or 'BN'")
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm_layer, nn.ReLU()
    )
