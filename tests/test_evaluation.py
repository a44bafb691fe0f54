"""COCO-style evaluation on a small generated ground truth: polygons, compressed and
uncompressed RLE masks, a crowd region, three categories with non-contiguous ids."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxinst.platform.evaluation.coco import (
    EvaluationInputError,
    box_as_mask,
    evaluate,
    evaluate_files,
    format_table,
    grabcut_baseline,
    grabcut_masks,
    load_results,
    parse_group,
    predictions_to_coco_results,
    save_results,
)
from boxinst.platform.metrics import AP_STATS, IOU_TYPES, metric_name

HEIGHT, WIDTH = 120, 160
CATEGORY_IDS = [1, 3, 7]  # contiguous label i is category CATEGORY_IDS[i]
CATEGORIES = [
    {"id": 1, "name": "square"},
    {"id": 3, "name": "disk"},
    {"id": 7, "name": "triangle"},
]
GROUPS = {"unseen": ["disk", "triangle"], "seen": ["1"]}


def _disk(cx: float, cy: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major mask, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [HEIGHT, WIDTH], "counts": counts}


def _square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _triangle(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y + side, x + side, y + side, x + side / 2, y]]


# (image id, category id, segmentation, iscrowd): objects of every COCO area range.
OBJECTS = [
    (10, 1, _square(20, 10, 100), 0),  # large
    (10, 7, _triangle(125, 20, 30), 0),  # small (area 450)
    (10, 3, _compressed_rle(_disk(140, 95, 9)), 0),  # small
    (11, 3, _uncompressed_rle(_disk(50, 60, 30)), 0),  # medium
    (11, 7, _triangle(100, 10, 60), 0),  # medium
    (11, 1, _uncompressed_rle(_disk(130, 90, 20) | _disk(140, 100, 15)), 1),  # crowd
    (12, 1, _square(10, 10, 25), 0),  # small
    (12, 3, _compressed_rle(_disk(100, 60, 58)), 0),  # large
]


def _rle(segmentation) -> dict:
    """The compressed RLE of any COCO segmentation, as ``COCO.annToRLE`` reads them."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, HEIGHT, WIDTH))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, HEIGHT, WIDTH)
    return segmentation


def _ground_truth() -> dict:
    annotations = []
    for ann_id, (image_id, category_id, segmentation, iscrowd) in enumerate(OBJECTS, start=1):
        rle = _rle(segmentation)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation,
                "area": float(mask_util.area(rle)),
                "bbox": mask_util.toBbox(rle).tolist(),
                "iscrowd": iscrowd,
            }
        )
    images = [
        {"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH} for i in (10, 11, 12)
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


@pytest.fixture
def gt() -> dict:
    return _ground_truth()


def _coco(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    return coco


def _predictions(gt: dict, perturb: bool) -> tuple[list[dict], list[int]]:
    """Model-style outputs: the non-crowd ground truth, or (``perturb``) shifted masks and
    boxes, random scores, a wrong label, a false positive per image and a hit on the crowd."""
    coco, rng = _coco(gt), np.random.default_rng(0)
    predictions, image_ids = [], coco.getImgIds()
    for image_id in image_ids:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if not perturb:
            anns = [ann for ann in anns if not ann["iscrowd"]]
        masks = np.stack([coco.annToMask(ann).astype(bool) for ann in anns])
        boxes = np.array([ann["bbox"] for ann in anns])
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([CATEGORY_IDS.index(ann["category_id"]) for ann in anns])
        scores = np.linspace(1.0, 0.5, len(anns))
        if perturb:
            shifts = rng.integers(0, 5, size=len(anns))
            masks = np.stack([np.roll(m, s, axis=1) for m, s in zip(masks, shifts, strict=True)])
            boxes[:, 0::2] += shifts[:, None]
            scores = rng.uniform(0.2, 1.0, size=len(anns))
            labels[0] = (labels[0] + 1) % len(CATEGORY_IDS)
            masks = np.concatenate([masks, _disk(30, 90, 12)[None]])
            boxes = np.concatenate([boxes, [[18, 78, 42, 102]]])
            labels, scores = np.append(labels, 2), np.append(scores, 0.9)
        predictions.append(
            {
                "boxes": torch.as_tensor(boxes, dtype=torch.float32),
                "scores": torch.as_tensor(scores, dtype=torch.float32),
                "labels": torch.as_tensor(labels),
                "masks": torch.as_tensor(masks),
            }
        )
    return predictions, image_ids


def _results(gt: dict, perturb: bool = False) -> list[dict]:
    return predictions_to_coco_results(*_predictions(gt, perturb), CATEGORY_IDS)


def _direct_cocoeval(gt: dict, results: list[dict], iou_type: str, category_ids=None):
    """pycocotools run by hand, as its own demo does (without boxes for masks, so that a
    detection's area is its mask's)."""
    records = copy.deepcopy(results)
    if iou_type == "segm":
        for record in records:
            del record["bbox"]
    coco_gt = _coco(gt)
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(records), iou_type)
    if category_ids is not None:
        evaluator.params.catIds = category_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:6]


def _stats(metrics: dict, iou_type: str, group: str | None = None) -> np.ndarray:
    return np.array([metrics[metric_name(iou_type, stat, group)] for stat in AP_STATS])


def test_results_are_coco_format_and_json_serialisable(gt):
    results = _results(gt)
    assert len(results) == 7
    first = results[0]
    assert first["image_id"] == 10 and first["category_id"] == 1
    assert first["bbox"] == pytest.approx(gt["annotations"][0]["bbox"])
    assert isinstance(first["segmentation"]["counts"], str)
    assert json.loads(json.dumps(results)) == results


def test_perfect_predictions_give_ap_100(gt):
    metrics = evaluate(gt, _results(gt), GROUPS)
    assert set(metrics) == {
        metric_name(iou_type, stat, group)
        for iou_type in IOU_TYPES
        for stat in AP_STATS
        for group in (None, *GROUPS)
    }
    # Every area range holds ground truth overall; the "seen" group has no medium object.
    assert all(value == pytest.approx(100.0) for value in _stats(metrics, "segm"))
    assert all(value == pytest.approx(100.0) for value in _stats(metrics, "bbox"))
    assert math.isnan(metrics["segm_seen/APm"])


def test_metrics_equal_a_direct_pycocotools_run(gt):
    """pycocotools is the reference: the compiled scorer evaluation uses gives its numbers."""
    results = _results(gt, perturb=True)
    metrics = evaluate(gt, results, GROUPS)
    assert 0 < metrics["segm/AP"] < 100
    for iou_type in IOU_TYPES:
        for group, category_ids in ((None, None), ("unseen", [3, 7]), ("seen", [1])):
            stats = _direct_cocoeval(gt, results, iou_type, category_ids)
            expected = np.where(stats < 0, np.nan, 100.0 * stats)
            actual = _stats(metrics, iou_type, group)
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6, equal_nan=True)


def test_a_mask_result_is_sized_by_its_mask_not_its_box():
    """detectron2's convention: segm results are scored without their box, so the area range
    (APs/APm/APl) of a detection is its mask's. A false positive with a small mask but a box
    over the whole image, scored first, halves the small objects' mask AP; were its box's area
    used, it would fall outside the small range and be ignored there."""
    square = lambda x, y: [[x, y, x + 10, y, x + 10, y + 10, x, y + 10]]  # noqa: E731
    gt = {
        "images": [{"id": 1, "file_name": "1.png", "height": 200, "width": 200}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": square(10, 10),
            }
        ],
    }

    def rle(x, y):
        encoded = mask_util.merge(mask_util.frPyObjects(square(x, y), 200, 200))
        return {"size": encoded["size"], "counts": encoded["counts"].decode()}

    results = [
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 10, 10, 10],
            "score": 0.9,
            "segmentation": rle(10, 10),
        },
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 200, 200],
            "score": 0.95,
            "segmentation": rle(150, 150),
        },
    ]
    metrics = evaluate(gt, results)
    assert metrics["segm/APs"] == pytest.approx(50.5, abs=0.6)  # the false positive counts
    assert metrics["bbox/APs"] == pytest.approx(100.0)  # its box is large: ignored there


def test_no_detections_give_ap_0(gt):
    predictions, image_ids = _predictions(gt, perturb=False)
    empty = [{key: value[:0] for key, value in prediction.items()} for prediction in predictions]
    results = predictions_to_coco_results(empty, image_ids, CATEGORY_IDS)
    assert results == []
    metrics = evaluate(gt, results, GROUPS)
    assert metrics["segm/AP"] == 0 and metrics["bbox/AP"] == 0 and metrics["segm_unseen/AP"] == 0


def test_box_as_mask_is_below_perfect_masks_for_non_rectangular_shapes(gt):
    results = _results(gt)
    metrics = evaluate(gt, box_as_mask(results, gt))
    assert metrics["bbox/AP"] == pytest.approx(100.0)
    assert 0 < metrics["segm/AP"] < 90


def _synthetic_image(object_mask: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(110, 12, size=(*object_mask.shape, 3))
    image[object_mask] = rng.normal((210, 40, 40), 12, size=(object_mask.sum(), 3))
    return image.clip(0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_grabcut_finds_a_clear_object_in_its_box():
    disk = _disk(80, 60, 25)
    masks = grabcut_masks(_synthetic_image(disk), torch.tensor([[52.0, 32.0, 108.0, 88.0]]))
    assert masks.shape == (1, HEIGHT, WIDTH) and masks.dtype == bool
    assert _iou(masks[0], disk) > 0.7


def test_grabcut_gives_degenerate_boxes_their_box():
    image = _synthetic_image(_disk(80, 60, 25))
    boxes = [[10, 10, 12, 30], [0, 0, WIDTH, HEIGHT], [5, 5, 5, 5]]
    masks = grabcut_masks(image, boxes)
    assert masks[0].sum() == 2 * 20 and masks[1].all() and not masks[2].any()
    assert grabcut_masks(image, np.zeros((0, 4))).shape == (0, HEIGHT, WIDTH)


def test_grabcut_ignores_an_unsure_region_that_leaves_its_box_no_foreground():
    disk = _disk(80, 60, 25)
    image, boxes = _synthetic_image(disk), np.array([[52.0, 32.0, 108.0, 88.0]])
    everything = np.ones((1, HEIGHT, WIDTH), bool)
    assert (grabcut_masks(image, boxes, unsure=everything) == grabcut_masks(image, boxes)).all()


def test_grabcut_baseline_replaces_the_masks(gt):
    results = _results(gt)
    coco = _coco(gt)
    images = {
        image_id: _synthetic_image(
            np.any([coco.annToMask(a) for a in coco.imgToAnns[image_id]], axis=0)
        )
        for image_id in coco.getImgIds()
    }
    baseline = grabcut_baseline(results, images)
    assert sorted(map(json.dumps, (_without_masks(r) for r in baseline))) == sorted(
        map(json.dumps, (_without_masks(r) for r in results))
    )
    assert evaluate(gt, baseline)["segm/AP50"] > 0


def _without_masks(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "segmentation"}


def test_results_round_trip_through_a_file(gt, tmp_path):
    results = _results(gt, perturb=True)
    path = tmp_path / "out" / "predictions.json"
    save_results(path, results)
    assert load_results(path) == results
    assert not list(path.parent.glob("*.partial"))


def test_evaluate_files_matches_evaluate(gt, tmp_path):
    results = _results(gt, perturb=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    save_results(tmp_path / "pred.json", results)
    groups = dict([parse_group("unseen=disk, 7")])
    assert evaluate_files(tmp_path / "gt.json", tmp_path / "pred.json", groups) == pytest.approx(
        evaluate(gt, results, groups), nan_ok=True
    )


def test_missing_and_malformed_files_are_named(gt, tmp_path):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    with pytest.raises(EvaluationInputError, match=r"ground-truth file .*gt\.json does not exist"):
        evaluate_files(gt_path, pred_path)
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text('[{"image_id": 10,')
    with pytest.raises(EvaluationInputError, match=r"pred\.json is not valid JSON"):
        evaluate_files(gt_path, pred_path)
    pred_path.write_text(json.dumps({"image_id": 10}))
    with pytest.raises(EvaluationInputError, match=r"pred\.json must hold a JSON list"):
        evaluate_files(gt_path, pred_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 99}, r"pred\.json, record 0: image_id 99 is not in the ground truth"),
        ({"category_id": 2}, r"pred\.json, record 0: category_id 2 is not in the ground truth"),
    ],
)
def test_unknown_ids_are_named(gt, tmp_path, change, message):
    results = _results(gt)
    results[0].update(change)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    save_results(tmp_path / "pred.json", results)
    with pytest.raises(EvaluationInputError, match=message):
        evaluate_files(tmp_path / "gt.json", tmp_path / "pred.json")


def test_class_groups_are_checked(gt):
    assert parse_group("unseen=disk,triangle") == ("unseen", ["disk", "triangle"])
    for text in ("unseen", "unseen=", "bad name=disk"):
        with pytest.raises(EvaluationInputError):
            parse_group(text)
    with pytest.raises(EvaluationInputError, match="'cat' is neither"):
        evaluate(gt, [], {"unseen": ["cat"]})


def test_format_table_has_a_row_per_group():
    metrics = {metric_name("segm", stat): 30.7 for stat in AP_STATS}
    metrics.update({metric_name("segm", stat, "unseen"): math.nan for stat in AP_STATS})
    lines = format_table(metrics).splitlines()
    assert lines[0].split() == list(AP_STATS)
    assert lines[1].split() == ["segm", *["30.7"] * 6]
    assert lines[2].split() == ["segm_unseen", *["-"] * 6]
