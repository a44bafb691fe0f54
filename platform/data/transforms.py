"""Geometric augmentation of an image with its instances (albumentations), kept aligned.

A sample is a dict: ``image`` [H, W, 3] uint8 RGB, ``boxes`` [G, 4] float32 xyxy in pixels,
``masks`` [G, H, W] uint8 (and, when the dataset has box priors, ``prior_masks`` alike), and any
number of other per-instance arrays of length G (``labels``, ``has_mask``, ...). A transform
returns the same keys; an instance whose box becomes empty is dropped from every per-instance
array and from the masks together.

No normalisation happens here: CondInst takes RGB in [0, 255] and normalises itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch.utils.data

#: The paper's COCO recipe (detectron2's): shorter side sampled in 640..800 step 32, longer
#: side at most 1333; 800 at test time.
COCO_TRAIN_SHORT_SIZES: tuple[int, ...] = tuple(range(640, 801, 32))
COCO_TEST_SHORT_SIZE = 800
COCO_MAX_SIZE = 1333

_INSTANCE = "instance"  # label field carrying each box's row, to select the surviving rows
#: The per-instance ``[G, H, W]`` maps of a sample, transformed like the image.
MASK_KEYS = ("masks", "prior_masks")


class ResizeShortestEdge(A.SmallestMaxSize):
    """Shorter side to a size drawn from ``short_sizes``, longer side capped at ``max_size``.

    Chaining ``SmallestMaxSize`` and ``LongestMaxSize`` is not the same: ``LongestMaxSize`` also
    enlarges an image whose longer side is below the cap, and two resizes resample twice. This
    computes detectron2's one scale, ``min(short / min(h, w), max_size / max(h, w))``, and lets
    ``SmallestMaxSize`` resize image, masks and boxes by it (sizes rounded to the nearest pixel;
    detectron2 rounds halves up, Python's ``round`` to even, so a size may differ by one pixel
    on an exact tie).
    """

    def __init__(self, short_sizes: Sequence[int], max_size: int):
        super().__init__(max_size=list(short_sizes))
        self.long_max_size = max_size

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = super().get_params_dependent_on_data(params, data)["scale"]
        return {"scale": min(scale, self.long_max_size / max(height, width))}


class InstanceTransform:
    """Resize (shortest edge) and optional horizontal flip of a sample, boxes and masks aligned.

    Randomness comes from the albumentations pipeline, seeded with ``seed``; inside a PyTorch
    data-loader worker it is reseeded from the worker's seed, so that workers (forked copies of
    one pipeline) do not repeat each other's augmentations.
    """

    def __init__(
        self,
        short_sizes: Sequence[int],
        max_size: int,
        flip_prob: float = 0.0,
        seed: int | None = None,
    ):
        steps = [ResizeShortestEdge(short_sizes, max_size)]
        if flip_prob > 0:
            steps.append(A.HorizontalFlip(p=flip_prob))
        bbox_params = A.BboxParams(
            format="pascal_voc", label_fields=[_INSTANCE], clip=True, filter_invalid_bboxes=True
        )
        self._pipeline = A.Compose(steps, bbox_params=bbox_params, seed=seed)
        self._worker_seed: int | None = None

    def _reseed_in_worker(self) -> None:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._pipeline.set_random_seed(worker.seed % 2**32)
            self._worker_seed = worker.seed

    def reseed(self, seed: int) -> None:
        """Draw the next augmentations from ``seed`` (a per-sample seed makes a sample's
        augmentation independent of which worker loads it and of where a run resumed)."""
        self._pipeline.set_random_seed(seed % 2**32)
        worker = torch.utils.data.get_worker_info()
        self._worker_seed = worker.seed if worker is not None else None

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._reseed_in_worker()
        mask_keys = [key for key in MASK_KEYS if key in sample]
        count = len(sample["masks"])
        masks = np.concatenate([sample[key] for key in mask_keys])  # one pass for all of them
        inputs = {
            "image": sample["image"],
            "bboxes": sample["boxes"].reshape(-1, 4),
            _INSTANCE: np.arange(count),
        }
        if len(masks):  # albumentations cannot stack an empty list of masks
            inputs["masks"] = masks
        out = self._pipeline(**inputs)
        kept = np.asarray(out[_INSTANCE], dtype=np.int64)
        height, width = out["image"].shape[:2]
        result = {
            key: value[kept]
            for key, value in sample.items()
            if key not in ("image", "boxes", *mask_keys)
        }
        result["image"] = out["image"]
        result["boxes"] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        transformed = np.asarray(out["masks"]) if len(masks) else masks
        for index, key in enumerate(mask_keys):
            part = transformed[index * count : (index + 1) * count]
            result[key] = part[kept] if count else np.zeros((0, height, width), np.uint8)
        return result


def train_transform(
    short_sizes: Sequence[int] = COCO_TRAIN_SHORT_SIZES,
    max_size: int = COCO_MAX_SIZE,
    flip_prob: float = 0.5,
    seed: int | None = None,
) -> InstanceTransform:
    """The training augmentation of the paper's recipe: multi-scale resize and horizontal flip."""
    return InstanceTransform(short_sizes, max_size, flip_prob, seed)


def eval_transform(
    short_size: int = COCO_TEST_SHORT_SIZE, max_size: int = COCO_MAX_SIZE
) -> InstanceTransform:
    """The test-time resize of the paper's recipe: one size, no flip."""
    return InstanceTransform((short_size,), max_size)
