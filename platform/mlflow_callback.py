"""Ray Train -> MLflow: what rank 0 reports, logged into one MLflow run by the Train controller.

Ray Train calls a ``UserCallback`` on its controller process after every ``ray.train.report``
of the workers, with each worker's metrics; logging from there keeps MLflow out of the training
processes and makes "only rank 0 logs" hold by construction (``metrics[0]``).

A metric is logged at ``step = iteration`` once: after a restart from a checkpoint the workers
report again the steps they had already reported since it, and those are skipped, so a run
that failed over, or a trial of a restored sweep, keeps one continuous history. The final
report carries the evaluation files in its checkpoint; they become the run's artifacts.
"""

from __future__ import annotations

from pathlib import Path

from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

from boxinst.platform.metrics import (
    ARTIFACT_EVALUATION,
    ARTIFACT_OVERLAYS,
    ARTIFACT_PREDICTIONS,
    TAG_CHECKPOINT,
)
from boxinst.platform.tracking import Tracker

#: Keys of a report that are bookkeeping, not metrics.
ITERATION = "iteration"
FINAL = "final"
RESUMED_FROM = "resumed_from"
BOOKKEEPING = (ITERATION, FINAL, RESUMED_FROM)


class MlflowCallback(UserCallback):
    """Logs rank 0's reports of a Ray Train run into the MLflow run ``run_id``."""

    def __init__(self, experiment: str, tracking_uri: str, run_id: str):
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._tracker: Tracker | None = None
        self._last_step: dict[str, int] | None = None

    def _logged_steps(self, tracker: Tracker) -> dict[str, int]:
        """The last step of each metric already in the run (a resumed run has some)."""
        metrics = tracker.client.get_run(self.run_id).data.metrics
        return {
            key: max(m.step for m in tracker.client.get_metric_history(self.run_id, key))
            for key in metrics
        }

    def after_report(self, run_context, metrics: list[dict], checkpoint: Checkpoint | None):
        if self._tracker is None:
            self._tracker = Tracker(self.experiment, self.tracking_uri)
            self._last_step = self._logged_steps(self._tracker)
        report = metrics[0]
        step = int(report[ITERATION])
        new = {
            key: value
            for key, value in report.items()
            if key not in BOOKKEEPING and step > self._last_step.get(key, -1)
        }
        self._tracker.log_metrics(self.run_id, new, step)
        self._last_step.update(dict.fromkeys(new, step))
        if report.get(FINAL) and checkpoint is not None:
            self._log_evaluation(checkpoint)

    def _log_evaluation(self, checkpoint: Checkpoint) -> None:
        self._tracker.set_tag(self.run_id, TAG_CHECKPOINT, checkpoint.path)
        with checkpoint.as_directory() as folder:
            for name in (ARTIFACT_EVALUATION, ARTIFACT_PREDICTIONS, ARTIFACT_OVERLAYS):
                if (Path(folder) / name).is_dir():
                    self._tracker.client.log_artifacts(self.run_id, str(Path(folder) / name), name)
