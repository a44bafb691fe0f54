"""The BoxInst paper's numbers (Tian et al., CVPR 2021), keyed by the shipped spec names.

Each row says which of our tables it belongs in, where in the paper it comes from, and what it
sits beside: ``match`` holds trial columns (``masks``, ``projection``, ``pairwise``, a
parameter) and their values; the report places the row after our rows that match and marks it
as the paper's. Every number is copied from the paper's Tables 1-7, none is derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from boxinst.platform.metrics import AP_STATS, SEGM, metric_name

#: Our tables a paper row can belong in.
REGIMES, TAU, NEIGHBOURHOOD, SEMI = "regimes", "tau", "neighbourhood", "semi"
#: The regime label of the box-as-mask row of the regimes table (Table 3's "box mask").
BOX_AS_MASK_ROW = "box as mask"
#: The class group the paper's Tables 6 and 7 score apart (the platform's ``unseen`` group).
UNSEEN = "unseen"


@dataclass(frozen=True)
class PaperRow:
    table: str
    source: str
    label: str
    match: dict[str, object]
    values: dict[str, float] = field(default_factory=dict)


def _row(table, source, label, match, segm=(), unseen=()) -> PaperRow:
    values = {metric_name(SEGM, s): v for s, v in zip(AP_STATS[: len(segm)], segm, strict=True)}
    values |= {
        metric_name(SEGM, s, UNSEEN): v
        for s, v in zip(AP_STATS[: len(unseen)], unseen, strict=True)
    }
    return PaperRow(table, f"paper, {source}", label, match, values)


def _regime(masks: str, projection: bool, pairwise: bool) -> dict[str, object]:
    """The paper's regimes: BoxInst's terms, never the GrabCut prior."""
    return {"masks": masks, "projection": projection, "pairwise": pairwise, "prior": False}


BOX_ONLY = _regime("none", True, True)
PROJECTION_ONLY = _regime("none", True, False)
FULLY_SUPERVISED = {"masks": "all"}

_T3 = "Table 3, COCO val2017"
_TABLE3 = (
    _row(REGIMES, _T3, "box mask", {"regime": BOX_AS_MASK_ROW}, (10.6, 32.2, 4.6, 5.7, 11.3, 15.6)),
    _row(REGIMES, _T3, "L_proj", PROJECTION_ONLY, (21.2, 45.2, 17.7, 10.0, 21.4, 32.5)),
    _row(REGIMES, _T3, "L_proj + L_pairwise", BOX_ONLY, (30.7, 52.2, 31.1, 13.8, 33.1, 45.7)),
)
_DICE = _row(
    REGIMES,
    "Table 2, COCO val2017",
    "fully supervised, dice loss",
    FULLY_SUPERVISED,
    (35.6, 56.3, 37.8, 16.9, 38.9, 51.0),
)
_T4 = "Table 4, COCO test-dev"
_T4_VAL = "Table 4 (†), COCO val2017"


def _semi(source: str, classes: str, rows: tuple) -> tuple[PaperRow, ...]:
    """Tables 6 and 7: no box terms, L_proj, L_proj + L_pairwise, then box supervised."""
    terms = ((False, False), (True, False), (True, True))
    labels = ("no BoxInst terms", "L_proj", "L_proj + L_pairwise")
    partial = [
        _row(SEMI, source, f"masks of {classes}, {label}", _regime(f"classes: {classes}", *t), *r)
        for label, t, r in zip(labels, terms, rows[:3], strict=True)
    ]
    return (*partial, _row(SEMI, source, "box supervised", BOX_ONLY, *rows[3]))


_T1A = "Table 1a, COCO val2017"
_T1B = "Table 1b, COCO val2017"
_T5 = "Table 5, Pascal VOC 2012 val"
_TAU = "loss.pairwise_tau"
_SIZE, _DILATION = "loss.pairwise_kernel_size", "loss.pairwise_dilation"

PAPER: dict[str, tuple[PaperRow, ...]] = {
    "coco_r50_1x": (*_TABLE3, _DICE),
    "ablation_terms": _TABLE3,
    "coco_fully_supervised": (_DICE,),
    "coco_r50_3x": (
        _row(REGIMES, _T4, "BoxInst R-50-FPN 3×", BOX_ONLY, (32.1, 55.1, 32.4, 15.6, 34.3, 43.5)),
        _row(
            REGIMES,
            _T4,
            "CondInst R-50-FPN 3× (fully supervised)",
            FULLY_SUPERVISED,
            (37.8, 59.1, 40.5, 21.0, 40.3, 48.7),
        ),
    ),
    "coco_r101_1x": (
        _row(
            REGIMES,
            _T4_VAL,
            "BoxInst R-101-FPN 1×, no multi-scale",
            BOX_ONLY,
            (31.6, 54.0, 31.9, 13.9, 34.2, 48.2),
        ),
        _row(REGIMES, _T4, "BoxInst R-101-FPN 1×", BOX_ONLY, (32.5, 55.3, 33.0, 15.6, 35.1, 44.1)),
    ),
    "coco_r101_3x": (
        _row(REGIMES, _T4, "BoxInst R-101-FPN 3×", BOX_ONLY, (33.2, 56.5, 33.6, 16.2, 35.3, 45.1)),
        _row(
            REGIMES,
            _T4,
            "CondInst R-101-FPN 3× (fully supervised)",
            FULLY_SUPERVISED,
            (39.1, 60.9, 42.0, 21.5, 41.7, 50.9),
        ),
    ),
    "coco_semi_voc20": _semi(
        "Table 6, COCO val2017 (unseen: the 60 non-VOC classes)",
        "voc20",
        (
            ((24.7, 44.6, 24.2), (19.9, 38.3, 18.5)),
            ((31.8, 52.5, 33.2), (29.7, 49.3, 31.0)),
            ((32.5, 53.0, 34.0), (30.9, 50.1, 32.4)),
            ((30.7, 52.2, 31.1), (29.6, 49.7, 30.4)),
        ),
    ),
    "coco_semi_nonvoc60": _semi(
        "Table 7, COCO val2017 (unseen: the 20 VOC classes)",
        "nonvoc60",
        (
            ((32.1, 51.6, 33.9), (25.5, 45.5, 25.1)),
            ((33.1, 53.8, 34.3), (31.6, 57.4, 30.0)),
            ((33.8, 54.3, 35.7), (35.9, 60.9, 36.3)),
            ((30.7, 52.2, 31.1), (29.6, 49.7, 30.4)),
        ),
    ),
    "ablation_tau": (
        _row(TAU, _T1A, "box-only BoxInst", {_TAU: 0.0}, (9.4, 30.3, 3.3, 7.6, 10.3, 11.4)),
        _row(TAU, _T1A, "box-only BoxInst", {_TAU: 0.1}, (30.7, 52.2, 31.1, 13.8, 33.1, 45.7)),
        _row(TAU, _T1A, "box-only BoxInst", {_TAU: 0.2}, (30.6, 52.6, 30.9, 13.9, 32.8, 45.5)),
    ),
    "ablation_neighbourhood": tuple(
        _row(NEIGHBOURHOOD, _T1B, "box-only BoxInst", {_SIZE: k, _DILATION: d}, values)
        for k, d, values in (
            (3, 1, (29.7, 52.0, 29.6, 13.4, 32.3, 44.4)),
            (3, 2, (30.7, 52.2, 31.1, 13.8, 33.1, 45.7)),
            (5, 1, (30.5, 52.3, 30.7, 13.7, 33.0, 45.7)),
            (5, 2, (29.9, 51.9, 30.0, 13.8, 32.1, 45.0)),
        )
    ),
    "voc": (
        _row(
            REGIMES,
            _T5,
            "BoxInst R-50",
            {**BOX_ONLY, "model.backbone_depth": 50},
            (32.2, 58.1, 31.0),
        ),
        _row(
            REGIMES,
            _T5,
            "BoxInst R-101",
            {**BOX_ONLY, "model.backbone_depth": 101},
            (34.4, 60.1, 34.6),
        ),
    ),
}


def rows_for(specs: set[str], table: str) -> list[tuple[str, PaperRow]]:
    """The paper's rows of our ``table`` for the given spec names, with their spec."""
    return [
        (spec, row) for spec in sorted(specs) for row in PAPER.get(spec, ()) if row.table == table
    ]
