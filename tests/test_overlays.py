"""Pictures of predictions: which detections a picture shows, and that they are drawn."""

import numpy as np
from pycocotools import mask as mask_util

from boxinst.platform.evaluation.overlays import draw_detections, pictured


def detection(x0: int, x1: int, score: float, category: int = 1) -> dict:
    """A COCO result on a 20x20 image whose mask is the rows 5..14 of columns x0..x1-1."""
    mask = np.zeros((20, 20), dtype=np.uint8, order="F")
    mask[5:15, x0:x1] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode()
    return {
        "segmentation": rle,
        "score": score,
        "category_id": category,
        "bbox": [x0, 5, x1 - x0, 10],
    }


def test_near_duplicates_of_any_class_and_low_scores_are_left_out():
    best = detection(2, 10, 0.9)
    duplicate = detection(3, 10, 0.8, category=2)  # IoU 7/8 with the best, another class
    beside = detection(9, 18, 0.7)  # IoU 1/16 with the best: its own object
    faint = detection(14, 19, 0.2)
    assert pictured([faint, beside, duplicate, best]) == [best, beside]
    assert pictured([duplicate, best], max_overlap=0.9) == [best, duplicate]


def test_a_picture_draws_exactly_the_pictured_detections():
    image = np.full((20, 20, 3), 40, dtype=np.uint8)
    names = {1: "ring", 2: "star"}
    best, duplicate = detection(2, 10, 0.9), detection(3, 10, 0.8, category=2)
    alone = draw_detections(image, [best], names)
    assert not np.array_equal(alone, image)
    assert np.array_equal(draw_detections(image, [best, duplicate], names), alone)
