"""Mask quality where the detector cannot blur it: the model's mask of every ground-truth
instance, predicted from the location that training supervises it at, against its true mask.

COCO mask AP mixes detection and masks: a run whose detector is a little worse loses mask AP
with perfect masks. Here each instance of an evaluation set with masks gets the dynamic mask
head's output at its most central positive location (FCOS's assignment with the run's loss
settings, the location of highest centerness target), at the input resolution, and its IoU with
the true mask is averaged over the instances; the IoU of the filled true box with the true mask
is the same measure of the "box as mask" solution (the paper's Table 3 baseline), so the two
say how far a box-supervised model's masks are from their boxes and from the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boxinst.losses.fcos import centerness_targets
from boxinst.models.condinst import CondInst, HeadOutputs
from boxinst.models.layers import aligned_bilinear
from boxinst.platform.metrics import MASK_IOU, MASK_IOU_BOX
from boxinst.platform.training.objective import LossConfig, assign_batch


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    return (a & b).sum(1).float() / (a | b).sum(1).clamp(min=1).float()


@dataclass
class MaskIoU:
    """Sums of the IoUs of the instances seen so far (:meth:`add` a batch at a time)."""

    masks: float = 0.0  # the model's masks at the true locations
    boxes: float = 0.0  # the filled true boxes
    instances: int = 0

    @torch.no_grad()
    def add(
        self, model: CondInst, outputs: HeadOutputs, targets: list[dict], cfg: LossConfig
    ) -> None:
        """Add the instances of one batch: ``outputs`` of an eval-mode forward of the padded
        images, ``targets`` with their ``masks`` (all instances must have them)."""
        _, reg_targets, gt_index = assign_batch(outputs, targets, model.config.num_classes, cfg)
        images, locations, truths, boxes = [], [], [], []
        for image, target in enumerate(targets):
            positive = gt_index[image] >= 0
            centrality = torch.full_like(gt_index[image], -1.0, dtype=torch.float32)
            centrality[positive] = centerness_targets(reg_targets[image][positive])
            for g in range(len(target["boxes"])):
                scores = torch.where(gt_index[image] == g, centrality, -1.0)
                if scores.max() >= 0:  # an instance too small for any location has no mask
                    images.append(image)
                    locations.append(int(scores.argmax()))
                    truths.append(target["masks"][g].bool())
                    boxes.append(target["boxes"][g])
        if not images:
            return
        device = outputs.mask_features.device
        logits = model.instance_mask_logits(
            outputs, torch.tensor(images, device=device), torch.tensor(locations, device=device)
        )
        probs = aligned_bilinear(logits[:, None].sigmoid(), model.config.mask_out_stride)[:, 0]
        true = torch.stack(truths).to(device)
        predicted = probs[:, : true.shape[1], : true.shape[2]] > model.config.mask_threshold
        box = torch.stack(boxes).to(device)
        ys = torch.arange(true.shape[1], device=device)[None, :, None]
        xs = torch.arange(true.shape[2], device=device)[None, None, :]
        x0, y0, x1, y1 = (box[:, k, None, None] for k in range(4))
        filled = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        self.masks += _iou(predicted, true).sum().item()
        self.boxes += _iou(filled, true).sum().item()
        self.instances += len(images)

    def __iadd__(self, other: MaskIoU) -> MaskIoU:
        """The sums of ``other``'s instances added (another batch's, another worker's)."""
        self.masks += other.masks
        self.boxes += other.boxes
        self.instances += other.instances
        return self

    def metrics(self) -> dict[str, float]:
        """Mean IoUs (NaN without instances)."""
        n = self.instances or float("nan")
        return {MASK_IOU: self.masks / n, MASK_IOU_BOX: self.boxes / n}
