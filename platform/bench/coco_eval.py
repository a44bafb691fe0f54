"""``boxinst bench eval``: :func:`boxinst.platform.evaluation.evaluate_files` (what
``boxinst evaluate`` runs: JSON parsing, checks, COCOeval for masks and boxes) on a COCO-sized
synthetic pair of files: ground truth of 640x480 images with 1-14 instances of 80 categories
(polygon masks), and ``detections`` results per image with compressed RLE masks, one jittered
copy of each ground-truth instance and the rest at random."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

from boxinst.platform.bench.harness import table
from boxinst.platform.evaluation import evaluate_files
from boxinst.platform.metrics import SEGM_AP

WIDTH, HEIGHT, CATEGORIES = 640, 480, 80


def _ellipse(box: np.ndarray, vertices: int = 12) -> list[float]:
    """A polygon inscribed in an xywh box."""
    x, y, w, h = box
    angles = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    points = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], 1)
    return points.ravel().tolist()


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    sides = rng.uniform(8, 300, size=(count, 2))
    corners = rng.uniform(0, 1, size=(count, 2)) * (np.array([WIDTH, HEIGHT]) - sides)
    return np.concatenate([corners, sides], axis=1)


def synthetic_files(folder: Path, images: int, detections: int, seed: int = 0):
    """Write ``gt.json`` and ``results.json`` into ``folder``; returns their paths."""
    rng = np.random.default_rng(seed)
    gt_images, annotations, results = [], [], []
    for image_id in range(1, images + 1):
        gt_images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "width": WIDTH, "height": HEIGHT}
        )
        gt_boxes = _random_boxes(rng, int(rng.integers(1, 15)))
        gt_labels = rng.integers(1, CATEGORIES + 1, size=len(gt_boxes))
        polygons = [_ellipse(box) for box in gt_boxes]
        areas = mask_util.area(mask_util.frPyObjects(polygons, HEIGHT, WIDTH))
        for box, label, polygon, area in zip(gt_boxes, gt_labels, polygons, areas, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box.tolist(),
                    "area": float(area),
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
        extra = max(detections - len(gt_boxes), 0)
        jitter = 1 + rng.normal(0, 0.05, size=gt_boxes.shape)
        boxes = np.concatenate([gt_boxes * jitter, _random_boxes(rng, extra)])[:detections]
        labels = np.concatenate([gt_labels, rng.integers(1, CATEGORIES + 1, size=extra)])
        scores = np.concatenate([rng.uniform(0.5, 1, len(gt_boxes)), rng.uniform(0, 0.6, extra)])
        rles = mask_util.frPyObjects([_ellipse(box) for box in boxes], HEIGHT, WIDTH)
        for box, label, score, rle in zip(boxes, labels, scores, rles, strict=False):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box.tolist(),
                    "score": float(score),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, CATEGORIES + 1)]
    gt_path, results_path = folder / "gt.json", folder / "results.json"
    gt_path.write_text(
        json.dumps({"images": gt_images, "annotations": annotations, "categories": categories})
    )
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def run(images: int = 5000, detections: int = 100) -> dict:
    """Seconds to generate the files and to evaluate them."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        gt_path, results_path = synthetic_files(Path(root), images, detections)
        generated = time.perf_counter()
        metrics = evaluate_files(gt_path, results_path)
        evaluated = time.perf_counter()
        return {
            "images": images,
            "detections_per_image": detections,
            "results_mib": results_path.stat().st_size / 2**20,
            "generate_s": generated - start,
            "evaluate_s": evaluated - generated,
            "images_per_s": images / (evaluated - generated),
            "segm_AP": metrics[SEGM_AP],
        }


def summary(result: dict) -> str:
    row = (
        result["images"],
        result["detections_per_image"],
        result["results_mib"],
        result["evaluate_s"],
        result["images_per_s"],
    )
    header = ["images", "detections", "results MiB", "evaluate s", "images/s"]
    return "COCO evaluation (masks and boxes)\n" + table(header, [row])
