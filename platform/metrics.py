"""Stable metric names, defined once: training and evaluation log them, dashboards read them.

Evaluation metrics are ``<iou type>/<stat>`` over all classes and ``<iou type>_<group>/<stat>``
over a named class group (e.g. ``segm_unseen/AP``, the classes that had no masks in a
partially supervised regime). The stats are COCO's six AP numbers, the columns of the BoxInst
paper's tables. Training losses are ``train/<loss>``; ``train/loss`` is their weighted sum.
"""

from __future__ import annotations

import re

SEGM = "segm"
BBOX = "bbox"
IOU_TYPES = (SEGM, BBOX)

# In the order of pycocotools' ``COCOeval.stats[:6]``.
AP_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

LOSSES = ("loss_cls", "loss_box", "loss_ctr", "loss_mask", "loss_proj", "loss_pairwise")

_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_group_name(group: str) -> str:
    """``group`` if it can go inside a metric name (letters, digits, ``_.-``), else ValueError."""
    if not _GROUP_NAME.fullmatch(group):
        raise ValueError(
            f"class group name {group!r} must start with a letter or digit and hold only "
            "letters, digits, '_', '.' and '-'"
        )
    return group


def metric_name(iou_type: str, stat: str, group: str | None = None) -> str:
    """The name of one AP number: ``segm/AP``, ``bbox/AP50``, ``segm_unseen/AP`` (a group)."""
    if iou_type not in IOU_TYPES or stat not in AP_STATS:
        raise ValueError(
            f"unknown metric {iou_type}/{stat}: iou type in {IOU_TYPES}, stat in {AP_STATS}"
        )
    prefix = iou_type if group is None else f"{iou_type}_{check_group_name(group)}"
    return f"{prefix}/{stat}"


def train_loss_name(loss: str) -> str:
    """The tracked name of one training loss term, e.g. ``train/loss_pairwise``."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; the losses are {LOSSES}")
    return f"train/{loss}"


SEGM_AP, SEGM_AP50, SEGM_AP75, SEGM_APS, SEGM_APM, SEGM_APL = (
    metric_name(SEGM, stat) for stat in AP_STATS
)
BBOX_AP, BBOX_AP50, BBOX_AP75, BBOX_APS, BBOX_APM, BBOX_APL = (
    metric_name(BBOX, stat) for stat in AP_STATS
)

TRAIN_LOSS = "train/loss"
(
    TRAIN_LOSS_CLS,
    TRAIN_LOSS_BOX,
    TRAIN_LOSS_CTR,
    TRAIN_LOSS_MASK,
    TRAIN_LOSS_PROJ,
    TRAIN_LOSS_PAIRWISE,
) = (train_loss_name(loss) for loss in LOSSES)
