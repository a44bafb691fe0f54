"""Colour similarity of neighbouring pixels, Eq. (7) of the BoxInst paper, computed in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_lab

from boxinst.losses.mask import unfold_neighbours


def images_to_lab(images_rgb: torch.Tensor, mask_stride: int = 4) -> torch.Tensor:
    """Average-pool RGB images by the mask stride and convert them to CIE LAB (D65).

    Args:
        images_rgb: ``[B, 3, H, W]`` RGB in [0, 255] (unnormalised, any float or uint8 dtype).
        mask_stride: the stride of the instance masks (4 in CondInst/BoxInst).
    Returns:
        ``[B, 3, H // stride, W // stride]`` LAB, L in [0, 100], a and b in about [-128, 127].
    """
    pooled = F.avg_pool2d(images_rgb.float(), kernel_size=mask_stride, stride=mask_stride)
    return rgb_to_lab((pooled / 255.0).clamp(0.0, 1.0))


def color_similarity(
    images_lab: torch.Tensor,
    kernel_size: int = 3,
    dilation: int = 2,
    theta: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (7): ``S_e = exp(-||c_i - c_j|| / theta)`` for each pixel and its K*K-1 neighbours.

    Args:
        images_lab: ``[B, 3, H, W]`` LAB images.
        valid: optional ``[B, H, W]`` mask of the pixels that belong to the image (not padding,
            not rows a dataset asks to ignore). An edge with an end outside it gets 0.
    Returns:
        ``[B, K*K-1, H, W]``; neighbours that fall outside the image get 0.
    """
    b, _, h, w = images_lab.shape
    neighbours = unfold_neighbours(images_lab, kernel_size, dilation)
    distance = torch.linalg.vector_norm(images_lab[:, :, None] - neighbours, dim=1)
    similarity = torch.exp(-distance / theta)
    if valid is None:
        valid = images_lab.new_ones(b, h, w)
    valid = valid.to(images_lab.dtype)[:, None]
    edge_valid = valid * unfold_neighbours(valid, kernel_size, dilation)[:, 0]
    return similarity * edge_valid
