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

LOSSES = (
    "loss_cls",
    "loss_box",
    "loss_ctr",
    "loss_mask",
    "loss_proj",
    "loss_pairwise",
    "loss_prior",
)

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
    TRAIN_LOSS_PRIOR,
) = (train_loss_name(loss) for loss in LOSSES)

#: Training throughput and learning rate, reported with the losses.
IMAGES_PER_SECOND = "train/images_per_s"
LEARNING_RATE = "train/lr"
#: Steps not taken because a loss was NaN or inf (``solver.on_nonfinite_loss: skip``), so far.
SKIPPED_STEPS = "train/skipped_steps"

#: Keys of a training report that are bookkeeping, not metrics: the iteration it was made at,
#: whether it is the run's final one, and the iteration the run was resumed from.
ITERATION = "iteration"
FINAL = "final"
RESUMED_FROM = "resumed_from"
BOOKKEEPING = (ITERATION, FINAL, RESUMED_FROM)

#: The paper's "box as mask" baseline (Table 3): the trial's own detections with their boxes
#: filled as masks, scored as masks: ``box_as_mask/AP``, ``box_as_mask/AP50``, ...
BOX_AS_MASK = "box_as_mask"


def box_as_mask_name(stat: str) -> str:
    """The name of one AP number of the box-as-mask baseline, e.g. ``box_as_mask/AP``."""
    if stat not in AP_STATS:
        raise ValueError(f"unknown stat {stat!r}; the stats are {AP_STATS}")
    return f"{BOX_AS_MASK}/{stat}"


#: Mean IoU with the true masks of the model's masks at the ground-truth instances' own
#: locations, and of their filled boxes (:mod:`boxinst.platform.evaluation.mask_quality`).
MASK_IOU = "mask_iou/true_locations"
MASK_IOU_BOX = "mask_iou/filled_boxes"

#: How box-like the predicted masks are (:func:`boxinst.platform.evaluation.coco.box_likeness`), and
#: the same fill of the ground-truth masks, the reference (``box_likeness/true_fill``).
BOX_LIKENESS_IOU = "box_likeness/iou"
BOX_LIKENESS_FILL = "box_likeness/fill"
BOX_LIKENESS_OUT = "box_likeness/outside"
BOX_LIKENESS_TRUE_FILL = "box_likeness/true_fill"


# --- MLflow layout: the tags and artifact folders the platform writes and dashboards read ------
#
# One MLflow experiment per spec name (unless the user names another); in it, one parent run per
# sweep (tag kind=sweep) and one nested run per trial (kind=trial, ``mlflow.parentRunId`` set).
# Trial params are the flattened resolved spec (``regime.name``, ``loss.pairwise_tau``, ``seed``,
# ...); metrics are the losses over iterations (step = iteration) and the AP numbers at the end.

TAG_KIND = "boxinst.kind"  # KIND_SWEEP or KIND_TRIAL
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
TAG_SPEC = "boxinst.spec"  # the spec's name
TAG_REGIME = "boxinst.regime"  # a trial's regime name
TAG_AXES = "boxinst.axes"  # JSON object: a trial's sweep-axis values by dotted key
TAG_SWEEP = "boxinst.sweep"  # a sweep's name: the Ray Tune experiment under the storage
TAG_RAY_RUN = "boxinst.ray_run"  # the Ray Train run (name under the storage) a run trained in
TAG_CHECKPOINT = "boxinst.checkpoint"  # URI of a run's latest checkpoint (final when it ended)
TAG_MODEL = "boxinst.model"  # URI of a run's LoggedModel (models:/m-...): its final checkpoint
TAG_COLLAPSE = "boxinst.collapse"  # what is wrong with a box-supervised trial's final masks

ARTIFACT_CONFIG = "config"  # config/spec.yaml: the resolved spec (trial) or sweep spec (parent)
ARTIFACT_EVALUATION = "evaluation"  # evaluation/metrics.json: every final metric
ARTIFACT_PREDICTIONS = "predictions"  # predictions/results.json: COCO results on the val split
ARTIFACT_OVERLAYS = "overlays"  # overlays/<image id>.png: predicted masks over val images
ARTIFACT_REPORT = "report"  # report/compare.html on a sweep's parent run (dashboards)
