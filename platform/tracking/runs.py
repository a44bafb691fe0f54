"""A tracked training run: one MLflow run around one Ray Train run of a spec.

The MLflow run is found again by the name of its Ray Train run, so a run started again under
the same name (a restored sweep, a rerun after a crash) resumes both: training from its last
checkpoint, tracking in the same MLflow run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from mlflow.entities import DatasetInput
from ray.train import Result, TrainingFailedError
from ray.train.v2.api.callback import UserCallback

from boxinst.platform.evaluation.coco import collapse_warning
from boxinst.platform.metrics import (
    ARTIFACT_CONFIG,
    ITERATION,
    KIND_TRIAL,
    TAG_CHECKPOINT,
    TAG_COLLAPSE,
    TAG_KIND,
    TAG_MODEL,
    TAG_RAY_RUN,
    TAG_REGIME,
    TAG_SPEC,
)
from boxinst.platform.spec import TrainSpec
from boxinst.platform.tracking.callback import UNREACHABLE, MlflowCallback
from boxinst.platform.tracking.inputs import dataset_inputs, log_datasets
from boxinst.platform.tracking.models import log_trained_model
from boxinst.platform.tracking.tracker import Tracker
from boxinst.platform.training.loop import CHECKPOINT_FILE, load_checkpoint
from boxinst.platform.training.ray_train import build_trainer
from boxinst.platform.training.storage import is_uri, storage_uri

SPEC_ARTIFACT = f"{ARTIFACT_CONFIG}/spec.yaml"


def spec_yaml(data: Mapping) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False)


def unlogged_metrics_file(storage: str | Path, ray_run: str, run_id: str) -> Path:
    """Where a run's metrics go if MLflow stays unreachable after training: its Ray Train
    folder under a local storage, the working directory when the storage is remote."""
    uri = storage_uri(storage)
    folder = Path.cwd() if is_uri(uri) else Path(uri) / ray_run
    return folder / f"mlflow-unlogged-{run_id}.json"


class RunFailedError(RuntimeError):
    """A training run failed; the message gives the workers' error and where the run's latest
    checkpoint is, which the failure leaves in place (``boxinst eval`` and ``predict`` read
    it, and the same ``--name`` resumes from it)."""

    def __init__(self, what: str, error: TrainingFailedError, checkpoint: str | None, folder: str):
        failures = getattr(error, "worker_failures", None) or {"": error}
        first = next(iter(failures.values()))
        cause = (str(first).strip().splitlines() or [type(first).__name__])[-1]  # its last line
        kept = (
            f"its latest checkpoint is kept: {checkpoint} (boxinst eval and predict read it)"
            if checkpoint
            else f"MLflow has no checkpoint of it: any it wrote are under {folder}"
        )
        super().__init__(f"{what} failed: {cause}\n{kept}")
        self.checkpoint = checkpoint


def train_tracked(
    spec: TrainSpec,
    storage: str | Path,
    tracker: Tracker,
    ray_run: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    callbacks: Sequence[UserCallback] = (),
    verbose: bool = False,
    datasets: Sequence[DatasetInput] | None = None,
) -> tuple[str, dict]:
    """Train ``spec`` as the Ray Train run ``ray_run`` under ``storage``, tracked in the MLflow
    run of that name (created, or resumed); returns the MLflow run id and the final metrics.

    The run gets the splits as its dataset inputs (``datasets``, else computed here:
    :func:`~boxinst.platform.tracking.inputs.dataset_inputs`), the
    system metrics of its rank-0 node, and at the end its final checkpoint as its MLflow model
    (:mod:`~boxinst.platform.tracking.models`). The MLflow run ends FINISHED, or FAILED / KILLED
    when training fails or is interrupted; a failure raises :class:`RunFailedError`, naming
    the checkpoint it leaves."""
    all_tags = {TAG_KIND: KIND_TRIAL, TAG_SPEC: spec.name, TAG_REGIME: spec.regime.name}
    all_tags.update(tags or {})
    run_id = tracker.resume_or_start(
        (TAG_RAY_RUN, ray_run), run_name, spec.as_dict(), parent_run_id, all_tags
    )
    with tracker.ending(run_id):
        tracker.log_text(run_id, spec_yaml(spec.as_dict()), SPEC_ARTIFACT)
        log_datasets(tracker.client, run_id, dataset_inputs(spec) if datasets is None else datasets)
        logger = MlflowCallback(
            tracker.experiment,
            tracker.tracking_uri,
            run_id,
            unlogged_metrics_file(storage, ray_run, run_id),
        )
        try:
            trainer = build_trainer(
                spec,
                storage,
                ray_run,
                [logger, *callbacks],
                verbose,
                (tracker.tracking_uri, run_id),
            )
            result = trainer.fit()
        except TrainingFailedError as error:
            what = f"run {ray_run} of {spec.name} ({spec.regime.name}, MLflow run {run_id})"
            folder = f"{storage_uri(storage)}/{ray_run}"
            raise RunFailedError(what, error, tracker.tag(run_id, TAG_CHECKPOINT), folder) from None
        warning = collapse_warning(result.metrics) if spec.regime.box_supervised else None
        if warning:
            tracker.client.set_tag(run_id, TAG_COLLAPSE, warning)
        if tracker.tag(run_id, TAG_MODEL) is None:  # a restored trial that ended has its model
            log_final_model(tracker, run_id, result)
    return run_id, result.metrics


def log_final_model(tracker: Tracker, run_id: str, result: Result) -> None:
    """Log the final checkpoint of ``result`` as run ``run_id``'s MLflow model; when MLflow
    does not take it, the run keeps its checkpoint and a warning says where it is."""
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    try:
        log_trained_model(tracker.tracking_uri, run_id, state, int(result.metrics[ITERATION]))
    except UNREACHABLE as error:
        print(
            f"warning: MLflow did not take the model of run {run_id} ({error}); its final "
            f"checkpoint is {result.checkpoint.path}"
        )
