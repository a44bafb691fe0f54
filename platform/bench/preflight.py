"""``boxinst bench preflight``: what the checks before a run (:mod:`boxinst.platform.preflight`)
cost on a COCO-sized dataset: a generated annotation file of COCO train2017's size (118,287
images, 7.3 instances per image, each a 4-point box and a polygon of COCO's mean 24 points) with
an empty file per image, timed for reading the JSON, checking its records, and the whole
preflight of a spec (records, image files present, the spec against the categories).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from boxinst.platform import preflight
from boxinst.platform.bench.harness import table
from boxinst.platform.data.check import check_records, load_annotations
from boxinst.platform.spec import TrainSpec

#: COCO train2017: images, mean instances per image, mean polygon points, classes
COCO_IMAGES, INSTANCES_PER_IMAGE, POLYGON_POINTS, CLASSES = 118_287, 7.3, 24, 80


def coco_sized(folder: Path, images: int, seed: int = 0) -> Path:
    """Write ``folder/annotations.json`` (COCO's statistics) and an empty file per image."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    records, annotations = [], []
    for image_id in range(1, images + 1):
        name = f"{image_id:012d}.jpg"
        (folder / "images" / name).touch()
        records.append({"id": image_id, "file_name": name, "height": 480, "width": 640})
        for _ in range(rng.poisson(INSTANCES_PER_IMAGE)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 340)
            w, h = rng.uniform(10, 140, size=2)
            angles = np.linspace(0, 2 * np.pi, POLYGON_POINTS, endpoint=False)
            polygon = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, CLASSES + 1)),
                    "bbox": [round(v, 2) for v in (x, y, w, h)],
                    "area": float(w * h * 0.7),
                    "iscrowd": 0,
                    "segmentation": [polygon.T.ravel().round(2).tolist()],
                }
            )
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, CLASSES + 1)]
    path = folder / "annotations.json"
    coco = {"images": records, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(coco))
    return path


def run(images: int = COCO_IMAGES) -> dict:
    """Seconds to read the generated file, to check its records, and for a spec's preflight."""
    with tempfile.TemporaryDirectory() as root:
        annotations = coco_sized(Path(root), images)
        split = {"annotations": str(annotations), "images": str(Path(root) / "images")}
        spec = TrainSpec.model_validate(
            {
                "name": "coco-sized",
                "regime": "box_only",
                "data": {"train": split, "val": split},
                "model": {"num_classes": CLASSES},
                "solver": {"ims_per_batch": 1},  # a batch any --images fills
            }
        )
        start = time.perf_counter()
        data, _ = load_annotations(annotations)
        read = time.perf_counter() - start
        start = time.perf_counter()
        check_records(data, str(annotations))
        records = time.perf_counter() - start
        start = time.perf_counter()
        problems = preflight.problems(spec)  # one read and check: train and val are one file
        whole = time.perf_counter() - start
        return {
            "images": images,
            "annotations": len(data["annotations"]),
            "megabytes": annotations.stat().st_size / 2**20,
            "seconds": {"read_json": read, "check_records": records, "preflight": whole},
            "problems": len(problems),
        }


def summary(result: dict) -> str:
    rows = [(step, seconds) for step, seconds in result["seconds"].items()]
    return (
        f"checks before a run: {result['images']} images, {result['annotations']} annotations "
        f"({result['megabytes']:.0f} MB of JSON), {result['problems']} problems found\n"
        + table(["step", "seconds"], rows)
    )
