"""The training objective: wires CondInst's outputs to the FCOS and mask losses.

One batch is a padded image tensor (RGB in [0, 255]) and, per image, a target dict:

- ``boxes`` [G, 4] xyxy in input pixels, ``labels`` [G] contiguous class indices;
- ``masks`` [G, H, W] (padded size) ground-truth masks; only rows with ``has_mask`` are read;
- ``has_mask`` [G] bool, set by the regime's mask policy;
- ``image_size`` (h, w) of the image inside the padding;
- ``ignore_bottom`` (optional, int) input rows at the bottom left out of the pairwise term
  (the COCO annotation artefact the official code removes; a dataset option).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boxinst.losses.color import color_similarity, images_to_lab
from boxinst.losses.fcos import (
    DEFAULT_SIZES_OF_INTEREST,
    FCOSTargets,
    assign_targets,
    fcos_losses,
    size_ranges,
)
from boxinst.losses.mask import mixed_mask_loss, pairwise_warmup_factor
from boxinst.models.backbone import FPN_STRIDES
from boxinst.models.condinst import CondInst, HeadOutputs


@dataclass
class LossConfig:
    """Loss settings; defaults follow the BoxInst paper (tau from its Table 1 ablation)."""

    use_projection: bool = True
    use_pairwise: bool = True
    use_prior: bool = False  # dice to the box-prior (GrabCut) masks of box-supervised instances
    prior_weight: float = 1.0
    projection_weight: float = 1.0
    pairwise_weight: float = 1.0
    pairwise_tau: float = 0.1
    pairwise_kernel_size: int = 3
    pairwise_dilation: int = 2
    color_theta: float = 2.0
    pairwise_warmup_iters: int = 10_000
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    center_sampling_radius: float = 1.5
    sizes_of_interest: tuple[int, ...] = DEFAULT_SIZES_OF_INTEREST
    max_mask_instances_per_image: int = 256


def box_masks_at_stride(boxes: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """``[G, H/stride, W/stride]`` masks of the boxes sampled like the ground-truth masks.

    Cell ``(i, j)`` stands for input pixel ``(stride*i + stride//2, stride*j + stride//2)``; it is
    inside when that pixel is, with the box covering pixels ``floor(x0) .. floor(x1)`` as the
    official code draws it.
    """
    start = stride // 2
    ys = torch.arange(start, height, stride, device=boxes.device, dtype=boxes.dtype)
    xs = torch.arange(start, width, stride, device=boxes.device, dtype=boxes.dtype)
    x0, y0, x1, y1 = boxes.floor().unbind(dim=1)
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()


def pairwise_valid_region(
    targets: list[dict], height: int, width: int, stride: int, device
) -> torch.Tensor:
    """``[B, H/stride, W/stride]``: 1 where a pixel of the image (not padding, not ignored rows)."""
    start = stride // 2
    ys = torch.arange(start, height, stride, device=device)
    xs = torch.arange(start, width, stride, device=device)
    rows = []
    for target in targets:
        h, w = target["image_size"]
        last_row = h - int(target.get("ignore_bottom", 0))
        rows.append((ys[:, None] < last_row) & (xs[None, :] < w))
    return torch.stack(rows).float()


def assign_batch(outputs: HeadOutputs, targets: list[dict], num_classes: int, cfg: LossConfig):
    """FCOS targets of every image: labels ``[B, M]``, reg_targets ``[B, M, 4]``, gt_index
    ``[B, M]`` (-1 for background)."""
    ranges = torch.tensor(
        size_ranges(len(FPN_STRIDES), cfg.sizes_of_interest), device=outputs.locations.device
    )
    per_image = [
        assign_targets(
            outputs.locations,
            outputs.strides,
            ranges[outputs.levels],
            t["boxes"],
            t["labels"],
            num_classes,
            cfg.center_sampling_radius,
        )
        for t in targets
    ]
    labels, reg_targets, gt_index = (torch.stack(parts) for parts in zip(*per_image, strict=True))
    return labels, reg_targets, gt_index


def _sample_mask_instances(gt_index: torch.Tensor, cap: int, generator: torch.Generator | None):
    """(image, location) pairs of the positives, at most ``cap`` per image drawn at random."""
    image_idx, location_idx = [], []
    for image, row in enumerate(gt_index):
        positives = (row >= 0).nonzero()[:, 0]
        if positives.numel() > cap:
            order = torch.randperm(positives.numel(), generator=generator)[:cap]
            positives = positives[order.to(positives.device)]
        image_idx.append(torch.full_like(positives, image))
        location_idx.append(positives)
    return torch.cat(image_idx), torch.cat(location_idx)


def compute_losses(
    model: CondInst,
    images: torch.Tensor,
    targets: list[dict],
    cfg: LossConfig,
    iteration: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """All training losses of one batch: ``loss_cls``, ``loss_box``, ``loss_ctr`` (FCOS) and
    ``loss_mask`` (dice), ``loss_proj``, ``loss_pairwise`` (BoxInst) from the regime's mixer."""
    outputs = model(images)  # through the DDP wrapper when distributed: it syncs the gradients
    core: CondInst = getattr(model, "module", model)
    num_classes = core.config.num_classes
    labels, reg_targets, gt_index = assign_batch(outputs, targets, num_classes, cfg)
    losses = fcos_losses(
        outputs.cls.flatten(0, 1),
        outputs.box.flatten(0, 1),
        outputs.centerness.flatten(0, 1),
        FCOSTargets(labels.flatten(), reg_targets.flatten(0, 1), gt_index.flatten()),
        num_classes,
        cfg.focal_alpha,
        cfg.focal_gamma,
    )

    image_idx, location_idx = _sample_mask_instances(
        gt_index, cfg.max_mask_instances_per_image, generator
    )
    mask_logits = core.instance_mask_logits(outputs, image_idx, location_idx)

    stride = core.config.mask_out_stride
    height, width = images.shape[-2:]
    start = stride // 2
    offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets], device=images.device).cumsum(0)
    instance = offsets[image_idx] + gt_index[image_idx, location_idx]
    has_mask = torch.cat([t["has_mask"].bool() for t in targets])
    # Only masks of has_mask instances are read: the others never reach the loss.
    gt_masks = torch.cat(
        [
            torch.where(
                t["has_mask"].bool()[:, None, None], t["masks"][:, start::stride, start::stride], 0
            )
            for t in targets
        ]
    )
    box_masks = torch.cat([box_masks_at_stride(t["boxes"], height, width, stride) for t in targets])
    prior_masks = has_prior = None
    if cfg.use_prior:
        prior_masks = torch.cat(
            [t["prior_masks"][:, start::stride, start::stride] for t in targets]
        )
        has_prior = torch.cat([t["has_prior"].bool() for t in targets])

    similarity = None
    if cfg.use_pairwise and not bool(has_mask[instance].all()):
        lab = images_to_lab(images, stride)
        valid = pairwise_valid_region(targets, height, width, stride, images.device)
        similarity = color_similarity(
            lab, cfg.pairwise_kernel_size, cfg.pairwise_dilation, cfg.color_theta, valid
        )

    losses.update(
        mixed_mask_loss(
            mask_logits,
            has_mask[instance],
            gt_masks[instance],
            box_masks[instance],
            similarity,
            image_idx,
            use_projection=cfg.use_projection,
            use_pairwise=cfg.use_pairwise,
            projection_weight=cfg.projection_weight,
            pairwise_weight=cfg.pairwise_weight,
            prior_masks=None if prior_masks is None else prior_masks[instance],
            has_prior=None if has_prior is None else has_prior[instance],
            prior_weight=cfg.prior_weight,
            pairwise_warmup=pairwise_warmup_factor(iteration, cfg.pairwise_warmup_iters),
            tau=cfg.pairwise_tau,
            kernel_size=cfg.pairwise_kernel_size,
            dilation=cfg.pairwise_dilation,
        )
    )
    return losses
