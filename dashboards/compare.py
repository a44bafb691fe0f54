"""``boxinst compare``: named sweeps, experiments and runs -> tables, plots, overlays, a report."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from boxinst.dashboards import gallery, plots, report, runs, tables
from boxinst.platform.metrics import IMAGES_PER_SECOND, TRAIN_LOSS


@dataclass
class Comparison:
    """What a comparison found: the trials frame, its tables (sweeps, trials, then the paper's
    layouts) and the report's HTML."""

    trials: pd.DataFrame
    tables: list[tables.Table]
    html: str


def _without_credentials(uri: str) -> str:
    """The URI without a ``user:password@`` part (the report is shared as an artifact)."""
    return re.sub(r"//[^/@]*@", "//", uri)


def _figures(
    client: MlflowClient,
    trials: pd.DataFrame,
    found: list[tables.Table],
    keys: list[str],
    palette: dict[str, str],
) -> list[tuple[str, bytes]]:
    """AP per regime; AP against τ when τ varies; loss curves and throughput when logged."""
    by_kind = {t.kind: t for t in found}
    figures = [("Mask AP per regime", plots.ap_per_regime(by_kind["regimes"], keys, palette))]
    tau = by_kind.get("tau")
    if tau is not None and (tau.frame["source"] == tables.OURS).any():
        figures.append(("Mask AP against τ", plots.ap_against_tau(tau, keys, palette)))
    for name, metric, plot in (
        ("Training loss", TRAIN_LOSS, plots.loss_curves),
        ("Throughput", IMAGES_PER_SECOND, plots.throughput),
    ):
        history = runs.metric_history(client, trials["run_id"], metric)
        if not history.empty:
            figures.append((name, plot(trials, history, palette)))
    return figures


def compare(client: MlflowClient, targets: list[str], run_ids: list[str]) -> Comparison:
    """Everything ``boxinst compare`` shows, for the named sweeps/experiments and runs."""
    selected = runs.select(client, targets, run_ids)
    if not selected:
        raise runs.SelectionError("no trial runs to compare (a sweep that has not started any?)")
    trials = runs.trials_frame(client, selected)
    keys = tables.setting_keys(trials)
    trials["label"] = tables.configuration_labels(trials, keys)
    found = tables.paper_tables(trials, keys)
    shown = [tables.sweeps_table(trials), tables.trials_table(trials, keys), *found]
    palette = plots.colours(found[0], keys)  # found[0]: the regimes table
    names, overlays = gallery.collect(client, trials, list(palette))
    context = [
        f"Tracking URI: {_without_credentials(client.tracking_uri)}. Generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {len(trials)} trial runs.",
        "Rows whose source starts with 'paper' are the numbers published in the BoxInst paper "
        "(Tian et al., CVPR 2021) for the same recipe, not results of these runs.",
    ]
    document = report.page(
        "BoxInst comparison",
        context,
        shown,
        _figures(client, trials, found, keys, palette),
        report.gallery_html(names, overlays),
    )
    return Comparison(trials, shown, document)


def supervision_gap(client: MlflowClient, sweep_id: str) -> tables.Table | None:
    """The supervision-gap table of one sweep's trials, when it has one (see
    :func:`tables.supervision_gap_table`): what ``boxinst sweep`` prints at its end."""
    trials = runs.trials_frame(client, runs.select(client, [sweep_id], []))
    return tables.supervision_gap_table(trials, tables.setting_keys(trials))


def write(client: MlflowClient, comparison: Comparison, out: Path) -> list[str]:
    """Write the report to ``out`` and log it on each sweep's parent run; the run ids."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comparison.html, encoding="utf-8")
    sweep_ids = sorted({s for s in comparison.trials["sweep_id"] if s})
    report.log(client, sweep_ids, comparison.html)
    return sweep_ids
