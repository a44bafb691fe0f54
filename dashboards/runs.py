"""Trials from MLflow: the sweeps, experiments and runs a user names, one table row per trial.

A sweep is its parent run (tag ``boxinst.kind=sweep``), named by run id or run name; an
experiment stands for all of its sweeps; ``--runs`` names single runs (a sweep's id there means
its trials). Each trial becomes a row of a DataFrame: identity (run, sweep, experiment, spec,
status), its regime spelled out (mask policy, box terms), every parameter (JSON scalars parsed:
``"0.1"`` -> 0.1, ``"true"`` -> True) and every final metric. Only FINISHED trials keep their
evaluation metrics: a running, failed or killed trial stays in the table with empty AP cells.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from boxinst.platform.metrics import (
    ARTIFACT_OVERLAYS,
    KIND_SWEEP,
    TAG_COLLAPSE,
    TAG_KIND,
    TAG_REGIME,
    TAG_SPEC,
)

FINISHED = RunStatus.to_string(RunStatus.FINISHED)
_SWEEPS = f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'"


class SelectionError(ValueError):
    """A name that matches no sweep, experiment or run."""


def _search(client: MlflowClient, experiment_ids: list[str], query: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, query, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _get_run(client: MlflowClient, run_id: str) -> Run | None:
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _is_sweep(run: Run) -> bool:
    return run.data.tags.get(TAG_KIND) == KIND_SWEEP


def find_sweeps(client: MlflowClient, target: str) -> list[Run]:
    """The sweeps ``target`` names: a sweep's run id, an experiment's name (all its sweeps), or
    a sweep's run name (the latest sweep of that name)."""
    run = _get_run(client, target)
    if run is not None:
        if not _is_sweep(run):
            raise SelectionError(f"run {target} is not a sweep; name single runs with --runs")
        return [run]
    experiment = client.get_experiment_by_name(target)
    if experiment is not None:
        sweeps = _search(client, [experiment.experiment_id], _SWEEPS)
        if not sweeps:
            raise SelectionError(f"experiment {target!r} has no sweep runs")
        return sweeps
    every = [e.experiment_id for e in client.search_experiments()]
    named = [r for r in _search(client, every, _SWEEPS) if r.info.run_name == target]
    if not named:
        raise SelectionError(f"{target!r} is neither a sweep (run id or name) nor an experiment")
    return named[-1:]


def trials_of(client: MlflowClient, sweep: Run) -> list[Run]:
    """The trial runs nested under a sweep's parent run, oldest first."""
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{sweep.info.run_id}'"
    return _search(client, [sweep.info.experiment_id], query)


def select(client: MlflowClient, targets: Iterable[str], run_ids: Iterable[str]) -> list[Run]:
    """The trial runs of the named sweeps/experiments and runs, each once, in that order."""
    trials = [
        t for target in targets for s in find_sweeps(client, target) for t in trials_of(client, s)
    ]
    for run_id in run_ids:
        run = _get_run(client, run_id)
        if run is None:
            raise SelectionError(f"no run with id {run_id}")
        trials.extend(trials_of(client, run) if _is_sweep(run) else [run])
    return list({run.info.run_id: run for run in trials}.values())


def parse_param(text: str) -> object:
    """A parameter as logged (JSON for non-strings) back to a scalar; other values as text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float) else text


def mask_policy(params: dict[str, str]) -> str:
    """The regime's mask policy in words: ``none``, ``all``, ``classes: voc20``, ``fraction: 0.5``
    (empty when the run has no regime parameters)."""
    if "regime.masks" in params:
        return params["regime.masks"]
    for kind in ("classes", "fraction"):
        value = params.get(f"regime.masks.{kind}")
        if value is not None:
            parsed = json.loads(value)
            return f"{kind}: {', '.join(map(str, parsed)) if isinstance(parsed, list) else parsed}"
    return ""


def trials_frame(client: MlflowClient, trials: list[Run]) -> pd.DataFrame:
    """One row per trial: ``run_id``, ``run``, ``sweep``, ``sweep_id``, ``sweep_status``,
    ``experiment``, ``spec``, ``status``, ``regime``, ``masks``, ``projection``, ``pairwise``,
    ``prior`` (false for runs from before the box prior existed),
    then its parameters (listed in ``frame.attrs["params"]``) and final metrics by name."""
    parents: dict[str, Run | None] = {}
    experiments: dict[str, str] = {}
    rows = []
    for run in trials:
        tags, params = run.data.tags, run.data.params
        parent_id = tags.get(MLFLOW_PARENT_RUN_ID)
        if parent_id and parent_id not in parents:
            parents[parent_id] = _get_run(client, parent_id)
        parent = parents.get(parent_id) if parent_id else None
        experiment_id = run.info.experiment_id
        if experiment_id not in experiments:
            experiments[experiment_id] = client.get_experiment(experiment_id).name
        finished = run.info.status == FINISHED
        row = {key: parse_param(value) for key, value in params.items()}
        row.update(
            {
                name: value
                for name, value in run.data.metrics.items()
                if finished or name.startswith("train/")
            }
        )
        row.update(
            run_id=run.info.run_id,
            run=run.info.run_name,
            sweep=parent.info.run_name if parent else "",
            sweep_id=parent_id or "",
            sweep_status=parent.info.status if parent else "",
            experiment=experiments[experiment_id],
            spec=tags.get(TAG_SPEC) or params.get("name") or experiments[experiment_id],
            status=run.info.status,
            regime=tags.get(TAG_REGIME) or params.get("regime.name", ""),
            masks=mask_policy(params),
            projection=parse_param(params.get("regime.projection", "")),
            pairwise=parse_param(params.get("regime.pairwise", "")),
            prior=parse_param(params.get("regime.prior", "false" if params else "")),
            collapse=tags.get(TAG_COLLAPSE, ""),
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["params"] = sorted({key for run in trials for key in run.data.params})
    return frame


def metric_history(client: MlflowClient, run_ids: Iterable[str], key: str) -> pd.DataFrame:
    """Every logged value of one metric: columns run_id, step, value."""
    rows = [
        (run_id, m.step, m.value)
        for run_id in run_ids
        for m in client.get_metric_history(run_id, key)
    ]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def download_overlays(client: MlflowClient, run_id: str, destination: Path) -> list[Path]:
    """The run's ``overlays/*.png`` artifacts, downloaded under ``destination``."""
    files = [a.path for a in client.list_artifacts(run_id, ARTIFACT_OVERLAYS) if not a.is_dir]
    return [
        Path(client.download_artifacts(run_id, path, str(destination)))
        for path in sorted(files)
        if path.lower().endswith(".png")
    ]
