"""``boxinst bench data``: images per second that the training input pipeline delivers per
number of DataLoader workers: a generated COCO-format dataset read by
:class:`~boxinst.platform.data.coco.CocoInstanceDataset` (PNG decoding, RLE mask decoding, every
instance with its mask), the training transform (multi-scale resize and flip) and
:func:`~boxinst.platform.data.collate.collate_instances`, as :mod:`boxinst.platform.training.loop`
builds them. One pass over the dataset per worker count, worker start-up included.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from boxinst.platform.bench.harness import table
from boxinst.platform.data.coco import CocoInstanceDataset
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.synth import SynthConfig, synthesize
from boxinst.platform.data.transforms import train_transform

#: multi-scale training sizes for shapes generated at SynthConfig's default 128-192 px
SHORT_SIZES, MAX_SIZE = (128, 144, 160), 224


def run(images: int = 256, workers: tuple[int, ...] = (0, 1, 2), batch: int = 8) -> dict:
    """Seconds for one pass and images per second, per worker count."""
    results = {}
    with tempfile.TemporaryDirectory() as root:
        synthesize(Path(root), SynthConfig(train_images=images, val_images=1))
        dataset = CocoInstanceDataset(
            Path(root, "train", "annotations.json"),
            Path(root, "train", "images"),
            mask_policy="all",
            transform=train_transform(SHORT_SIZES, MAX_SIZE, flip_prob=0.5, seed=0),
        )
        for count in workers:
            loader = DataLoader(
                dataset, batch_size=batch, num_workers=count, collate_fn=collate_instances
            )
            start = time.perf_counter()
            for _ in loader:
                pass
            seconds = time.perf_counter() - start
            results[str(count)] = {"seconds": seconds, "images_per_s": len(dataset) / seconds}
    return {"images": images, "batch": batch, "workers": results}


def summary(result: dict) -> str:
    rows = [(w, r["seconds"], r["images_per_s"]) for w, r in result["workers"].items()]
    return (
        f"data loading: {result['images']} generated images, batches of {result['batch']}\n"
        + table(["workers", "seconds", "images/s"], rows)
    )
