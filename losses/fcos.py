"""FCOS detection targets and losses (Tian et al., ICCV 2019), as CondInst and BoxInst use them.

Locations are the centres of the feature-map cells, ``(x, y) = stride * (j, i) + stride // 2``.
Regression targets are the distances ``(l, t, r, b)`` from a location to the sides of its box,
divided by the level's stride.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from boxinst.losses.distributed import global_mean

INF = float("inf")

#: FCOS's size-of-interest ranges of P3..P7: a location of level i regresses boxes whose largest
#: side distance lies in ``[bounds[i], bounds[i+1]]``.
DEFAULT_SIZES_OF_INTEREST = (64, 128, 256, 512)


@dataclass
class FCOSTargets:
    """Per-location targets of one batch, all levels and images concatenated image-major.

    Attributes:
        labels: ``[M]`` class index, ``num_classes`` for background.
        reg_targets: ``[M, 4]`` ``(l, t, r, b)`` divided by the location's stride.
        gt_index: ``[M]`` index of the assigned ground truth within its image, -1 for background.
    """

    labels: torch.Tensor
    reg_targets: torch.Tensor
    gt_index: torch.Tensor


def size_ranges(num_levels: int, sizes_of_interest=DEFAULT_SIZES_OF_INTEREST) -> list[tuple]:
    """``[(lo, hi), ...]`` per level: ``(0, s0), (s0, s1), ..., (s_last, inf)``."""
    bounds = [0.0, *map(float, sizes_of_interest), INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(
            f"{len(sizes_of_interest)} sizes of interest do not fit {num_levels} levels"
        )
    return list(pairwise(bounds))


def assign_targets(
    locations: torch.Tensor,
    strides: torch.Tensor,
    level_ranges: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    center_sampling_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS assignment of the locations of one image to its ground-truth boxes.

    A location is a candidate for a box when it lies in the box's centre region (the box's
    centre ± ``radius * stride``, clipped to the box; the whole box when radius is 0) and the
    largest of its four distances to the box's sides is within its level's size range. Among
    candidates it takes the box of smallest area.

    Args:
        locations: ``[M, 2]`` (x, y) of all levels.
        strides: ``[M]`` stride of each location's level.
        level_ranges: ``[M, 2]`` (lo, hi) size range of each location's level.
        boxes: ``[G, 4]`` xyxy; ``labels``: ``[G]``.
    Returns:
        labels ``[M]``, reg_targets ``[M, 4]`` (in strides), gt_index ``[M]``.
    """
    m = locations.shape[0]
    if boxes.numel() == 0:
        return (
            torch.full((m,), num_classes, dtype=torch.long, device=locations.device),
            locations.new_zeros(m, 4),
            torch.full((m,), -1, dtype=torch.long, device=locations.device),
        )
    xs, ys = locations[:, 0:1], locations[:, 1:2]
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    ltrb = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)  # [M, G, 4]

    if center_sampling_radius > 0:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        reach = strides[:, None] * center_sampling_radius
        cx0, cy0 = torch.maximum(cx - reach, x0), torch.maximum(cy - reach, y0)
        cx1, cy1 = torch.minimum(cx + reach, x1), torch.minimum(cy + reach, y1)
        region = torch.stack([xs - cx0, ys - cy0, cx1 - xs, cy1 - ys], dim=2)
        inside = region.amin(dim=2) > 0
    else:
        inside = ltrb.amin(dim=2) > 0

    largest = ltrb.amax(dim=2)
    in_range = (largest >= level_ranges[:, 0:1]) & (largest <= level_ranges[:, 1:2])
    areas = ((x1 - x0) * (y1 - y0))[None].expand(m, -1)
    areas = areas.masked_fill(~(inside & in_range), INF)
    min_area, gt_index = areas.min(dim=1)

    positive = min_area < INF
    assigned_labels = labels[gt_index].masked_fill(~positive, num_classes)
    reg_targets = ltrb[torch.arange(m, device=locations.device), gt_index] / strides[:, None]
    return assigned_labels, reg_targets, gt_index.masked_fill(~positive, -1)


def centerness_targets(reg_targets: torch.Tensor) -> torch.Tensor:
    """FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of ``[P, 4]`` targets."""
    lr, tb = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]
    ratio = (lr.amin(dim=1) / lr.amax(dim=1)) * (tb.amin(dim=1) / tb.amax(dim=1))
    return ratio.clamp(min=0).sqrt()


def ltrb_to_boxes(ltrb: torch.Tensor) -> torch.Tensor:
    """Boxes relative to their location: ``(l, t, r, b) -> (-l, -t, r, b)`` in xyxy."""
    return torch.cat([-ltrb[:, :2], ltrb[:, 2:]], dim=1)


def fcos_losses(
    cls_logits: torch.Tensor,
    box_regression: torch.Tensor,
    centerness: torch.Tensor,
    targets: FCOSTargets,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """FCOS's three losses over all locations of a batch.

    - classification: sigmoid focal loss (torchvision) summed, divided by the number of
      positives averaged over workers;
    - box regression: GIoU loss (torchvision) of the positives weighted by their centerness
      targets, divided by the sum of those targets averaged over workers;
    - centerness: BCE with logits of the positives, divided by the number of positives.

    Args:
        cls_logits: ``[M, C]``; box_regression: ``[M, 4]`` (in strides); centerness: ``[M]``.
    """
    positive = targets.labels != num_classes
    num_pos = global_mean(positive.sum().to(cls_logits.dtype)).clamp(min=1.0)

    one_hot = F.one_hot(targets.labels, num_classes + 1)[:, :num_classes].to(cls_logits.dtype)
    loss_cls = (
        sigmoid_focal_loss(
            cls_logits, one_hot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
        )
        / num_pos
    )

    reg_targets = targets.reg_targets[positive]
    ctr_targets = centerness_targets(reg_targets)
    ctr_norm = global_mean(ctr_targets.sum()).clamp(min=1e-6)
    giou = generalized_box_iou_loss(
        ltrb_to_boxes(box_regression[positive]), ltrb_to_boxes(reg_targets), reduction="none"
    )
    loss_box = (giou * ctr_targets).sum() / ctr_norm
    loss_ctr = (
        F.binary_cross_entropy_with_logits(centerness[positive], ctr_targets, reduction="sum")
        / num_pos
    )
    return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
