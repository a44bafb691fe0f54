"""Pictures of predictions: each detected mask drawn over its image, with its class and score.

Drawn from COCO results (what evaluation scores and ``boxinst predict`` writes), so a picture
shows exactly the masks that were measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from boxinst.platform.data.coco import CocoInstanceDataset

#: Detections below this score are left out of a picture (evaluation still scores them).
MIN_SCORE = 0.3
#: A detection whose mask overlaps a better-scored drawn one this much (IoU), whatever its
#: class, is left out of a picture: an undertrained model's near-duplicates hide the masks.
MAX_OVERLAP = 0.5
ALPHA = 0.5


def _colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per detection (golden-angle hues)."""
    hue = int(index * 137.508) % 180  # OpenCV's hue range
    pixel = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0])


def pictured(
    detections: Sequence[Mapping], min_score: float = MIN_SCORE, max_overlap: float = MAX_OVERLAP
) -> list[Mapping]:
    """The detections a picture shows, best first: those scoring at least ``min_score`` whose
    mask overlaps no better-scored shown one by more than ``max_overlap`` IoU, any class."""
    shown: list[Mapping] = []
    for detection in sorted(detections, key=lambda d: -d["score"]):
        if detection["score"] < min_score:
            break
        masks = [d["segmentation"] for d in shown]
        if (
            not masks
            or mask_util.iou([detection["segmentation"]], masks, [0] * len(masks)).max()
            <= max_overlap
        ):
            shown.append(detection)
    return shown


def draw_detections(
    image: np.ndarray,
    detections: Sequence[Mapping],
    category_names: Mapping[int, str],
    min_score: float = MIN_SCORE,
) -> np.ndarray:
    """``image`` (``[H, W, 3]`` uint8 RGB) with the masks, outlines and labels of the
    :func:`pictured` ``detections`` (COCO results of that image), best drawn last (on top)."""
    canvas = image.copy()
    for index, detection in enumerate(reversed(pictured(detections, min_score))):
        mask = mask_util.decode(detection["segmentation"]).astype(bool)
        colour = np.array(_colour(index), dtype=np.float32)
        canvas[mask] = ((1 - ALPHA) * canvas[mask] + ALPHA * colour).astype(np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colour), 1)
        x, y = (int(v) for v in detection["bbox"][:2])
        label = f"{category_names.get(detection['category_id'], '?')} {detection['score']:.2f}"
        cv2.putText(
            canvas, label, (x, max(y - 2, 8)), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1
        )
    return canvas


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return path


def write_overlays(
    dataset: CocoInstanceDataset, results: Sequence[Mapping], count: int, out: Path
) -> list[Path]:
    """``out/<image id>.png`` for the first ``count`` images of ``dataset``: each with its
    detections from ``results``."""
    names = dict(zip(dataset.category_ids, dataset.category_names, strict=True))
    by_image: dict[int, list[Mapping]] = {}
    for result in results:
        by_image.setdefault(result["image_id"], []).append(result)
    written = []
    for index, image_id in enumerate(dataset.image_ids[:count]):
        picture = draw_detections(dataset.original_image(index), by_image.get(image_id, []), names)
        written.append(write_png(Path(out) / f"{image_id}.png", picture))
    return written
