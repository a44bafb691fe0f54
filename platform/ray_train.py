"""Ray Train: a spec trained by a ``TorchTrainer``, DDP over its workers (gloo on CPU, NCCL on
GPU), reporting losses, throughput, checkpoints and COCO metrics to Ray Train.

Every worker reports at the same iterations (Ray Train's report is a barrier): the losses every
``reporting.log_every`` iterations, a checkpoint every ``reporting.checkpoint_every``, the COCO
metrics every ``evaluation.every`` (when set) and at the end. Rank 0 saves the checkpoints; every
worker predicts its shard of the evaluation set and rank 0 scores them all
(:mod:`~boxinst.platform.evaluation_shards`). The trained model is checkpointed before its
final evaluation, and the final checkpoint also holds the evaluation's files (metrics, COCO
results, mask overlays), which
:class:`~boxinst.platform.mlflow_callback.MlflowCallback` logs as artifacts.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2.api.callback import UserCallback

from boxinst.platform.console import RAY_TRAIN_LOG_LEVEL
from boxinst.platform.evaluation import collapse_warning
from boxinst.platform.metrics import ARTIFACT_OVERLAYS
from boxinst.platform.mlflow_callback import FINAL, ITERATION, RESUMED_FROM
from boxinst.platform.overlays import write_overlays
from boxinst.platform.spec import TrainSpec
from boxinst.platform.system_metrics import system_metrics
from boxinst.platform.training import (
    CHECKPOINT_FILE,
    TrainState,
    build_datasets,
    build_state,
    evaluate_model,
    load_checkpoint,
    loaders,
    save_checkpoint,
    train_steps,
    write_evaluation,
)


def _is_rank0() -> bool:
    return ray.train.get_context().get_world_rank() == 0


def _report(
    metrics: dict,
    spec: TrainSpec,
    categories: list[dict],
    state: TrainState | None = None,
    write_files: Callable[[Path], None] | None = None,
) -> None:
    """Report from every worker; with ``state`` rank 0 adds the checkpoint (and the
    ``categories`` of the classes), and in its folder the files ``write_files`` writes there
    (an evaluation's)."""
    if state is None or not _is_rank0():
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(state, spec, categories, Path(folder))
        if write_files is not None:
            write_files(Path(folder))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def next_stop(iteration: int, spec: TrainSpec) -> int:
    """The first iteration after ``iteration`` that ends a stretch of training: a checkpoint,
    an evaluation, or the end."""
    stops = [spec.solver.max_iter]
    for every in (spec.reporting.checkpoint_every, spec.evaluation.every):
        if every:
            stops.append((iteration // every + 1) * every)
    return min(stops)


def use_reserved_cpus(spec: TrainSpec) -> None:
    """On CPU, a worker computes with as many threads as the CPUs it reserved (at least one).
    Ray Train does not set this, and torch's default, one thread per core of the machine in
    every worker, oversubscribes the cores when several trials share them."""
    if not spec.resources.use_gpu:
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))


def box_supervised(spec: TrainSpec) -> bool:
    """Whether some instances of the spec's regime learn their masks from boxes."""
    regime = spec.regime
    terms = regime.projection or regime.pairwise or regime.prior
    return regime.masks != "all" and terms


def warn_of_collapse(spec: TrainSpec, metrics: dict, iteration: int) -> None:
    """Print a warning when a box-supervised model's masks are collapsing (the diagnosis of
    :func:`~boxinst.platform.evaluation.collapse_warning`)."""
    warning = collapse_warning(metrics) if box_supervised(spec) and metrics else None
    if warning:
        print(f"warning: {spec.name} ({spec.regime.name}), iteration {iteration}: {warning}")


def train_loop_per_worker(config: dict) -> None:
    """The loop each Ray Train worker runs; resumes from the run's latest checkpoint if any.
    Rank 0 logs its node's system metrics into the MLflow run ``config["mlflow_run"]``."""
    mlflow_run = config.get("mlflow_run") if _is_rank0() else None
    with system_metrics(*mlflow_run) if mlflow_run else contextlib.nullcontext():
        train(TrainSpec.model_validate(config["spec"]))


def train(spec: TrainSpec) -> None:
    """Train ``spec`` on this worker, reporting as the module says."""
    use_reserved_cpus(spec)
    train_set, val_set = build_datasets(spec)
    train_loader, val_loader = loaders(spec, train_set, val_set)
    state = build_state(spec, ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state.load_state_dict(load_checkpoint(Path(folder) / CHECKPOINT_FILE))
    resumed_from = state.iteration
    model = ray.train.torch.prepare_model(state.model)  # DDP when there are several workers
    report = functools.partial(_report, spec=spec, categories=train_set.categories)
    log = lambda i, m: report({**m, ITERATION: i})  # noqa: E731

    max_iter, every = spec.solver.max_iter, spec.evaluation.every
    while state.iteration < max_iter:
        until = next_stop(state.iteration, spec)
        train_steps(spec, state, train_loader, until, log, spec.reporting.log_every, model)
        if until == max_iter:
            break
        # A model is checkpointed before it is evaluated: an evaluation that fails (an image
        # that cannot be read, say) fails the run, but cannot cost it the model.
        if until % spec.reporting.checkpoint_every == 0:
            report({ITERATION: until}, state=state)
        if every and until % every == 0:
            metrics, results = _evaluate(spec, state, val_loader)
            overlays = functools.partial(_write_overlays, results, val_set, spec)
            report({**metrics, ITERATION: until}, state=state, write_files=overlays)

    report({ITERATION: state.iteration}, state=state)
    metrics, results = _evaluate(spec, state, val_loader)
    evaluation = functools.partial(
        write_evaluation,
        metrics=metrics,
        results=results,
        dataset=val_set,
        overlays=spec.evaluation.overlays,
    )
    final = {**metrics, ITERATION: state.iteration, FINAL: True, RESUMED_FROM: resumed_from}
    report(final, state=state, write_files=evaluation)


def _evaluate(spec: TrainSpec, state: TrainState, val_loader) -> tuple[dict, list[dict]]:
    """The evaluation of the model, each worker predicting its shard: the metrics and COCO
    results on rank 0 (warning of a collapse), nothing on the other ranks."""
    metrics, results = evaluate_model(spec, state.model, val_loader)
    warn_of_collapse(spec, metrics, state.iteration)
    return metrics, results


def _write_overlays(results: list[dict], dataset, spec: TrainSpec, folder: Path) -> None:
    """An intermediate evaluation's overlays, in its checkpoint folder (the MLflow callback
    logs them as images at the evaluation's step)."""
    write_overlays(dataset, results, spec.evaluation.overlays, folder / ARTIFACT_OVERLAYS)


#: Environment for the Ray workers of a cluster this package starts (a local one, a submitted
#: job's): Ray Train routes a worker's prints to its logger, past ``contextlib.redirect_stdout``,
#: so pycocotools' progress prints (a dozen lines per evaluation) would flood the console.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def build_trainer(
    spec: TrainSpec,
    storage: str | Path,
    name: str,
    callbacks: list[UserCallback] = (),
    verbose: bool = False,
    mlflow_run: tuple[str, str] | None = None,
) -> TorchTrainer:
    """A TorchTrainer for ``spec``; a run of the same ``name`` under ``storage`` resumes from
    its latest checkpoint. ``callbacks`` run on the Train controller after each report; Ray
    Train's own log lines (resources requested, worker group started, each report) show only
    when ``verbose``. With ``mlflow_run`` (a tracking URI and a run id) rank 0 logs system
    metrics into that run."""
    resources = spec.resources
    config = {"spec": spec.as_dict()}
    if mlflow_run is not None:
        config["mlflow_run"] = list(mlflow_run)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker},
            placement_strategy=resources.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(storage),
            failure_config=FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level=RAY_TRAIN_LOG_LEVEL[verbose]),
        ),
    )


def storage_uri(storage: str | Path) -> str:
    """A storage location for Ray: a URI (``s3://...``) as it is, a local folder made absolute."""
    text = str(storage)
    return text if "://" in text else str(Path(text).expanduser().resolve())
