"""COCO-style evaluation: mask and box AP over all classes and over class groups, plus the
BoxInst paper's mask baselines computed on the same detections.

Unit: AP values are in percent (0-100), as the BoxInst paper (Tian et al., CVPR 2021) reports
them. A value that COCO leaves undefined (its -1: no ground truth in that class group or area
range) is NaN. Metric names come from :mod:`boxinst.platform.metrics`.

Results use COCO's results format, one dict per detection: ``image_id``, ``category_id`` (the
dataset's id), ``bbox`` (xywh in pixels of the original image), ``score`` and ``segmentation``
(a compressed RLE whose ``counts`` is a str, so that a results list is JSON-serialisable).

Scoring is pycocotools' COCOeval computed by faster-coco-eval's compiled implementation of it
(``COCOeval_faster``, on pycocotools' own ``COCO`` objects): the same 12 numbers to 1e-6 (tested
against pycocotools); ``boxinst bench eval`` times both side by side (5000 images x 100
detections: the whole evaluation 2.9x faster, the COCOeval step alone 6-11x at 200 images).

Bad input (a missing or malformed file, records naming unknown images or categories, unknown
class group members) raises :class:`EvaluationInputError`, whose message names the file or the
record, so that a CLI can print it instead of a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxinst.platform.data.check import check_records, load_annotations, read_json, summarise
from boxinst.platform.data.decode import finite_numbers, rle_counts
from boxinst.platform.metrics import (
    AP_STATS,
    BOX_LIKENESS_FILL,
    BOX_LIKENESS_IOU,
    BOX_LIKENESS_OUT,
    IOU_TYPES,
    MASK_IOU,
    MASK_IOU_BOX,
    SEGM,
    check_group_name,
    metric_name,
)

Groups = Mapping[str, Sequence[str | int]]

_RESULT_FIELDS = ("image_id", "category_id", "bbox", "score")


class EvaluationInputError(ValueError):
    """Evaluation input that cannot be used; the message names the file or the record."""


def _quiet() -> contextlib.redirect_stdout:
    """Swallows pycocotools' progress prints, which would drown a CLI's own output."""
    return contextlib.redirect_stdout(io.StringIO())


# faster-coco-eval logs the same progress and summary lines as INFO records of its own logger,
# which reach the console wherever the root logger takes INFO (as in a Ray Train worker).
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


# --- model outputs -> COCO results ------------------------------------------------------------


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Compressed RLEs of ``[K, H, W]`` bool masks, ``counts`` decoded to str for JSON."""
    if len(masks) == 0:
        return []
    stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return [_text_rle(rle) for rle in mask_util.encode(stacked)]


def _text_rle(rle: dict) -> dict:
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def predictions_to_coco_results(
    predictions: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list[dict]:
    """COCO results of the model's per-image outputs (what ``CondInst.predict`` returns).

    Args:
        predictions: per image ``boxes`` [K, 4] xyxy, ``scores`` [K], ``labels`` [K] contiguous
            class indices and ``masks`` [K, H, W] bool, all at the original image size.
        image_ids: the dataset's id of each image, in the order of ``predictions``.
        category_ids: the dataset's category id of each contiguous class index.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} image ids")
    results = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        results.extend(_image_results(prediction, int(image_id), category_ids))
    return results


def _image_results(prediction: Mapping[str, torch.Tensor], image_id: int, category_ids) -> list:
    boxes = prediction["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    labels = prediction["labels"].detach().cpu().tolist()
    if any(not 0 <= label < len(category_ids) for label in labels):
        raise ValueError(f"image {image_id}: labels {labels} outside [0, {len(category_ids)})")
    rles = encode_masks(prediction["masks"].detach().cpu().numpy().astype(bool))
    scores = prediction["scores"].detach().cpu().tolist()
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids[label]),
            "bbox": box,
            "score": score,
            "segmentation": rle,
        }
        for box, label, score, rle in zip(xywh.tolist(), labels, scores, rles, strict=True)
    ]


# --- evaluation ---------------------------------------------------------------------------------


def as_coco(gt: COCO | Mapping) -> COCO:
    """A pycocotools ``COCO`` of a ground-truth dataset dict (copied: COCOeval edits its anns)."""
    if isinstance(gt, COCO):
        return gt
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(gt))
    with _quiet():
        coco.createIndex()
    return coco


def check_results(
    coco_gt: COCO, results: Sequence, source: str = "results", with_masks: bool = True
) -> None:
    """Raises EvaluationInputError, naming ``source`` and the record, for a detection that lacks
    a field or names an image or category the ground truth does not have."""
    image_ids, category_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    fields = (*_RESULT_FIELDS, "segmentation") if with_masks else _RESULT_FIELDS
    for index, result in enumerate(results):
        where = f"{source}, record {index}"
        if not isinstance(result, Mapping):
            raise EvaluationInputError(f"{where}: expected an object, got {type(result).__name__}")
        missing = [field for field in fields if field not in result]
        if missing:
            raise EvaluationInputError(f"{where}: missing {', '.join(missing)}")
        if result["image_id"] not in image_ids:
            raise EvaluationInputError(
                f"{where}: image_id {result['image_id']!r} is not in the ground truth"
            )
        if result["category_id"] not in category_ids:
            raise EvaluationInputError(
                f"{where}: category_id {result['category_id']!r} is not in the ground truth"
            )
        box, score = result["bbox"], result["score"]
        if not (isinstance(box, list) and len(box) == 4 and finite_numbers([*box, score])):
            raise EvaluationInputError(
                f"{where}: bbox {box!r} and score {score!r} must be 4 and 1 finite numbers"
            )
        if with_masks:
            image = coco_gt.imgs[result["image_id"]]
            problem = _rle_problem(result["segmentation"], image["height"], image["width"])
            if problem:
                raise EvaluationInputError(f"{where}: segmentation: {problem}")


#: A compressed RLE's characters ('0'..'o', see :func:`boxinst.platform.data.decode.rle_counts`)
_COMPRESSED_RLE = re.compile(r"[0-o]*")


def _rle_problem(segmentation, height: int, width: int) -> str | None:
    """What is wrong with a result's RLE, if anything: its size must be the image's, its counts
    a string of the compressed alphabet or integers covering the image. (Checked at C speed:
    500k results are a COCO evaluation; decoding every string in Python would take a minute.)"""
    if not isinstance(segmentation, dict):
        return f"an RLE expected, not {type(segmentation).__name__}"
    counts = segmentation.get("counts")
    if isinstance(counts, str):
        if segmentation.get("size") != [height, width]:
            return f"an RLE of size {segmentation.get('size')!r} for its [{height}, {width}] image"
        return None if _COMPRESSED_RLE.fullmatch(counts) else "an RLE string with bad characters"
    try:
        rle_counts(segmentation, height, width)
    except ValueError as error:
        return str(error)
    return None


def group_category_ids(coco_gt: COCO, members: Sequence[str | int]) -> list[int]:
    """The category ids of a class group given by category names or ids (``"7"`` counts as 7
    unless some category is named ``"7"``)."""
    by_name = {category["name"]: category["id"] for category in coco_gt.dataset["categories"]}
    known_ids = set(by_name.values())
    ids = set()
    for member in members:
        if isinstance(member, str) and member in by_name:
            ids.add(by_name[member])
        elif str(member).isdigit() and int(member) in known_ids:
            ids.add(int(member))
        else:
            raise EvaluationInputError(
                f"class group member {member!r} is neither a category name nor a category id "
                f"of the ground truth (names: {', '.join(sorted(by_name))})"
            )
    if not ids:
        raise EvaluationInputError("a class group needs at least one category")
    return sorted(ids)


def evaluate(
    coco_gt: COCO | Mapping,
    results: Sequence[Mapping],
    groups: Groups | None = None,
    source: str = "results",
    scorer: type = COCOeval_faster,
) -> dict[str, float]:
    """COCO mask (``segm``) and box (``bbox``) AP, AP50, AP75, APs, APm, APl in percent, over
    all classes and over each class group (``groups``: name -> category names or ids).

    The numbers are exactly those of pycocotools' COCOeval (a group restricts
    ``params.catIds``). For masks, each detection's area (which decides its APs/APm/APl range)
    is its mask's area, not its box's. No detections give AP 0 where there is ground truth.
    ``source`` names the results in error messages; ``scorer`` is the COCOeval implementation
    (pycocotools' own ``COCOeval`` gives the same numbers, slower).
    """
    coco_gt = as_coco(coco_gt)
    check_results(coco_gt, results, source)
    category_groups = {
        _group_name(name): group_category_ids(coco_gt, members)
        for name, members in (groups or {}).items()
    }
    metrics = {}
    for iou_type in IOU_TYPES:
        coco_dt = _detections(coco_gt, results, iou_type)
        metrics.update(_ap_metrics(scorer(coco_gt, coco_dt, iou_type), iou_type))
        for name, category_ids in category_groups.items():
            evaluator = scorer(coco_gt, coco_dt, iou_type)
            metrics.update(_ap_metrics(evaluator, iou_type, name, category_ids))
    return metrics


def _detections(coco_gt: COCO, results: Sequence[Mapping], iou_type: str) -> COCO:
    """pycocotools' view of the results for one IoU type.

    ``loadRes`` takes a detection's area from its box whenever it has one, so the box is left
    out for masks. It also writes into the records, hence the copies.
    """
    left_out = "bbox" if iou_type == SEGM else "segmentation"
    records = [{key: value for key, value in r.items() if key != left_out} for r in results]
    if records:
        with _quiet():
            return coco_gt.loadRes(records)
    empty = COCO()  # loadRes cannot take an empty list
    empty.dataset = {**coco_gt.dataset, "annotations": []}
    with _quiet():
        empty.createIndex()
    return empty


def _ap_metrics(
    evaluator: COCOeval,
    iou_type: str,
    group: str | None = None,
    category_ids: list[int] | None = None,
) -> dict[str, float]:
    """The 6 AP numbers of a COCOeval (over ``category_ids`` when given), in percent."""
    if category_ids is not None:
        evaluator.params.catIds = category_ids
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        metric_name(iou_type, stat, group): math.nan if value < 0 else 100.0 * float(value)
        for stat, value in zip(AP_STATS, evaluator.stats[: len(AP_STATS)], strict=True)
    }


# --- baselines ----------------------------------------------------------------------------------


def box_as_mask(results: Sequence[Mapping], coco_gt: COCO | Mapping) -> list[dict]:
    """The "box mask" baseline of the paper's Table 3: each detection's box, filled, as its mask.

    It is the mask AP that box-level localisation alone gives (10.6 on COCO val2017 in the
    paper), the floor a box-supervised mask loss has to beat. Boxes are rasterised by
    pycocotools, as it rasterises ground-truth polygons; the image sizes come from ``coco_gt``.
    """
    coco_gt = as_coco(coco_gt)
    check_results(coco_gt, results, with_masks=False)
    baseline = []
    for result in results:
        image = coco_gt.imgs[result["image_id"]]
        box = np.array([result["bbox"]], dtype=np.float64)
        rle = mask_util.frPyObjects(box, image["height"], image["width"])[0]
        baseline.append({**result, "segmentation": _text_rle(rle)})
    return baseline


def grabcut_masks(
    image: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    iterations: int = 5,
    min_side: int = 4,
    margin: float = 0.5,
    seed: int = 0,
    max_crop: int | None = None,
    unsure: np.ndarray | None = None,
    background_quantile: float | None = None,
) -> np.ndarray:
    """GrabCut masks (OpenCV) initialised with each box, the mask baseline of the paper's
    Table 5 (17.8 mask AP on VOC vs 34.4 for BoxInst, same boxes).

    GrabCut runs on a crop of the box plus ``margin`` times its size on each side: its
    background colours are then local, and it stays fast on large images. A box with a side
    under ``min_side`` pixels, or one that leaves no background in its crop, is its own mask.
    With ``max_crop``, a larger crop is cut at that longer side and its mask scaled back (GrabCut
    costs about its pixel count: 0.4 s for a 200 px box on one CPU core). Every pixel of a box
    starts as probable foreground, the crop outside it as certain background, except the pixels
    ``unsure`` marks and, with ``background_quantile``, the pixels that look like the background
    continued into the box (:func:`background_like`), which start inside the box as probable
    background.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: ``[K, 4]`` xyxy in pixels of ``image``.
        unsure: ``[K, H, W]`` bool or None.
    Returns:
        ``[K, H, W]`` bool.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"grabcut needs an [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cv2.setRNGSeed(seed)  # GrabCut's colour models start from k-means
    masks = np.zeros((len(boxes), *image.shape[:2]), dtype=bool)
    for index, box in enumerate(boxes):
        box_unsure = None if unsure is None else unsure[index]
        masks[index] = _grabcut_box(
            image, box, iterations, min_side, margin, max_crop, box_unsure, background_quantile
        )
    return masks


def box_bounds(box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel bounds ``x0, y0, x1, y1`` that the xyxy ``box`` covers in an image of ``shape``
    (``H, W``): its fractional edges rounded outwards, clipped to the image."""
    height, width = shape
    x0, x1 = (int(np.clip(v, 0, width)) for v in (np.floor(box[0]), np.ceil(box[2])))
    y0, y1 = (int(np.clip(v, 0, height)) for v in (np.floor(box[1]), np.ceil(box[3])))
    return x0, y0, x1, y1


def background_like(crop: np.ndarray, surround: np.ndarray, quantile: float) -> np.ndarray:
    """``[H, W]`` bool: the pixels of ``crop`` (``[H, W, 3]`` uint8) outside ``surround``
    (``[H, W]`` bool) whose colour is what the background around them predicts there: the
    background continued into the box, a quadratic in the pixel's position fitted to the
    surround's colours (least squares, per channel), and a pixel as near to it as ``quantile``
    of the surround's own pixels are. Such as the background seen through a ring's hole.

    Why GrabCut needs it: started with the whole box as probable foreground, its foreground
    colour model learns the colours of such a hole too and keeps it wherever the background's
    colour drifts across the image (a ring's prior then has 0.70-0.72 IoU with the ring on every
    style of the fidelity suite)."""
    height, width = crop.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].reshape(2, -1) / max(height, width)
    terms = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1)
    colours = crop.reshape(-1, 3).astype(np.float64)
    around = surround.reshape(-1)
    if around.sum() < terms.shape[1]:  # too few to fit
        return np.zeros((height, width), dtype=bool)
    fit, *_ = np.linalg.lstsq(terms[around], colours[around], rcond=None)
    residual = np.linalg.norm(colours - terms @ fit, axis=1)
    threshold = np.quantile(residual[around], quantile)
    return ((residual <= threshold) & ~around).reshape(height, width)


def _grabcut_box(
    image,
    box,
    iterations: int,
    min_side: int,
    margin: float,
    max_crop: int | None,
    unsure,
    background_quantile: float | None,
) -> np.ndarray:
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box_bounds(box, (height, width))
    pad_x, pad_y = max(1, round(margin * (x1 - x0))), max(1, round(margin * (y1 - y0)))
    cx0, cy0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
    cx1, cy1 = min(width, x1 + pad_x), min(height, y1 + pad_y)
    mask = np.zeros((height, width), dtype=bool)
    if min(x1 - x0, y1 - y0) < min_side or (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        mask[y0:y1, x0:x1] = True
        return mask
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
    scale = 1.0
    if max_crop and max(crop.shape[:2]) > max_crop:
        scale = max_crop / max(crop.shape[:2])
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    left, top = round((x0 - cx0) * scale), round((y0 - cy0) * scale)
    right, bottom = left + max(1, round((x1 - x0) * scale)), top + max(1, round((y1 - y0) * scale))
    labels = np.full(crop.shape[:2], cv2.GC_BGD, dtype=np.uint8)
    labels[top:bottom, left:right] = cv2.GC_PR_FGD
    in_box = labels == cv2.GC_PR_FGD
    doubt = np.zeros(crop.shape[:2], dtype=bool)
    if unsure is not None:
        held = np.ascontiguousarray(unsure[cy0:cy1, cx0:cx1], dtype=np.uint8)
        doubt |= cv2.resize(held, crop.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    if background_quantile is not None:
        doubt |= background_like(crop, ~in_box, background_quantile)
    if (in_box & ~doubt).any():  # GrabCut needs foreground to start from
        labels[in_box & doubt] = cv2.GC_PR_BGD
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(crop, labels, None, *models, iterations, cv2.GC_INIT_WITH_MASK)
    found = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    if scale != 1.0:
        found = cv2.resize(found, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_NEAREST)
    mask[cy0:cy1, cx0:cx1] = found > 0
    return mask


def grabcut_baseline(
    results: Sequence[Mapping], images: Mapping[int, np.ndarray], **grabcut_options
) -> list[dict]:
    """The results with each mask replaced by GrabCut's from the detection's box (Table 5).

    ``images``: image id -> ``[H, W, 3]`` uint8 RGB at the original size. The baseline lists
    the detections image by image.
    """
    by_image: dict[int, list[Mapping]] = {}
    for result in results:
        by_image.setdefault(result["image_id"], []).append(result)
    baseline = []
    for image_id, mine in by_image.items():
        if image_id not in images:
            raise EvaluationInputError(f"grabcut baseline: no image for image_id {image_id!r}")
        xywh = np.array([result["bbox"] for result in mine], dtype=np.float64)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        masks = grabcut_masks(images[image_id], xyxy, **grabcut_options)
        rles = encode_masks(masks)
        baseline += [{**r, "segmentation": rle} for r, rle in zip(mine, rles, strict=True)]
    return baseline


# --- how box-like the masks are -----------------------------------------------------------------


def box_likeness(results: Sequence[Mapping], min_score: float = 0.3) -> dict[str, float]:
    """How much the predicted masks look like their boxes: the sign of box-supervised training
    converging to filled boxes (the degenerate solution the projection term alone allows,
    §2.1 of the paper), over the detections scoring at least ``min_score``.

    ``box_likeness/iou``: mean IoU of a mask with its own box filled (1: the mask is its box);
    ``box_likeness/fill``: mean share of its box that a mask covers; ``box_likeness/outside``:
    mean share of a mask outside its box. NaN without such detections. Computed on the RLEs.
    """
    kept = [r for r in results if r["score"] >= min_score]
    if not kept:
        return {name: math.nan for name in (BOX_LIKENESS_IOU, BOX_LIKENESS_FILL, BOX_LIKENESS_OUT)}
    ious, fills, outside = [], [], []
    for result in kept:
        mask = result["segmentation"]
        height, width = mask["size"]
        box = mask_util.frPyObjects(np.array([result["bbox"]], dtype=np.float64), height, width)
        mask_area, box_area = float(mask_util.area(mask)), float(mask_util.area(box)[0])
        inside = float(mask_util.area(mask_util.merge([mask, box[0]], intersect=True)))
        union = mask_area + box_area - inside
        ious.append(inside / union if union else 0.0)
        fills.append(inside / box_area if box_area else 0.0)
        outside.append((mask_area - inside) / mask_area if mask_area else 0.0)
    return {
        BOX_LIKENESS_IOU: float(np.mean(ious)),
        BOX_LIKENESS_FILL: float(np.mean(fills)),
        BOX_LIKENESS_OUT: float(np.mean(outside)),
    }


#: A box-supervised model whose masks cover more of their boxes than this is converging to
#: filled boxes; one whose masks cover less than ``EMPTY_FILL`` is losing its masks.
FILLED_FILL, EMPTY_FILL = 0.9, 0.1


def collapse_warning(metrics: Mapping[str, float]) -> str | None:
    """What is wrong with a box-supervised model's masks, from one evaluation's metrics, or
    None: masks that fill their boxes (or, where the evaluation set has masks, are no closer
    to the true shapes at the true locations than the filled boxes are), or masks that vanish.
    """
    fill = metrics.get(BOX_LIKENESS_FILL, math.nan)
    ours, boxes = metrics.get(MASK_IOU, math.nan), metrics.get(MASK_IOU_BOX, math.nan)
    if fill >= FILLED_FILL:
        return f"masks fill {100 * fill:.0f}% of their boxes: converging to filled boxes"
    if ours <= boxes:
        return (
            f"masks are no closer to the true shapes than their filled boxes (IoU {ours:.2f} vs "
            f"{boxes:.2f}): converging to filled boxes"
        )
    if fill <= EMPTY_FILL:
        return f"masks cover {100 * fill:.0f}% of their boxes: the masks are vanishing"
    return None


def true_box_fill(coco_gt: COCO | Mapping) -> float:
    """Mean share of its box that a ground-truth mask covers (crowds left out): the fill that
    :func:`box_likeness` should approach, NaN without masks."""
    coco_gt = as_coco(coco_gt)
    fills = []
    for annotation in coco_gt.dataset["annotations"]:
        _, _, w, h = annotation["bbox"]
        if not annotation.get("iscrowd") and annotation.get("segmentation") and w * h > 0:
            fills.append(float(mask_util.area(coco_gt.annToRLE(annotation))) / (w * h))
    return float(np.mean(fills)) if fills else math.nan


# --- files and presentation ---------------------------------------------------------------------


def load_ground_truth(path: str | Path) -> COCO:
    """A COCO-format ground-truth file as a pycocotools ``COCO``, its records validated as the
    training's loader validates them (:func:`boxinst.platform.data.check.check_records`): a
    score is never computed against ground truth with NaN boxes or masks of the wrong size."""
    data, problems = load_annotations(Path(path))
    if data is None:
        raise EvaluationInputError(f"ground-truth file {path} {problems[0].message}")
    problems = check_records(data, str(path))
    if problems:
        raise EvaluationInputError(
            f"ground-truth file {path} has {len(problems)} problem(s):\n{summarise(problems)}"
        )
    return as_coco(data)


@contextlib.contextmanager
def results_writer(path: str | Path) -> Iterator[Callable[[Iterable[Mapping]], None]]:
    """A function that appends COCO results to the JSON list at ``path`` as they come; the
    list is written to a temporary file that becomes ``path`` when the block ends, and is
    removed when it fails, so no half file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    written = 0

    def write(results: Iterable[Mapping]) -> None:
        nonlocal written
        for result in results:
            file.write(("[" if not written else ",\n") + json.dumps(result))
            written += 1

    try:
        with partial.open("w") as file:
            yield write
            file.write("]\n" if written else "[]\n")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)


def save_results(path: str | Path, results: Iterable[Mapping]) -> None:
    """Writes COCO results as JSON (:func:`results_writer`)."""
    with results_writer(path) as write:
        write(results)


def load_results(path: str | Path) -> list[dict]:
    """COCO results from a JSON file (a list of detections)."""
    data, problem = read_json(Path(path))
    if problem is not None:
        raise EvaluationInputError(f"predictions file {path} {problem.message}")
    if not isinstance(data, list):
        raise EvaluationInputError(
            f"predictions file {path} must hold a JSON list of detections (COCO results "
            f"format), not a {type(data).__name__}"
        )
    return data


def evaluate_files(
    gt_json: str | Path, predictions_json: str | Path, groups: Groups | None = None
) -> dict[str, float]:
    """:func:`evaluate` of a COCO results file against a COCO ground-truth file (what
    ``boxinst evaluate --gt GT.json --predictions PRED.json [--group NAME=a,b]`` runs)."""
    coco_gt = load_ground_truth(gt_json)
    results = load_results(predictions_json)
    return evaluate(coco_gt, results, groups, source=f"predictions file {predictions_json}")


def parse_group(text: str) -> tuple[str, list[str]]:
    """``NAME=cat1,cat2`` (the CLI's ``--group``) -> ``(NAME, [cat1, cat2])``; members are
    category names or ids, resolved against the ground truth by :func:`evaluate`."""
    name, equals, members_text = text.partition("=")
    members = [member.strip() for member in members_text.split(",") if member.strip()]
    if not equals or not members:
        raise EvaluationInputError(f"class group {text!r} is not of the form NAME=cat1,cat2")
    return _group_name(name.strip()), members


def _group_name(name: str) -> str:
    try:
        return check_group_name(name)
    except ValueError as error:
        raise EvaluationInputError(str(error)) from None


def format_table(metrics: Mapping[str, float]) -> str:
    """The metrics as a text table: a row per IoU type and class group (``segm``, ``bbox``,
    ``segm_unseen``, ...), a column per stat, in percent with one decimal as in the paper's
    tables; ``-`` where undefined."""
    rows: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        prefix, _, stat = name.rpartition("/")
        rows.setdefault(prefix, {})[stat] = value
    columns = list(dict.fromkeys(stat for row in rows.values() for stat in row))
    label_width = max((len(prefix) for prefix in rows), default=0)
    width = max([6, *(len(column) + 1 for column in columns)])
    lines = [" " * label_width + "".join(column.rjust(width) for column in columns)]
    for prefix, row in rows.items():
        cells = (_cell(row.get(column, math.nan)).rjust(width) for column in columns)
        lines.append(prefix.ljust(label_width) + "".join(cells))
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"
