"""The model configurations the benchmarks run and a training batch for each: the small CPU model
on generated shapes, and BoxInst's COCO models (R-50-FPN, and the BiFPN and DCN backbones of the
paper's Table 4) on COCO-sized random images."""

from __future__ import annotations

import numpy as np
import torch

from boxinst.models.condinst import CondInstConfig
from boxinst.platform.data.collate import collate_instances, collate_scenes
from boxinst.platform.data.shapes import render_scene
from boxinst.platform.data.synth import CLASSES

#: The small CPU model of the committed results: ResNet-18 from scratch (batch norm, every
#: stage trained), 64-channel FPN, 2-conv towers, a 32-channel mask branch.
SMALL = CondInstConfig(
    num_classes=len(CLASSES),
    backbone_depth=18,
    backbone_norm="BN",
    trainable_backbone_layers=5,
    fpn_channels=64,
    head_convs=2,
    mask_branch_channels=32,
    mask_branch_convs=2,
)

#: The model settings of the BiFPN and DCN rows of Table 4, as the shipped specs
#: coco_r101_bifpn_3x and coco_r101_bifpn_dcn_3x set them (AdelaiDet's MS_R_101_BiFPN_3x and
#: MS_R_101_BiFPN_dcni3_3x configs).
BIFPN = {"fpn": "BiFPN", "fpn_channels": 160, "bifpn_repeats": 6}
DCNI3 = {
    "backbone_deform_stages": (3, 4, 5),
    "backbone_deform_interval": 3,
    "backbone_deform_modulated": True,
}
#: name -> (model config, what it is); ``bench train-step`` and ``bench inference`` run the
#: first two unless ``--configs`` names others
CONFIGS = {
    "small": (SMALL, "ResNet-18 CPU model, shapes"),
    "coco": (CondInstConfig(), "R-50-FPN BoxInst COCO model"),
    "coco_r50_bifpn": (CondInstConfig(**BIFPN), "R-50-BiFPN BoxInst COCO model"),
    "coco_r101_bifpn": (
        CondInstConfig(backbone_depth=101, **BIFPN),
        "R-101-BiFPN BoxInst COCO model",
    ),
    "coco_r101_bifpn_dcn": (
        CondInstConfig(backbone_depth=101, **BIFPN, **DCNI3),
        "R-DCN-101-BiFPN BoxInst COCO model",
    ),
}
#: the small model's image side (the committed results are at 160; the quickstart trains a
#: lighter model, ResNet-10, on 96x96 images)
SMALL_IMAGE_SIZE = 160
COCO_IMAGE_SIZE = (800, 1333)  # the paper's test size and largest training size
#: images per batch: the quickstart's and the paper's per-GPU batch (16 over 8 GPUs)
BATCH_SIZES = {name: 8 if name == "small" else 2 for name in CONFIGS}
#: the leading columns of a per-configuration table (:func:`config_columns`)
CONFIG_HEADER = ("config", "model", "image", "batch")


def shapes_batch(count: int, size: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """Generated scenes of the seven shape classes (up to 4 objects), box-supervised."""
    rng = np.random.default_rng(seed)
    scenes = [render_scene(rng, size, size, CLASSES, 4, (0.2, 0.4)) for _ in range(count)]
    return collate_scenes(scenes, has_mask=False)


def random_batch(
    count: int, size: tuple[int, int], seed: int, boxes: int = 5, num_classes: int = 80
) -> tuple[torch.Tensor, list[dict]]:
    """Random RGB images of ``size`` (h, w), padded to multiples of 32, each with ``boxes``
    random boxes of 32 to 400 pixels a side (clipped to the image), box-supervised."""
    g = torch.Generator().manual_seed(seed)
    height, width = size
    samples = []
    for _ in range(count):
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        sides = 32 + torch.rand(boxes, 2, generator=g) * 368
        corner = torch.rand(boxes, 2, generator=g) * torch.tensor([width, height])
        far = torch.minimum(corner + sides, torch.tensor([width, height]) - 1.0)
        samples.append(
            (
                image,
                {
                    "boxes": torch.cat([corner.minimum(far - 1), far], dim=1),
                    "labels": torch.randint(0, num_classes, (boxes,), generator=g),
                    "masks": torch.zeros(boxes, height, width, dtype=torch.uint8),
                    "has_mask": torch.zeros(boxes, dtype=torch.bool),
                    "image_size": (height, width),
                },
            )
        )
    return collate_instances(samples)


def image_size(config: str, size: tuple[int, int], small_size: int) -> tuple[int, int]:
    """(h, w) of a configuration's images: square shapes of ``small_size`` for ``small``,
    ``size`` for the COCO models."""
    return (small_size, small_size) if config == "small" else (size[0], size[1])


def batch_for(config: str, count: int, size: tuple[int, int], seed: int = 0):
    """The benchmark batch of a configuration at ``size`` (h, w; the shapes are square)."""
    if config == "small":
        return shapes_batch(count, size[0], seed)
    return random_batch(count, size, seed, num_classes=CONFIGS[config][0].num_classes)


def config_record(config: str, hw: tuple[int, int], timing: dict[str, float]) -> dict:
    """A configuration's result: what ran (model, image size, batch), its timing and the
    images per second of its median time."""
    return {
        "model": CONFIGS[config][1],
        "image_size": list(hw),
        "batch": BATCH_SIZES[config],
        **timing,
        "images_per_s": BATCH_SIZES[config] / timing["median_s"],
    }


def config_columns(name: str, record: dict) -> tuple:
    """The :data:`CONFIG_HEADER` cells of a :func:`config_record`."""
    return name, record["model"], "x".join(map(str, record["image_size"])), record["batch"]
