"""``boxinst bench eval``: :func:`boxinst.platform.evaluation.coco.evaluate` (what ``boxinst
evaluate`` runs after reading the files: checks, COCOeval for masks and boxes), with pycocotools'
COCOeval and with faster-coco-eval's side by side, on a COCO-sized
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
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from boxinst.platform.bench.harness import table
from boxinst.platform.evaluation.coco import evaluate, load_ground_truth, load_results
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


#: The COCOeval implementations timed side by side: the reference, and the one evaluation uses.
SCORERS = {"pycocotools": COCOeval, "faster-coco-eval": COCOeval_faster}


def run(images: int = 5000, detections: int = 100) -> dict:
    """Seconds to generate the files, to read and check them, and to evaluate them with each
    scorer (checks of the results, pycocotools' ``loadRes``, then COCOeval for masks and boxes),
    with the ratio and the largest difference of their metrics."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        gt_path, results_path = synthetic_files(Path(root), images, detections)
        generated = time.perf_counter()
        coco_gt, results = load_ground_truth(gt_path), load_results(results_path)
        loaded = time.perf_counter()
        scored = {}
        for name, scorer in SCORERS.items():
            began = time.perf_counter()
            metrics = evaluate(coco_gt, results, scorer=scorer)
            scored[name] = (time.perf_counter() - began, metrics)
        (reference_s, reference), (fast_s, fast) = scored.values()
        return {
            "images": images,
            "detections_per_image": detections,
            "results_mib": results_path.stat().st_size / 2**20,
            "generate_s": generated - start,
            "load_s": loaded - generated,
            "scorers": {
                name: {"evaluate_s": seconds, "images_per_s": images / seconds}
                for name, (seconds, _) in scored.items()
            },
            "speedup": reference_s / fast_s,
            "largest_difference": max(
                abs(value - reference[key])
                for key, value in fast.items()
                if not (math.isnan(value) and math.isnan(reference[key]))
            ),
            "segm_AP": fast[SEGM_AP],
        }


def summary(result: dict) -> str:
    rows = [(name, r["evaluate_s"], r["images_per_s"]) for name, r in result["scorers"].items()]
    return (
        f"COCO evaluation (masks and boxes) of {result['images']} images x "
        f"{result['detections_per_image']} detections ({result['results_mib']:.0f} MiB of "
        f"results; reading and checking the files {result['load_s']:.1f} s)\n"
        + table(["scorer", "evaluate s", "images/s"], rows)
        + f"\nfaster-coco-eval: {result['speedup']:.1f}x, largest metric difference "
        f"{result['largest_difference']:.1e} (AP points)"
    )
