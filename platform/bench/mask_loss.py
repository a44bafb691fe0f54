"""``boxinst bench mask-loss``: BoxInst's box-only mask loss, Eq. (6) (mean projection term,
Eq. 3, plus the pairwise term, Eq. 8), forward and backward, with the crop-local pairwise term
that training uses beside the full-image formulation of the paper and the official code, on a
COCO-like batch.

Time: the two run in turns, ``repeats`` rounds after one warm-up call each (median and minimum
wall clock, median CPU time).
Peak memory: each formulation runs once more in a fresh process of its own, where
:func:`boxinst.platform.bench.harness.peak_memory_mib` measures the memory the forward and
backward pass adds above its inputs (CPU: the resident high-water mark, reset just before;
CUDA: ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boxinst.losses.color import color_similarity, images_to_lab
from boxinst.losses.mask import pairwise_loss, pairwise_loss_full_image, projection_loss
from boxinst.platform.bench.harness import (
    default_device,
    in_fresh_processes,
    peak_memory_mib,
    table,
    time_interleaved,
)
from boxinst.platform.training.objective import box_masks_at_stride

MASK_STRIDE = 4
FORMULATIONS = {"crop_local": pairwise_loss, "full_image": pairwise_loss_full_image}
#: COCO's object areas in pixels (small < 32², medium < 96², large) and their shares of the
#: annotations (41%, 34%, 24%, from the COCO detection evaluation page); the smallest box
#: covers one mask cell and the largest half the image.
AREA_RANGES = ((4**2, 32**2, 0.41), (32**2, 96**2, 0.34), (96**2, None, 0.25))


@dataclass
class MaskLossBatch:
    logits: torch.Tensor  # [N, h, w] mask logits at 1/4 resolution
    similarity: torch.Tensor  # [B, 8, h, w] colour similarity of each image (Eq. 7)
    image_index: torch.Tensor  # [N]
    box_masks: torch.Tensor  # [N, h, w]


def coco_like_boxes(generator: torch.Generator, count: int, height: int, width: int):
    """``[count, 4]`` xyxy boxes inside a ``height`` x ``width`` image whose areas follow COCO's
    small/medium/large mix (log-uniform within each range), aspect ratios in [1/2, 2]."""
    shares = torch.tensor([share for *_, share in AREA_RANGES])
    kinds = torch.multinomial(shares, count, replacement=True, generator=generator)
    boxes = []
    draws = torch.rand(count, 4, generator=generator).tolist()
    for kind, (u, v, x, y) in zip(kinds.tolist(), draws, strict=True):
        low, high, _ = AREA_RANGES[kind]
        high = high or height * width / 2
        area = math.exp(math.log(low) + u * math.log(high / low))
        aspect = 2.0 ** (2 * v - 1)
        box_w = min(math.sqrt(area * aspect), width)
        box_h = min(area / box_w, height)
        x0, y0 = x * (width - box_w), y * (height - box_h)
        boxes.append([x0, y0, x0 + box_w, y0 + box_h])
    return torch.tensor(boxes)


def coco_like_batch(
    images: int, instances: int, height: int, width: int, seed: int, device: torch.device
) -> MaskLossBatch:
    """Random logits, ``instances`` COCO-like boxes per image and the colour similarity of smooth
    random images, on a mask grid of ``ceil(height / 4) x ceil(width / 4)`` cells."""
    g = torch.Generator().manual_seed(seed)
    cells_h, cells_w = math.ceil(height / MASK_STRIDE), math.ceil(width / MASK_STRIDE)
    padded = (cells_h * MASK_STRIDE, cells_w * MASK_STRIDE)
    coarse = torch.rand(images, 3, max(cells_h // 8, 1), max(cells_w // 8, 1), generator=g)
    rgb = F.interpolate(coarse, size=padded, mode="bilinear", align_corners=False) * 200
    rgb = rgb + torch.rand(rgb.shape, generator=g) * 55
    similarity = color_similarity(images_to_lab(rgb, MASK_STRIDE))
    box_masks = torch.cat(
        [
            box_masks_at_stride(coco_like_boxes(g, instances, height, width), *padded, MASK_STRIDE)
            for _ in range(images)
        ]
    )
    logits = torch.randn(images * instances, cells_h, cells_w, generator=g) * 2
    image_index = torch.arange(images).repeat_interleave(instances)
    return MaskLossBatch(
        logits.to(device), similarity.to(device), image_index.to(device), box_masks.to(device)
    )


def forward_backward(formulation: str, batch: MaskLossBatch) -> tuple[float, torch.Tensor]:
    """Eq. (6) of the box-only regime, ``mean(L_proj) + L_pairwise``, and its gradient with
    respect to the logits."""
    logits = batch.logits.detach().requires_grad_(True)
    pairwise = FORMULATIONS[formulation]
    loss = projection_loss(logits, batch.box_masks).mean() + pairwise(
        logits, batch.similarity, batch.image_index, batch.box_masks
    )
    loss.backward()
    return loss.item(), logits.grad


def _peak_in_this_process(formulation: str, size: dict, device: str) -> float:
    batch = coco_like_batch(**size, device=torch.device(device))
    return peak_memory_mib(lambda: forward_backward(formulation, batch), torch.device(device))


def run(
    size: tuple[int, int] = (800, 1333),
    batch: int = 2,
    instances: int = 20,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Both formulations on one batch: value, gradient agreement, time and peak memory."""
    device = default_device()
    shape = dict(images=batch, instances=instances, height=size[0], width=size[1], seed=seed)
    inputs = coco_like_batch(**shape, device=device)
    warm = {name: forward_backward(name, inputs) for name in FORMULATIONS}
    timings = time_interleaved(
        {name: (lambda name=name: forward_backward(name, inputs)) for name in FORMULATIONS},
        repeats,
        device,
    )
    peaks = in_fresh_processes(
        _peak_in_this_process, [(name, shape, str(device)) for name in FORMULATIONS]
    )
    results = {
        name: {"value": warm[name][0], **timings[name], "peak_mib": peak}
        for name, peak in zip(FORMULATIONS, peaks, strict=True)
    }
    crop, full = results["crop_local"], results["full_image"]
    box_cells = int(inputs.box_masks.sum())
    return {
        "batch": {
            "images": batch,
            "instances_per_image": instances,
            "image_size": list(size),
            "mask_cells": list(inputs.box_masks.shape[1:]),
            "box_cells": box_cells,
            "box_share_of_instance_cells": box_cells / inputs.box_masks.numel(),
        },
        **results,
        "value_difference": abs(crop["value"] - full["value"]),
        "grad_max_difference": float((warm["crop_local"][1] - warm["full_image"][1]).abs().max()),
        "time_ratio": full["median_s"] / crop["median_s"],
        "cpu_time_ratio": full["cpu_median_s"] / crop["cpu_median_s"],
        "memory_ratio": full["peak_mib"] / max(crop["peak_mib"], 1e-3),
        "device": str(device),
    }


def summary(result: dict) -> str:
    b = result["batch"]
    columns = ("value", "median_s", "min_s", "cpu_median_s", "peak_mib")
    rows = [(name, *(result[name][column] for column in columns)) for name in FORMULATIONS]
    return "\n".join(
        [
            f"mask loss (projection + pairwise, forward + backward) on {result['device']}: "
            f"{b['images']} images of {b['image_size'][0]}x{b['image_size'][1]}, "
            f"{b['instances_per_image']} instances each, masks {b['mask_cells'][0]}x"
            f"{b['mask_cells'][1]}, boxes cover {100 * b['box_share_of_instance_cells']:.1f}% "
            "of the instances' cells",
            table(["pairwise term", "loss", "median s", "min s", "CPU s", "peak MiB"], rows),
            f"value difference {result['value_difference']:.2e}, largest gradient difference "
            f"{result['grad_max_difference']:.2e}",
            f"full-image / crop-local: time x{result['time_ratio']:.1f} (median wall clock; CPU "
            f"time x{result['cpu_time_ratio']:.1f}), peak memory x{result['memory_ratio']:.1f}",
        ]
    )
