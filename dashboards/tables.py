"""The paper's table layouts filled from the trials frame (see ``runs.trials_frame``).

Trials that differ only in their seed are one configuration: its row holds the mean and the
sample standard deviation (ddof 1) of each metric over its FINISHED trials, and a count of its
trials by status, so running, failed and killed ones are never dropped silently. A table appears
only when the trials carry its axis: the regimes table (Table 3) always, the threshold table
(Table 1a) when ``loss.pairwise_tau`` varies, the neighbourhood table (Table 1b) when the
kernel size or dilation varies, and a semi-supervised table (Tables 6 and 7) per class group
scored apart (``segm_<group>/AP``). Where a trial's spec is one of the paper's recipes, the
paper's rows sit beside ours, marked as the paper's in the ``source`` column.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from boxinst.dashboards import paper
from boxinst.dashboards.runs import FINISHED
from boxinst.platform.metrics import (
    AP_STATS,
    BBOX_AP,
    BOX_LIKENESS_FILL,
    IMAGES_PER_SECOND,
    MASK_IOU,
    MASK_IOU_BOX,
    SEGM,
    box_as_mask_name,
    metric_name,
)

STD = " ±"  # suffix of the standard-deviation column of a metric
GAP = "gap"  # the kind of the supervision-gap table
OURS = "ours"
TAU = "loss.pairwise_tau"
SIZE, DILATION = "loss.pairwise_kernel_size", "loss.pairwise_dilation"
REGIME_COLUMNS = ["regime", "masks", "projection", "pairwise", "prior"]
HEADERS = {
    TAU: "τ",
    SIZE: "size",
    DILATION: "dilation",
    "projection": "L_proj",
    "pairwise": "L_pairwise",
    "prior": "L_prior",
    BOX_LIKENESS_FILL: "box fill",
    MASK_IOU: "mask IoU",
    MASK_IOU_BOX: "filled-box IoU",
    IMAGES_PER_SECOND: "images/s",
}
_GROUP_AP = re.compile(rf"{SEGM}_(.+)/AP")
SEGM_STATS = [metric_name(SEGM, stat) for stat in AP_STATS]
#: How box-like the masks are, and their IoU at the true locations (the collapse diagnostics).
SHAPE_METRICS = [BOX_LIKENESS_FILL, MASK_IOU, MASK_IOU_BOX]


@dataclass
class Table:
    """One table of the report: ``frame`` holds the identity columns, ``trials`` (counts by
    status), each metric's mean with its ``<metric> ±`` standard deviation, and ``source``."""

    kind: str
    title: str
    caption: str
    frame: pd.DataFrame
    identity: list[str]
    metrics: list[str]


def setting_keys(trials: pd.DataFrame) -> list[str]:
    """What tells configurations apart: ``regime``, the spec when several, and every parameter
    that varies across the trials except the seed (the regime's own parameters are ``regime``;
    a sweep's own settings, its axes among them, differ between sweeps, not configurations)."""
    params = [
        p
        for p in trials.attrs["params"]
        if p not in {"seed", "name", "sweep"} and not p.startswith(("regime.", "sweep."))
    ]
    varying = [p for p in params if trials[p].astype(str).nunique() > 1]
    return ["regime", *(["spec"] if trials["spec"].nunique() > 1 else []), *varying]


def label(row: pd.Series, keys: list[str]) -> str:
    """A configuration's short name: ``box_only``, ``box_only τ=0.2``."""
    settings = [
        f"{HEADERS.get(k, k)}={_cell(row[k])}" for k in keys if k != "regime" and _cell(row[k])
    ]
    return " ".join([str(row["regime"]), *settings])


def configuration_labels(trials: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The configuration name of each trial (see :func:`label`)."""
    return trials.apply(label, axis=1, keys=keys)


def _true(value: object) -> bool:
    """Whether a cell is the boolean True (Python's or numpy's)."""
    return isinstance(value, bool | np.bool_) and bool(value)


def _order(value: object) -> tuple:
    """Sort key of a cell: numbers, then text, then missing values."""
    if isinstance(value, numbers.Number | np.bool_) and not pd.isna(value):
        return (0, float(value), "")
    if isinstance(value, str) and value:
        return (1, 0.0, value)
    return (2, 0.0, "")


def _regime_rank(trial: pd.Series) -> tuple:
    """Table 3's order: box-only regimes, partial masks, full masks; fewer box terms first."""
    masks = {"none": 0, "all": 2, "": 3}.get(trial["masks"], 1)
    terms = (_true(trial[term]) for term in ("projection", "pairwise", "prior"))
    return (masks, *terms, str(trial["regime"]))


def _by_regime(identity: list[str]) -> Callable[[pd.Series], tuple]:
    """Sort key of a trial: its regime's rank, then the settings after the regime columns."""
    settings = identity[len(REGIME_COLUMNS) :]
    return lambda t: (_regime_rank(t), *(_order(t.get(k)) for k in settings))


def _statuses(status: pd.Series) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in status.value_counts(sort=False).items())


def _summary(group: pd.DataFrame, identity: list[str], metrics: dict[str, str]) -> dict:
    """Our row of a group of trials (alike in ``identity``): ``metrics`` maps each column to the
    metric it averages."""
    finished = group[group["status"] == FINISHED]
    row = {column: group.iloc[0].get(column) for column in identity}
    row["trials"] = _statuses(group["status"])
    for column, metric in metrics.items():
        values = finished[metric] if metric in finished else pd.Series(dtype=float)
        row[column], row[column + STD] = values.mean(), values.std()
    row["source"] = OURS
    return row


def _matches(trial: pd.Series | dict, spec: str, ref: paper.PaperRow) -> bool:
    if trial.get("spec") != spec:
        return False
    return all(trial.get(k) is not None and bool(trial.get(k) == v) for k, v in ref.match.items())


def _paper_row(ref: paper.PaperRow, identity: list[str], metrics: list[str]) -> dict:
    row = {k: ref.match.get(k) for k in identity} | {"regime": ref.label, "trials": ""}
    for metric in metrics:
        row[metric], row[metric + STD] = ref.values.get(metric, math.nan), math.nan
    return row | {"source": ref.source}


def _table(
    kind: str,
    title: str,
    caption: str,
    ours: list[tuple[pd.Series | dict, dict]],
    identity: list[str],
    metrics: list[str],
) -> Table:
    """Our rows (each with a trial standing for it), the paper's rows of the same specs after
    the rows they match, the paper's unmatched rows last."""
    specs = {str(trial.get("spec")) for trial, _ in ours}
    refs = paper.rows_for(specs, kind)
    placed: set[int] = set()
    rows = []
    for trial, row in ours:
        rows.append(row)
        for i, (spec, ref) in enumerate(refs):
            if i not in placed and _matches(trial, spec, ref):
                rows.append(_paper_row(ref, identity, metrics))
                placed.add(i)
    rows += [
        _paper_row(ref, identity, metrics) for i, (_, ref) in enumerate(refs) if i not in placed
    ]
    columns = [*identity, "trials", *(c for m in metrics for c in (m, m + STD)), "source"]
    return Table(kind, title, caption, pd.DataFrame(rows, columns=columns), identity, metrics)


def _groups(
    trials: pd.DataFrame,
    keys: list[str],
    identity: list[str],
    metrics: list[str],
    order: Callable[[pd.Series], tuple],
) -> list[tuple[pd.Series, dict]]:
    """One row per configuration (``keys``), in ``order`` of a trial standing for each."""
    groups = [g for _, g in trials.groupby(keys, dropna=False, sort=False)]
    groups.sort(key=lambda g: order(g.iloc[0]))
    return [(g.iloc[0], _summary(g, identity, {m: m for m in metrics})) for g in groups]


_MEAN = "Mean ± standard deviation over the finished trials of each configuration (seeds)."


def regimes_table(trials: pd.DataFrame, keys: list[str]) -> Table:
    """Table 3's layout: a row per regime (and per other setting), mask AP columns, with the
    box-as-mask baseline of the trials' own detections first."""
    identity = REGIME_COLUMNS + [k for k in keys if k != "regime"]
    rows = []
    baseline = {column: box_as_mask_name(column.split("/")[1]) for column in SEGM_STATS}
    if any(metric in trials for metric in baseline.values()):
        for spec, group in trials.groupby("spec", sort=True):
            row = _summary(group, ["spec"] if "spec" in keys else [], baseline)
            rows.append(
                (
                    {"regime": paper.BOX_AS_MASK_ROW, "spec": spec},
                    {**row, "regime": paper.BOX_AS_MASK_ROW},
                )
            )
    rows += _groups(trials, keys, identity, SEGM_STATS, _by_regime(identity))
    caption = (
        f"Mask AP per supervision regime. {_MEAN} '{paper.BOX_AS_MASK_ROW}': every trial's own "
        "detected boxes filled as masks (the paper's 'box mask' row)."
    )
    return _table(
        paper.REGIMES, "Supervision regimes (paper Table 3)", caption, rows, identity, SEGM_STATS
    )


def _ablation(
    trials: pd.DataFrame, keys: list[str], axes: list[str], kind: str, title: str
) -> Table:
    """A table led by ``axes``, over the trials that use the pairwise term."""
    identity = axes + ["regime"] + [k for k in keys if k not in {*axes, "regime"}]
    used = trials[trials["pairwise"].map(_true)]
    order = lambda t: (*(_order(t.get(k)) for k in axes), _regime_rank(t))  # noqa: E731
    rows = _groups(used, keys, identity, SEGM_STATS, order)
    return _table(
        kind,
        title,
        f"Mask AP of the trials with the pairwise term. {_MEAN}",
        rows,
        identity,
        SEGM_STATS,
    )


def semi_tables(trials: pd.DataFrame, keys: list[str]) -> list[Table]:
    """Tables 6 and 7's layout per class group scored apart: AP, AP50, AP75 over all classes and
    over the group."""
    groups = sorted({m.group(1) for c in trials.columns if (m := _GROUP_AP.fullmatch(c))})
    identity = REGIME_COLUMNS + [k for k in keys if k != "regime"]
    tables = []
    for group in groups:
        metrics = [metric_name(SEGM, s, g) for g in (None, group) for s in AP_STATS[:3]]
        rows = _groups(trials, keys, identity, metrics, _by_regime(identity))
        caption = f"Mask AP over all classes and over the '{group}' classes. {_MEAN}"
        title = f"Semi-supervised: all classes and '{group}' classes (paper Tables 6 and 7)"
        tables.append(_table(paper.SEMI, title, caption, rows, identity, metrics))
    return tables


#: The columns of the supervision-gap table, beside the mean and worst seed of mask AP.
FULL_AP, RATIO, WORST_RATIO = "fully supervised AP", "× full", "× full, worst seed"
BOX_AS_MASK_AP, WORST_BOX_RATIO = "box-as-mask AP", "× box-as-mask, worst seed"
WORST_SEED = "AP, worst seed"


def _ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN where the reference is zero or missing (no full run)."""
    return value / reference if reference and not math.isnan(reference) else math.nan


def supervision_gap_table(trials: pd.DataFrame, keys: list[str]) -> Table | None:
    """How close box supervision comes to full supervision, setting by setting (a data style,
    say): per box-supervised regime, its mask AP over the seeds (mean and worst), the fully
    supervised mask AP of the same setting, their ratio (of the means, and the worst over
    seeds paired by seed) and the ratio to the box-as-mask baseline of its own detections on
    its worst seed. None unless the trials have a fully supervised regime and another."""
    ap, baseline = SEGM_STATS[0], box_as_mask_name("AP")
    if "seed" not in trials or ap not in trials:
        return None
    finished = trials[trials["status"] == FINISHED]
    full = finished[finished["masks"] == "all"]
    boxed = trials[trials["masks"] == "none"]
    if full.empty or boxed.empty:
        return None
    settings = [k for k in keys if k != "regime"]
    rows = []
    for _, every in boxed.groupby(["regime", *settings], dropna=False, sort=False):
        first, group = every.iloc[0], every[every["status"] == FINISHED]
        same = full
        for key in settings:
            same = same[same[key].astype(str) == str(first[key])]
        paired = group.merge(same[["seed", ap]], on="seed", suffixes=("", "_full"))
        row = {key: first[key] for key in ["regime", *settings]}
        row["trials"] = _statuses(every["status"])
        values = {
            ap: group[ap].mean(),
            WORST_SEED: group[ap].min(),
            FULL_AP: same[ap].mean(),
            RATIO: _ratio(group[ap].mean(), same[ap].mean()),
            WORST_RATIO: (paired[ap] / paired[f"{ap}_full"]).min() if len(paired) else math.nan,
            BOX_AS_MASK_AP: group[baseline].mean() if baseline in group else math.nan,
            WORST_BOX_RATIO: (group[ap] / group[baseline]).min() if baseline in group else math.nan,
        }
        for column, value in values.items():
            row[column], row[column + STD] = value, math.nan
        row[ap + STD] = group[ap].std()
        rows.append((first, row | {"source": OURS}))
    rows.sort(key=lambda pair: (*(_order(pair[0].get(k)) for k in settings), _regime_rank(pair[0])))
    identity = [*settings, "regime"]
    metrics = [ap, WORST_SEED, FULL_AP, RATIO, WORST_RATIO, BOX_AS_MASK_AP, WORST_BOX_RATIO]
    columns = [*identity, "trials", *(c for m in metrics for c in (m, m + STD)), "source"]
    caption = (
        "Box-supervised mask AP against full supervision on the same setting: mean ± std and "
        "worst over seeds; ratios of the means and, paired by seed, the worst ratio to the fully "
        "supervised trial and to the box-as-mask baseline of the trial's own detections."
    )
    frame = pd.DataFrame([row for _, row in rows], columns=columns)
    return Table(GAP, "Box supervision against full supervision", caption, frame, identity, metrics)


def paper_tables(trials: pd.DataFrame, keys: list[str]) -> list[Table]:
    """Every table the trials have the axes of (see module doc)."""
    tables = [regimes_table(trials, keys)]
    gap = supervision_gap_table(trials, keys)
    if gap is not None:
        tables.append(gap)
    if TAU in keys:
        tables.append(
            _ablation(
                trials, keys, [TAU], paper.TAU, "Colour-similarity threshold τ (paper Table 1a)"
            )
        )
    if SIZE in keys or DILATION in keys:
        title = "Pairwise neighbourhood: size and dilation (paper Table 1b)"
        tables.append(_ablation(trials, keys, [SIZE, DILATION], paper.NEIGHBOURHOOD, title))
    return tables + semi_tables(trials, keys)


def trials_table(trials: pd.DataFrame, keys: list[str]) -> Table:
    """Every trial with its status; AP cells of unfinished trials are empty."""
    groups = sorted(c for c in trials.columns if _GROUP_AP.fullmatch(c))
    wanted = [*SEGM_STATS[:3], BBOX_AP, box_as_mask_name("AP"), *groups, *SHAPE_METRICS]
    wanted.append(IMAGES_PER_SECOND)
    metrics = [m for m in wanted if m in trials]
    identity = ["sweep", "run", "status", "regime", *(k for k in keys if k != "regime"), "seed"]
    identity.append("collapse")  # the warning of a box-supervised trial whose masks collapsed
    frame = trials.reindex(columns=[*identity, *metrics]).assign(source=OURS)
    return Table(
        "trials", "Trials", "Every trial of the comparison and its state.", frame, identity, metrics
    )


def sweeps_table(trials: pd.DataFrame) -> Table:
    """Each sweep of the trials with its own state and its trials counted by state."""
    rows = [
        {
            "sweep": name,
            "sweep_id": sweep_id,
            "status": status,
            "trials": _statuses(group["status"]),
        }
        for (name, sweep_id, status), group in trials.groupby(
            ["sweep", "sweep_id", "sweep_status"], sort=False
        )
    ]
    frame = pd.DataFrame(rows).assign(source=OURS)
    caption = "A sweep still RUNNING, or with failed or killed trials, says so here."
    return Table("sweeps", "Sweeps", caption, frame, ["sweep", "sweep_id", "status"], [])


def _cell(value: object) -> str:
    if _true(value):
        return "✓"
    if value is None or isinstance(value, bool | np.bool_) or pd.isna(value):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(mean: float, std: float, source: str) -> str:
    if math.isnan(mean):
        return ""
    if source != OURS:
        return f"{mean:.1f}"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def header(column: str) -> str:
    """A column's display name: ``segm/AP`` -> ``AP``, ``segm_unseen/AP50`` -> ``unseen AP50``."""
    if column in HEADERS:
        return HEADERS[column]
    prefix, slash, stat = column.partition("/")
    if not slash or stat not in AP_STATS:
        return column
    if prefix == SEGM:
        return stat
    group = prefix.removeprefix(f"{SEGM}_")
    return f"{group} {stat}" if group != prefix else f"{prefix.replace('_', '-')} {stat}"


def formatted(table: Table) -> pd.DataFrame:
    """The table as text cells: ✓ for a box term, ``mean ± std``, empty for a missing value."""
    frame = table.frame
    cells = {header(c): frame[c].map(_cell) for c in table.identity}
    if "trials" in frame:
        cells["trials"] = frame["trials"]
    for metric in table.metrics:
        std = frame[metric + STD] if metric + STD in frame else pd.Series(math.nan, frame.index)
        cells[header(metric)] = [
            _number(float(m), float(s), src)
            for m, s, src in zip(frame[metric], std, frame["source"], strict=True)
        ]
    if (frame["source"] != OURS).any():
        cells["source"] = frame["source"]
    return pd.DataFrame(cells)
