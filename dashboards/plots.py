"""Plots of a comparison as PNG bytes (matplotlib, no display needed): AP per regime, AP against
τ, training loss curves and throughput. Each configuration keeps one colour in every plot."""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.figure import Figure

from boxinst.dashboards.paper import BOX_AS_MASK_ROW
from boxinst.dashboards.runs import FINISHED
from boxinst.dashboards.tables import OURS, STD, TAU, Table, label
from boxinst.platform.metrics import SEGM_AP


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _axes(title: str, ylabel: str, width: float = 7.5):
    figure = Figure(figsize=(width, 3.6))
    axes = figure.subplots()
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def colours(regimes: Table, keys: list[str]) -> dict[str, str]:
    """A colour of matplotlib's cycle per configuration, in the order of the regimes table (the
    box-as-mask row stays grey)."""
    ours = regimes.frame[regimes.frame["source"] == OURS]
    names = [label(row, keys) for _, row in ours.iterrows() if row["regime"] != BOX_AS_MASK_ROW]
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


def _bars(axes, names: list[str], means: list[float], stds: list[float], palette: dict) -> None:
    axes.bar(
        range(len(names)),
        means,
        yerr=[0 if pd.isna(s) else s for s in stds],
        capsize=4,
        color=[palette.get(n, "0.6") for n in names],
    )
    axes.set_xticks(range(len(names)), names, rotation=20, ha="right")


def ap_per_regime(table: Table, keys: list[str], palette: dict[str, str]) -> bytes:
    """Bars of mean mask AP (± std) per row of the regimes table, ours only."""
    ours = table.frame[table.frame["source"] == OURS]
    names = [label(row, keys) for _, row in ours.iterrows()]
    figure, axes = _axes("Mask AP per regime (mean ± std over seeds)", "mask AP")
    _bars(axes, names, list(ours[SEGM_AP]), list(ours[SEGM_AP + STD]), palette)
    return _png(figure)


def ap_against_tau(table: Table, keys: list[str], palette: dict[str, str]) -> bytes:
    """Mean mask AP (± std) against the colour-similarity threshold, a line per configuration
    of the other settings."""
    ours = table.frame[table.frame["source"] == OURS].sort_values(TAU)
    others = [k for k in keys if k != TAU]
    figure, axes = _axes("Mask AP against the colour-similarity threshold τ", "mask AP", 6)
    for name, rows in ours.groupby(ours.apply(label, axis=1, keys=others), sort=False):
        axes.errorbar(
            rows[TAU],
            rows[SEGM_AP],
            yerr=rows[SEGM_AP + STD].fillna(0),
            marker="o",
            capsize=4,
            label=name,
            color=palette.get(label(rows.iloc[0], keys)),
        )
    axes.set_xlabel("τ")
    axes.legend(fontsize="small")
    return _png(figure)


def loss_curves(trials: pd.DataFrame, history: pd.DataFrame, palette: dict[str, str]) -> bytes:
    """``train/loss`` over iterations, a line per trial coloured by configuration; unfinished
    trials dashed."""
    figure, axes = _axes("Training loss per regime (unfinished trials dashed)", "train/loss")
    seen: set[str] = set()
    for _, trial in trials.iterrows():
        points = history[history["run_id"] == trial["run_id"]].sort_values("step")
        if points.empty:
            continue
        name = trial["label"]
        axes.plot(
            points["step"],
            points["value"],
            color=palette.get(name),
            linestyle="-" if trial["status"] == FINISHED else "--",
            alpha=0.85,
            label=None if name in seen else name,
        )
        seen.add(name)
    axes.set_xlabel("iteration")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(figure)


def throughput(trials: pd.DataFrame, history: pd.DataFrame, palette: dict[str, str]) -> bytes:
    """Training images per second per configuration: each trial's mean over its reports, then
    mean ± std over the configuration's trials."""
    per_trial = history.groupby("run_id")["value"].mean()
    speeds = trials.assign(speed=trials["run_id"].map(per_trial)).dropna(subset=["speed"])
    summary = speeds.groupby("label")["speed"].agg(["mean", "std"])
    summary = summary.reindex([name for name in palette if name in summary.index])
    figure, axes = _axes("Training throughput", "images / s")
    _bars(axes, list(summary.index), list(summary["mean"]), list(summary["std"]), palette)
    return _png(figure)
