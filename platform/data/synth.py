"""The embedded default dataset: generated shape scenes written as a real COCO-format dataset.

``boxinst data synth OUT`` writes ``OUT/{train,val}/images/*.png`` and
``OUT/{train,val}/annotations.json`` (RLE masks, exact by construction), with two class groups
for the semi-supervised regimes recorded under the JSON's ``class_groups`` key and as each
category's ``supercategory``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from boxinst.platform.data.shapes import STYLES, Scene, render_scene
from boxinst.platform.evaluation.coco import box_as_mask, encode_masks, evaluate
from boxinst.platform.metrics import SEGM_AP

#: Two disjoint class groups, the synthetic stand-in for COCO's VOC-20 / non-VOC-60 split.
CLASS_GROUPS = {
    "curved": ("ellipse", "ring", "crescent"),
    "angular": ("triangle", "star", "bar", "rounded_polygon"),
}
CLASSES = tuple(name for group in CLASS_GROUPS.values() for name in group)


@dataclass
class SynthConfig:
    seed: int = 0
    train_images: int = 400
    val_images: int = 100
    min_size: int = 128
    max_size: int = 192
    max_objects: int = 4
    object_size: tuple[float, float] = (0.12, 0.35)  # radius / the image's shorter side
    low_contrast: float = 0.15
    style: str = "flat"  # how scenes are painted: a name of shapes.STYLES

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style {self.style!r}: the styles are {list(STYLES)}")
        low, high = self.object_size
        if not 0 < low <= high <= 0.5:
            raise ValueError(
                f"object_size {list(self.object_size)}: radii are fractions of the image's "
                "shorter side, 0 < low <= high <= 0.5 (a shape must fit in its image)"
            )
        counts = {"train_images": self.train_images, "val_images": self.val_images}
        counts["max_objects"] = self.max_objects
        for name, count in counts.items():
            if count < 1:
                raise ValueError(f"{name} {count}: at least 1")
        if not 0 <= self.low_contrast <= 1:
            raise ValueError(f"low_contrast {self.low_contrast}: a share of objects, 0..1")
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(
                f"min_size {self.min_size}, max_size {self.max_size}: need 0 < min <= max"
            )


def _categories() -> list[dict]:
    group_of = {name: group for group, names in CLASS_GROUPS.items() for name in names}
    return [
        {"id": i + 1, "name": name, "supercategory": group_of[name]}
        for i, name in enumerate(CLASSES)
    ]


def _scene(rng: np.random.Generator, cfg: SynthConfig) -> Scene:
    height, width = (int(v) for v in rng.integers(cfg.min_size, cfg.max_size + 1, size=2))
    return render_scene(
        rng,
        height,
        width,
        CLASSES,
        max_objects=cfg.max_objects,
        size_range=cfg.object_size,
        low_contrast=cfg.low_contrast,
        style=STYLES[cfg.style],
    )


def write_split(
    out: Path, split: str, count: int, rng: np.random.Generator, cfg: SynthConfig
) -> dict:
    """Render ``count`` scenes into ``out/split`` and return the COCO dict that was written."""
    image_dir = out / split / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        scene = _scene(rng, cfg)
        file_name = f"{index:06d}.png"
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        height, width = scene.image.shape[:2]
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        rles = encode_masks(scene.masks.astype(bool))
        for mask, rle, box, label in zip(scene.masks, rles, scene.boxes, scene.labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
    coco = {
        "info": {"description": "BoxInst generated shapes", "synth_config": asdict(cfg)},
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
        "class_groups": {group: list(names) for group, names in CLASS_GROUPS.items()},
    }
    (out / split / "annotations.json").write_text(json.dumps(coco))
    return coco


def box_as_mask_ap(coco: dict) -> float:
    """Mask AP of the ground-truth boxes filled as masks: the paper's "box mask" baseline
    (Table 3) with a perfect detector, the ceiling of what boxes alone give on this data."""
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in coco["annotations"]
    ]
    return evaluate(coco, box_as_mask(detections, coco))[SEGM_AP]


def statistics(coco: dict) -> dict:
    """Counts per class, how much of its box each mask fills (a filled box's IoU with it) and
    the mask AP of filled ground-truth boxes."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class: dict[str, list[float]] = {name: [] for name in names.values()}
    for ann in coco["annotations"]:
        _, _, w, h = ann["bbox"]
        per_class[names[ann["category_id"]]].append(ann["area"] / (w * h))
    fills = [f for values in per_class.values() for f in values]
    return {
        "images": len(coco["images"]),
        "instances": len(coco["annotations"]),
        "instances_per_image": len(coco["annotations"]) / max(len(coco["images"]), 1),
        "box_fill": float(np.mean(fills)) if fills else 0.0,
        "box_as_mask_AP": box_as_mask_ap(coco),
        "per_class": {
            name: {"instances": len(v), "box_fill": float(np.mean(v)) if v else 0.0}
            for name, v in per_class.items()
        },
    }


def synthesize(out: Path, cfg: SynthConfig) -> dict[str, dict]:
    """Write the train and val splits (independent random streams of one seed); returns each
    split's :func:`statistics`."""
    out = Path(out)
    streams = np.random.SeedSequence(cfg.seed).spawn(2)
    stats = {}
    for split, count, stream in zip(
        ("train", "val"), (cfg.train_images, cfg.val_images), streams, strict=True
    ):
        coco = write_split(out, split, count, np.random.default_rng(stream), cfg)
        stats[split] = statistics(coco)
    return stats
