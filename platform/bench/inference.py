"""``boxinst bench inference``: ``CondInst.predict`` (forward, decoding, NMS, masks pasted at
the input size and thresholded) of the small CPU model and of the R-50 COCO model (``--configs``:
also the BiFPN and DCN models of :data:`~boxinst.platform.bench.batches.CONFIGS`).

The models are randomly initialised, so the score threshold is set to 0: every image then
yields the full ``detections_per_image`` (100) detections and masks, the load of a trained
model on COCO. On CUDA inference runs under autocast. Beside each batch, interleaved with it,
the same images predicted one at a time (what ``boxinst predict`` did before it batched).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from boxinst.models.condinst import CondInst
from boxinst.platform.bench.batches import (
    BATCH_SIZES,
    COCO_IMAGE_SIZE,
    CONFIG_HEADER,
    CONFIGS,
    SMALL_IMAGE_SIZE,
    batch_for,
    config_columns,
    config_record,
    image_size,
)
from boxinst.platform.bench.harness import default_device, table, time_interleaved

#: The two ways of predicting a batch that are timed side by side.
BATCHED, ONE_AT_A_TIME = "batched", "one at a time"


def run(
    configs: tuple[str, ...] = ("small", "coco"),
    size: tuple[int, int] = COCO_IMAGE_SIZE,
    small_size: int = SMALL_IMAGE_SIZE,
    repeats: int = 5,
) -> dict:
    """Seconds per batch and images per second of each configuration, after one warm-up."""
    device = default_device()
    results = {}
    for config in configs:
        torch.manual_seed(0)
        model = CondInst(replace(CONFIGS[config][0], score_threshold=0.0)).to(device).eval()
        hw = image_size(config, size, small_size)
        images, targets = batch_for(config, BATCH_SIZES[config], hw)
        images = images.to(device)
        sizes = [t["image_size"] for t in targets]

        def predict(model=model, images=images, sizes=sizes) -> list[dict]:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                return model.predict(images, sizes)

        def predict_each(model=model, images=images, sizes=sizes) -> list[dict]:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                return [model.predict(images[i : i + 1], [size]) for i, size in enumerate(sizes)]

        detections = sum(len(p["scores"]) for p in predict()) / len(sizes)
        predict_each()  # its warm-up
        timing = time_interleaved({BATCHED: predict, ONE_AT_A_TIME: predict_each}, repeats, device)
        results[config] = {
            **config_record(config, hw, timing[BATCHED]),
            "detections_per_image": detections,
            "one_at_a_time_s": timing[ONE_AT_A_TIME]["median_s"],
            "batched_speedup": timing[ONE_AT_A_TIME]["median_s"] / timing[BATCHED]["median_s"],
        }
    return {"device": str(device), "autocast": device.type == "cuda", "configs": results}


def summary(result: dict) -> str:
    rows = [
        (
            *config_columns(name, r),
            r["detections_per_image"],
            r["median_s"],
            r["images_per_s"],
            r["one_at_a_time_s"],
            f"x{r['batched_speedup']:.2f}",
        )
        for name, r in result["configs"].items()
    ]
    header = [
        *CONFIG_HEADER,
        "detections",
        "s/batch",
        "images/s",
        "s one at a time",
        "batched speed-up",
    ]
    return f"inference (CondInst.predict) on {result['device']}\n" + table(header, rows)
