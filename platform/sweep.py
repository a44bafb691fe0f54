"""Sweeps on Ray Tune: a spec's axes as a grid, each trial one tracked Ray Train run.

``sweep.axes`` (dotted key -> values) becomes Tune's search space, one ``grid_search`` per
axis (their Cartesian product, ``num_samples`` times). A trial is a Tune function that sets its
axis values on the base spec and trains it with a ``TorchTrainer`` (the pattern of Ray Train
V2: the Tune trial is the Train driver), reporting to Tune through ``TuneReportCallback`` and
to MLflow through a nested run under the sweep's parent run.

A sweep is named ``<spec name>-<date>-<time>`` under the storage folder; ``resume`` restores an
interrupted one with ``Tuner.restore``: finished trials are kept, unfinished and errored ones
go on from their last checkpoint, into the same MLflow runs. What it restores is the state Tune
saved of the sweep's trials, which a sweep saves at every step of Tune's loop (see
:data:`TUNE_STATE_PERIOD`), so that a driver killed at any moment leaves it up to date.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas
import ray
import ray.tune
from mlflow.entities import DatasetInput
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from boxinst.platform.console import RAY_TUNE_OUTPUT, RAY_TUNE_VERBOSITY, SweepProgress
from boxinst.platform.environment import environment
from boxinst.platform.metrics import (
    BBOX_AP,
    ITERATION,
    KIND_SWEEP,
    SEGM,
    SEGM_AP,
    SEGM_AP50,
    SEGM_AP75,
    TAG_AXES,
    TAG_KIND,
    TAG_SPEC,
    TAG_SWEEP,
    box_as_mask_name,
    metric_name,
)
from boxinst.platform.spec import SpecError, TrainSpec, set_key, validate
from boxinst.platform.tracking.inputs import dataset_inputs
from boxinst.platform.tracking.runs import SPEC_ARTIFACT, spec_yaml, train_tracked
from boxinst.platform.tracking.tracker import Tracker
from boxinst.platform.training.storage import is_uri, storage_filesystem, storage_uri

#: A trial only drives its Train run (the workers train): it takes no CPU from them, and
#: reserves the memory its process needs (Ray cannot schedule an actor that asks for nothing).
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 512 * 1024**2}

#: How often Ray Tune saves a sweep's state (its trials and their statuses: what a resume
#: restores): the environment variable Tune reads, and the sweeps' value. Tune's default
#: ("auto") saves at least 10 s apart, and the end of a trial does not force a save: a driver
#: killed within that time after a trial finished leaves a state in which the trial still runs,
#: and a resume runs it again (its Train run resumes from its final checkpoint: evaluated
#: again, checkpointed again, its MLflow run reopened and ended again). 0 saves after every step
#: of Tune's loop, so before the next trial starts. A value set in the environment is kept.
TUNE_STATE_PERIOD = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (passed to the trials by ``tune.with_parameters``)."""

    name: str
    storage: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    base: dict  # the resolved spec, without its sweep section
    datasets: dict[str, list[DatasetInput]]  # by trial name: its splits as MLflow inputs
    verbose: bool = False  # Ray Train's own log lines too


def spec_base(spec: TrainSpec) -> dict:
    """The resolved spec without its sweep section: what every trial starts from."""
    base = spec.as_dict()
    base.pop("sweep")
    return base


def trial_spec(base: dict, axes: dict[str, Any], sweep: str = "sweep") -> TrainSpec:
    """The base spec with a trial's axis values set."""
    data = base
    for key, value in axes.items():
        data = set_key(data, key, value)
    return validate(data, f"{sweep} (trial {json.dumps(axes)})")


def trial_specs(spec: TrainSpec) -> dict[str, TrainSpec]:
    """The spec of every point of the sweep's grid (each validated), by trial name."""
    axes = spec.sweep.axes
    base = spec_base(spec)
    trials = {}
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        trial = trial_spec(base, point, spec.name)
        trials[trial_name(trial, point)] = trial
    return trials


def trial_name(spec: TrainSpec, axes: dict[str, Any]) -> str:
    """``box_only``, ``box_only seed=1``, ``box_only loss.pairwise_tau=0.2``: the regime, then
    the other axes' values."""
    others = [f"{key}={value}" for key, value in axes.items() if key != "regime"]
    return " ".join([spec.regime.name, *others])


def describe_trial(base: dict, config: dict) -> tuple[str, int, int]:
    """A trial's name, total iterations and console period, from its Tune config."""
    spec = trial_spec(base, config["axes"])
    return trial_name(spec, config["axes"]), spec.solver.max_iter, spec.reporting.print_every


def run_trial(config: dict, context: SweepContext) -> None:
    """One trial (a Tune function): its spec trained and tracked as a nested MLflow run."""
    axes = config["axes"]
    spec = trial_spec(context.base, axes, context.name)
    trial_id = ray.tune.get_context().get_trial_id()
    train_tracked(
        spec,
        context.storage,
        Tracker(context.experiment, context.tracking_uri),
        ray_run=f"{context.name}-{trial_id}",
        run_name=trial_name(spec, axes),
        parent_run_id=context.parent_run_id,
        tags={TAG_AXES: json.dumps(axes)},
        callbacks=[TuneReportCallback()],
        verbose=context.verbose,
        datasets=context.datasets[trial_name(spec, axes)],
    )


def search_space(spec: TrainSpec) -> dict:
    return {"axes": {key: ray.tune.grid_search(values) for key, values in spec.sweep.axes.items()}}


def trials_at_once(spec: TrainSpec) -> int:
    """The sweep's ``max_concurrent``, else as many trials as the cluster's CPUs (GPUs when the
    spec uses them) can train at once."""
    if spec.sweep.max_concurrent:
        return spec.sweep.max_concurrent
    resources = spec.resources
    if resources.use_gpu:
        per_trial, available = resources.num_workers, ray.cluster_resources().get("GPU", 0)
    else:
        per_trial = resources.num_workers * resources.cpus_per_worker
        available = ray.cluster_resources().get("CPU", 0)
    return max(1, math.floor(available / per_trial))


def _tune_config(spec: TrainSpec) -> ray.tune.TuneConfig:
    sweep = spec.sweep
    scheduler = None
    if sweep.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr=ITERATION,
            metric=sweep.metric,
            mode=sweep.mode,
            max_t=spec.solver.max_iter,
            grace_period=spec.evaluation.every,
        )
    return ray.tune.TuneConfig(
        num_samples=sweep.num_samples,
        max_concurrent_trials=trials_at_once(spec),
        scheduler=scheduler,
    )


#: The files in which Tune keeps a sweep's state: the Tuner's settings, and per session of its
#: driver the trials with their statuses and the grid's progress (its searcher's). A restore
#: reads the newest of each (the greatest name) and, when it cannot read the trials or the grid,
#: starts a new, empty experiment in the sweep's place.
TUNE_STATE_FILES = {
    "tuner.pkl": ray.cloudpickle.loads,
    "experiment_state-*.json": json.loads,
    "basic-variant-state-*.json": ray.cloudpickle.loads,
}


def check_resumable(storage: str | Path, name: str) -> None:
    """Raise :class:`SpecError` naming the file if the sweep ``name`` under a local ``storage``
    has no saved state, or its newest cannot be read (as a driver killed while Ray wrote it in
    place left it, before :mod:`~boxinst.platform.training.storage` wrote files whole). A
    remote storage is left to Tune."""
    if is_uri(storage):
        return
    folder = Path(storage_uri(storage), name)
    if not folder.is_dir():
        raise SpecError(f"no sweep {name} to resume under {storage}")
    for pattern, load in TUNE_STATE_FILES.items():
        files = sorted(folder.glob(pattern))
        if not files:
            raise SpecError(f"{folder}: no {pattern}: Tune saved no state of this sweep")
        try:
            load(files[-1].read_bytes())
        except Exception as error:  # whatever a truncated JSON or pickle raises
            raise SpecError(
                f"{files[-1]}: the sweep's saved state cannot be read ({error!r}), so it cannot "
                "be resumed (its driver was probably killed while writing it)"
            ) from None


def latest_sweep(storage: str | Path, spec_name: str) -> str:
    """The name of the most recent sweep of ``spec_name`` under a local ``storage`` folder."""
    sweeps = sorted(Path(storage_uri(storage)).glob(f"{spec_name}-*-*/tuner.pkl"))
    if not sweeps:
        raise SpecError(f"no sweep of {spec_name} to resume under {storage}")
    return sweeps[-1].parent.name


def run_sweep(
    spec: TrainSpec,
    storage: str | Path,
    tracker: Tracker,
    resume: str | None = None,
    verbose: bool = False,
) -> tuple[str, ray.tune.ResultGrid]:
    """Run (or, with ``resume`` = a sweep's name, continue) the sweep of ``spec``; returns the
    MLflow id of its parent run and Tune's results. The console shows a progress line per
    trial report (:mod:`boxinst.platform.console`); ``verbose`` adds Tune's status tables and
    Ray Train's log lines."""
    if spec.sweep is None or not spec.sweep.axes:
        raise SpecError(f"{spec.name}: a sweep needs sweep.axes; `boxinst train` runs one spec")
    name = resume or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = tracker.resume_or_start(
        (TAG_SWEEP, name), name, spec.as_dict(), tags={TAG_KIND: KIND_SWEEP, TAG_SPEC: spec.name}
    )
    with tracker.ending(parent):
        tracker.log_text(parent, spec_yaml(spec.as_dict()), SPEC_ARTIFACT)
        context = SweepContext(
            name,
            storage_uri(storage),
            tracker.experiment,
            tracker.tracking_uri,
            parent,
            spec_base(spec),
            {trial: dataset_inputs(point) for trial, point in trial_specs(spec).items()},
            verbose,
        )
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(run_trial, context=context), TRIAL_DRIVER_RESOURCES
        )
        if resume:
            path = f"{context.storage}/{name}"
            tuner = ray.tune.Tuner.restore(
                path,
                trainable,
                resume_errored=True,
                storage_filesystem=storage_filesystem(context.storage),
            )
        else:
            run_config = ray.tune.RunConfig(
                name=name,
                storage_path=context.storage,
                storage_filesystem=storage_filesystem(context.storage),
                verbose=RAY_TUNE_VERBOSITY[verbose],
                callbacks=[SweepProgress(functools.partial(describe_trial, context.base))],
            )
            tuner = ray.tune.Tuner(
                trainable,
                param_space=search_space(spec),
                tune_config=_tune_config(spec),
                run_config=run_config,
            )
        try:
            with environment({**TUNE_STATE_PERIOD, **RAY_TUNE_OUTPUT[verbose]}, keep_set=True):
                results = tuner.fit()
        except KeyboardInterrupt:
            tracker.end_unfinished_children(parent, "KILLED")
            raise
        # A trial whose process died could not end its run itself.
        tracker.end_unfinished_children(parent, "FAILED")
    return parent, results


#: The columns of a sweep's summary: mask AP, the box-as-mask baseline of the same detections,
#: box AP, and the mask AP of the classes without masks (semi-supervised regimes).
SUMMARY_COLUMNS = {
    SEGM_AP: "mask AP",
    SEGM_AP50: "AP50",
    SEGM_AP75: "AP75",
    box_as_mask_name("AP"): "box-as-mask AP",
    BBOX_AP: "box AP",
    metric_name(SEGM, "AP", "unseen"): "unseen mask AP",
}


def summary_table(spec: TrainSpec, results: ray.tune.ResultGrid) -> str:
    """One line per trial: its name, status and AP numbers (blank where it has none)."""
    rows = []
    for result in results:
        axes = result.config["axes"]
        row = {"trial": trial_name(trial_spec(spec_base(spec), axes), axes)}
        row["status"] = "FAILED" if result.error else "done"
        for key, column in SUMMARY_COLUMNS.items():
            row[column] = result.metrics.get(key) if result.metrics else None
        rows.append(row)
    table = pandas.DataFrame(rows).dropna(axis="columns", how="all")
    return table.to_string(index=False, float_format=lambda v: f"{v:.1f}", na_rep="")
