"""Batching of dataset samples into the input of the training objective and of the model.

The output is the batch format of :mod:`boxinst.platform.training.objective`: a float image
tensor padded at the bottom and right to multiples of 32 (CondInst's size divisibility) and per
image a target whose masks are padded alike. Images stay RGB in [0, 255] (the model normalises
them); masks stay uint8 (the losses cast them), a quarter of the memory of float masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from boxinst.models.condinst import SIZE_DIVISIBILITY
from boxinst.platform.data.shapes import Scene
from boxinst.platform.data.transforms import MASK_KEYS


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def collate_instances(
    samples: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``(images [B, 3, H, W] float32, targets)`` from ``(image [3, h, w] uint8, target)`` pairs
    of :class:`boxinst.platform.data.coco.CocoInstanceDataset`; use as a DataLoader's
    ``collate_fn``.

    Padding is zeros, in the images and the masks (and the box priors' masks); ``image_size``
    in each target keeps the size of the image inside the padding, and every other key of a
    target is passed through.
    """
    height = _round_up(max(image.shape[1] for image, _ in samples), SIZE_DIVISIBILITY)
    width = _round_up(max(image.shape[2] for image, _ in samples), SIZE_DIVISIBILITY)
    images = torch.zeros(len(samples), 3, height, width)
    targets = []
    for i, (image, target) in enumerate(samples):
        h, w = image.shape[1:]
        images[i, :, :h, :w] = image
        padded = {}
        for key in MASK_KEYS:
            if key in target:
                padded[key] = target[key].new_zeros(len(target[key]), height, width)
                padded[key][:, :h, :w] = target[key]
        targets.append({**target, **padded})
    return images, targets


def collate_scenes(
    scenes: Sequence[Scene], has_mask: bool
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Generated scenes (:mod:`boxinst.platform.data.shapes`) as one batch, their instances
    with (``has_mask``) or without their masks: a batch without files, for benchmarks and
    tests of the objective."""
    samples = []
    for scene in scenes:
        target = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.labels),
            "masks": torch.from_numpy(scene.masks),
            "has_mask": torch.full((len(scene.masks),), has_mask),
            "image_size": scene.image.shape[:2],
        }
        samples.append((torch.from_numpy(scene.image).permute(2, 0, 1), target))
    return collate_instances(samples)
