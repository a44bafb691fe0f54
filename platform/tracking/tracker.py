"""MLflow tracking: one parent run per sweep, one nested run per trial, honest end states.

Everything goes through an explicit ``MlflowClient`` (no global active run), so a Ray worker,
the sweep driver and a test can each log to their run without sharing process state. The
tracking URI is ``MLFLOW_TRACKING_URI`` when set (a team server), else a SQLite store in the
working directory (the embedded default).

A run ends FINISHED, FAILED (an exception) or KILLED (interrupted); :meth:`Tracker.run` makes
sure a run is never left RUNNING by a failure of the code inside it.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from time import time
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

#: Keys whose values are never logged: they look like credentials.
SECRET_KEY = re.compile(
    r"password|passwd|secret|token|api[_-]?key|credential|private[_-]?key", re.I
)
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
METRIC_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class TrackingUnreachable(ConnectionError):
    """The MLflow tracking server does not answer."""


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the server, when an HTTP(S) tracking server does not answer its
    health check (MLflow's client would retry for minutes). A server that answers anything,
    even an error status, is reachable; local stores always are."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass
    except OSError as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnreachable(
            f"MLflow tracking server {tracking_uri} is unreachable ({reason}); start it, "
            "or leave MLFLOW_TRACKING_URI and --tracking-uri unset to track in ./mlflow.db"
        ) from None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` parameters; lists as JSON; secrets left out."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if SECRET_KEY.search(str(key)):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


#: The tags of the experiments boxinst creates: model training, so that the MLflow UI opens
#: them on their runs (untagged, MLflow 3 infers the kind and may open its GenAI view).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def runs_page(server: str, experiment_id: str) -> str:
    """The address of an experiment's runs in the MLflow UI at ``server``, in its model
    training view (MLflow 3's UI opens on its GenAI view, whatever the experiment's kind)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class Tracker:
    """Runs of one MLflow experiment."""

    def __init__(self, experiment: str, tracking_uri: str | None = None):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.client = MlflowClient(self.tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        )

    def start(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a RUNNING run (nested under ``parent_run_id`` if given) with its parameters."""
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        flat = flatten(params or {})
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start : start + 100])
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Numeric metrics at ``step`` (non-numbers are skipped)."""
        now = int(time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        for start in range(0, len(items), METRIC_BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + METRIC_BATCH])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def tag(self, run_id: str, key: str) -> str | None:
        """The value of a run's tag ``key``, if it has one (None also when MLflow is down)."""
        try:
            return self.client.get_run(run_id).data.tags.get(key)
        except MlflowException:
            return None

    def find(self, tag: str, value: str) -> str | None:
        """The id of this experiment's run tagged ``tag=value``, if there is one."""
        escaped = value.replace("'", "\\'")
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{tag}` = '{escaped}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def resume_or_start(
        self,
        key: tuple[str, str],
        name: str,
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """The run tagged ``key`` (a tag and its value), RUNNING again, or a new one so tagged:
        a restored sweep or a restarted trial goes on logging into its run, not a second one."""
        found = self.find(*key)
        if found is not None:
            self.client.update_run(found, status=RunStatus.to_string(RunStatus.RUNNING))
            return found
        return self.start(name, params, parent_run_id, {**(tags or {}), key[0]: key[1]})

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextmanager
    def ending(self, run_id: str) -> Iterator[str]:
        """Ends ``run_id`` FINISHED when the block completes, FAILED on an error and KILLED on
        an interruption (the error is re-raised): a run is never left RUNNING by a failure."""
        try:
            yield run_id
        except KeyboardInterrupt:
            self.finish(run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            self.finish(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.finish(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def best_child(self, parent_run_id: str, metric: str, mode: str) -> str | None:
        """The FINISHED nested run of ``parent_run_id`` with the highest (``mode`` max) or
        lowest (min) final ``metric``, if one has it."""
        order = "DESC" if mode == "max" else "ASC"
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'FINISHED'",
            order_by=[f"metrics.`{metric}` {order}"],
        )
        found = [run for run in runs if metric in run.data.metrics]
        return found[0].info.run_id if found else None

    def end_unfinished_children(self, parent_run_id: str, status: str = "KILLED") -> list[str]:
        """Ends the nested runs of ``parent_run_id`` still RUNNING (their process was killed
        before it could end them) with ``status``; returns their ids."""
        children = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run in children:
            self.finish(run.info.run_id, status)
        return [run.info.run_id for run in children]

    @contextmanager
    def run(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[str]:
        """A new run that ends as :meth:`ending` says."""
        with self.ending(self.start(name, params, parent_run_id, tags)) as run_id:
            yield run_id
