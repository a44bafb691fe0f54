"""``boxinst bench priors``: the GrabCut box priors (:mod:`boxinst.platform.data.box_prior`) of a
generated dataset, the plain cut and the background start (the default) side by side: seconds to
compute them in a pool of worker processes, each setting twice in ABBA order so that a machine
whose load drifts treats them alike; the share of boxes whose prior is kept; and the kept priors'
IoU with the true masks, over all boxes and per class (the ring's hole is what the background
start carves).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from boxinst.platform.bench.harness import table
from boxinst.platform.data.box_prior import PriorSettings, compute_priors
from boxinst.platform.data.synth import SynthConfig, synthesize

SETTINGS = {
    "plain": PriorSettings(background_start=False),
    "background_start": PriorSettings(background_start=True),
}


def run(images: int = 400, style: str = "flat", workers: int = 2) -> dict:
    """Per setting: the seconds of both runs and their median, the kept share, the mean IoU of
    the kept priors with the true masks, overall and per class."""
    with tempfile.TemporaryDirectory() as root:
        synthesize(Path(root), SynthConfig(train_images=images, val_images=1, style=style))
        annotations = Path(root, "train", "annotations.json")
        seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
        priors = {}
        for name in ("plain", "background_start", "background_start", "plain"):
            start = time.perf_counter()
            priors[name] = compute_priors(
                annotations, Path(root, "train", "images"), SETTINGS[name], workers
            )
            seconds[name].append(time.perf_counter() - start)
        coco = json.loads(annotations.read_text())
    classes = {category["id"]: category["name"] for category in coco["categories"]}
    results = {}
    for name, computed in priors.items():
        ious: dict[str, list[float]] = {}
        for annotation in coco["annotations"]:
            rle = computed["priors"][str(annotation["id"])]
            if rle is not None:
                iou = mask_utils.iou([rle], [annotation["segmentation"]], [False])[0, 0]
                ious.setdefault(classes[annotation["category_id"]], []).append(float(iou))
        results[name] = {
            "seconds": seconds[name],
            "median_s": statistics.median(seconds[name]),
            "kept": computed["kept"],
            "iou": float(np.mean([iou for values in ious.values() for iou in values])),
            "iou_per_class": {c: float(np.mean(v)) for c, v in sorted(ious.items())},
        }
    ratio = results["background_start"]["median_s"] / results["plain"]["median_s"]
    return {
        "images": images,
        "style": style,
        "workers": workers,
        "instances": len(coco["annotations"]),
        "settings": results,
        "time_ratio": ratio,
    }


def summary(result: dict) -> str:
    classes = list(result["settings"]["plain"]["iou_per_class"])
    rows = [
        (
            name,
            *r["seconds"],
            f"{100 * r['kept']:.1f}%",
            r["iou"],
            *(r["iou_per_class"].get(c, float("nan")) for c in classes),
        )
        for name, r in result["settings"].items()
    ]
    return (
        f"GrabCut box priors: {result['images']} generated {result['style']} images "
        f"({result['instances']} instances), {result['workers']} worker processes, ABBA order\n"
        + table(["setting", "s (1st)", "s (2nd)", "kept", "IoU", *classes], rows)
        + f"\nbackground start / plain, median time: {result['time_ratio']:.2f}x"
    )
