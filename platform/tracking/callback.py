"""Ray Train -> MLflow: what rank 0 reports, logged into one MLflow run by the Train controller.

Ray Train calls a ``UserCallback`` on its controller process after every ``ray.train.report``
of the workers, with each worker's metrics; logging from there keeps MLflow out of the training
processes and makes "only rank 0 logs" hold by construction (``metrics[0]``).

A metric is logged at ``step = iteration`` once: after a restart from a checkpoint the workers
report again the steps they had already reported since it, and those are skipped, so a run
that failed over, or a trial of a restored sweep, keeps one continuous history. The final
report carries the evaluation files in its checkpoint; they become the run's artifacts.

An MLflow server that cannot be reached does not stop training, and loses nothing: metrics are
buffered and retried. Each report's metrics join a pending buffer, and each report tries once,
failing fast, to log the whole buffer; what fails stays pending for the next report. The final
report keeps retrying until the buffer and the evaluation are in MLflow, up to a time limit;
past it the pending metrics are saved to a JSON file and the run fails, naming that file. A
worker that fails while metrics are pending gets them saved to that file too (after one more
try), since the run may end there; the file goes once a later final report logs everything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

from boxinst.platform.environment import environment
from boxinst.platform.metrics import (
    ARTIFACT_EVALUATION,
    ARTIFACT_OVERLAYS,
    ARTIFACT_PREDICTIONS,
    BOOKKEEPING,
    FINAL,
    ITERATION,
    TAG_CHECKPOINT,
)
from boxinst.platform.tracking.tracker import METRIC_BATCH

#: MLflow's client retries a failed request up to 7 times with exponential back-off (minutes
#: against a dead server) and waits up to 120 s for an answer. It takes both only from these
#: environment variables, read at each request, so they are set around each attempt to log
#: (and restored after it): one try with a short timeout; the pending buffer is the retry.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
#: What an unreachable (or failing) server raises: MLflow wraps connection errors and timeouts
#: in MlflowException; an artifact upload's bad status is a requests error.
UNREACHABLE = (MlflowException, requests.RequestException)
#: Seconds between the final report's attempts to log.
RETRY_PAUSE = 2.0

logger = logging.getLogger(__name__)


class MlflowUnreachableError(RuntimeError):
    """The MLflow server stayed unreachable past the time limit of the final report."""


class MlflowCallback(UserCallback):
    """Logs rank 0's reports of a Ray Train run into the MLflow run ``run_id`` (of
    ``experiment``), keeping what the server at ``tracking_uri`` does not take for later; the
    final report waits at most ``give_up_after`` seconds for the server, then saves what it
    could not log in ``unlogged_file``."""

    def __init__(
        self,
        experiment: str,
        tracking_uri: str,
        run_id: str,
        unlogged_file: Path,
        give_up_after: float = 600.0,
    ):
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.unlogged_file = unlogged_file
        self.give_up_after = give_up_after
        self._client: MlflowClient | None = None
        self._last_step: dict[str, int] | None = None  # per key, the last step in MLflow
        self._pending: list[Metric] = []  # reported, not yet in MLflow, in report order
        self._outage_since: float | None = None  # when the server stopped answering
        self._checkpoint: str | None = None  # the latest's path: what a failed run leaves
        self._checkpoint_logged = True
        self._image_steps: set[int] = set()  # the steps whose overlays are logged

    def after_report(self, run_context, metrics: list[dict], checkpoint: Checkpoint | None):
        """Buffer rank 0's metrics and try once to log the buffer; at the final report, retry
        until the buffer and the evaluation are logged, or raise past ``give_up_after``."""
        report = metrics[0]
        step, now = int(report[ITERATION]), int(time.time() * 1000)
        if checkpoint is not None:
            self._checkpoint, self._checkpoint_logged = checkpoint.path, False
        self._pending += [  # stamped now: a value keeps the time it was reported
            Metric(key, float(value), now, step)
            for key, value in report.items()
            if key not in BOOKKEEPING
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ]
        if not report.get(FINAL):
            self._attempt(self._flush)
            if checkpoint is not None:  # an evaluation's overlays: one try, they are pictures
                self._attempt(lambda: self._log_overlays(checkpoint, step))
            return
        deadline = time.monotonic() + self.give_up_after
        while (error := self._attempt(lambda: self._flush_final(checkpoint, step))) is not None:
            if time.monotonic() >= deadline:
                raise self._give_up(checkpoint) from error
            time.sleep(min(RETRY_PAUSE, max(deadline - time.monotonic(), 0)))
        self.unlogged_file.unlink(missing_ok=True)  # saved at a failure, logged since

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]):
        """A worker failed, and the run may end with it: pending metrics get one more try, and
        what the server still does not take is saved in ``unlogged_file``."""
        if self._pending and self._attempt(self._flush) is not None:
            path = self._save_pending()
            logger.warning(
                "a worker of run %s failed while MLflow at %s was unreachable: %d metric values "
                "it has not taken are saved in %s",
                self.run_id,
                self.tracking_uri,
                len(self._pending),
                path,
            )

    def _attempt(self, log: Callable[[], None]) -> Exception | None:
        """Run ``log`` failing fast; returns what the server raised, if it did. Warns once when
        the server stops answering, and once when it is back."""
        pending = len(self._pending)
        try:
            with environment(FAIL_FAST):
                log()
        except UNREACHABLE as error:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                logger.warning(
                    "MLflow at %s cannot be reached (%s); training goes on, the metrics of "
                    "run %s are kept and retried at each report",
                    self.tracking_uri,
                    error,
                    self.run_id,
                )
            return error
        if self._outage_since is not None:
            logger.warning(
                "MLflow at %s is back after %.0f s: logged the %d buffered metric values",
                self.tracking_uri,
                time.monotonic() - self._outage_since,
                pending,
            )
            self._outage_since = None
        return None

    def _flush(self) -> None:
        """Log the latest checkpoint's path as a tag and the pending metrics in order, leaving
        out the steps MLflow already has (and repeats of a pending step): what is logged
        leaves the buffer, the rest stays."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        if not self._checkpoint_logged:
            self._client.set_tag(self.run_id, TAG_CHECKPOINT, self._checkpoint)
            self._checkpoint_logged = True
        if self._last_step is None:
            self._last_step = self._logged_steps()
        last, fresh = dict(self._last_step), []
        for metric in self._pending:
            if metric.step > last.get(metric.key, -1):
                fresh.append(metric)
                last[metric.key] = metric.step
        self._pending = fresh
        while self._pending:
            batch = self._pending[:METRIC_BATCH]
            self._client.log_batch(self.run_id, metrics=batch)
            self._last_step.update((metric.key, metric.step) for metric in batch)
            del self._pending[: len(batch)]

    def _logged_steps(self) -> dict[str, int]:
        """The last step of each metric already in the run (a resumed run has some)."""
        metrics = self._client.get_run(self.run_id).data.metrics
        return {
            key: max(m.step for m in self._client.get_metric_history(self.run_id, key))
            for key in metrics
        }

    def _flush_final(self, checkpoint: Checkpoint | None, step: int) -> None:
        """Log the pending metrics and the final checkpoint's path, then its evaluation files
        (the overlays also as images at ``step``)."""
        self._flush()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            for name in (ARTIFACT_EVALUATION, ARTIFACT_PREDICTIONS, ARTIFACT_OVERLAYS):
                if (Path(folder) / name).is_dir():
                    self._client.log_artifacts(self.run_id, str(Path(folder) / name), name)
        self._log_overlays(checkpoint, step)

    def _log_overlays(self, checkpoint: Checkpoint, step: int) -> None:
        """The overlays in ``checkpoint`` as the run's images ``overlay/<image id>`` at
        ``step`` (MLflow's UI shows each image over the steps), once per step."""
        if self._client is None or step in self._image_steps:
            return
        with checkpoint.as_directory() as folder:
            overlays = sorted((Path(folder) / ARTIFACT_OVERLAYS).glob("*.png"))
            for path in overlays:
                with PIL.Image.open(path) as image:
                    self._client.log_image(
                        self.run_id, image, key=f"overlay/{path.stem}", step=step
                    )
        if overlays:  # a checkpoint without an evaluation has none
            self._image_steps.add(step)

    def _save_pending(self) -> Path:
        """Write the pending metrics as JSON to ``unlogged_file``; returns its path."""
        path = self.unlogged_file
        path.parent.mkdir(parents=True, exist_ok=True)
        values = [
            {"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp}
            for m in self._pending
        ]
        unlogged = {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "metrics": values}
        path.write_text(json.dumps(unlogged, indent=1))
        return path

    def _give_up(self, checkpoint: Checkpoint | None) -> MlflowUnreachableError:
        """Save the pending metrics in ``unlogged_file`` and return the error that says so."""
        path = self._save_pending()
        evaluation = (
            f"; its evaluation files are in checkpoint {checkpoint.path}" if checkpoint else ""
        )
        return MlflowUnreachableError(
            f"MLflow at {self.tracking_uri} could not be reached for {self.give_up_after:g} s "
            f"after training ended: run {self.run_id} of experiment {self.experiment!r} lacks "
            f"{len(self._pending)} metric values, saved in {path}{evaluation}"
        )
