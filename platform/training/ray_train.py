"""Ray Train: a spec trained by a ``TorchTrainer``, DDP over its workers (gloo on CPU, NCCL on
GPU), each worker running the one training loop, :func:`boxinst.platform.training.loop.run`.

The loop's reports go to Ray Train (a barrier: every worker reports at the same iterations):
losses, checkpoints, COCO metrics, and in the final checkpoint the evaluation's files (metrics,
COCO results, mask overlays), which :class:`~boxinst.platform.tracking.callback.MlflowCallback`
logs as artifacts. Every worker predicts its shard of the evaluation set and rank 0 scores them
all (:mod:`~boxinst.platform.evaluation.shards`).
"""

from __future__ import annotations

import contextlib
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
from boxinst.platform.spec import TrainSpec
from boxinst.platform.tracking.system_metrics import system_metrics
from boxinst.platform.training import loop
from boxinst.platform.training.loop import CHECKPOINT_FILE, load_checkpoint
from boxinst.platform.training.storage import storage_filesystem, storage_uri


def use_reserved_cpus(spec: TrainSpec) -> None:
    """On CPU, a worker computes with as many threads as the CPUs it reserved (at least one).
    Ray Train does not set this, and torch's default, one thread per core of the machine in
    every worker, oversubscribes the cores when several trials share them."""
    if not spec.resources.use_gpu:
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))


def train_loop_per_worker(config: dict) -> None:
    """The loop each Ray Train worker runs; resumes from the run's latest checkpoint if any.
    Rank 0 logs its node's system metrics into the MLflow run ``config["mlflow_run"]``."""
    rank0 = ray.train.get_context().get_world_rank() == 0
    mlflow_run = config.get("mlflow_run") if rank0 else None
    with system_metrics(*mlflow_run) if mlflow_run else contextlib.nullcontext():
        train(TrainSpec.model_validate(config["spec"]))


def train(spec: TrainSpec) -> None:
    """Train ``spec`` on this worker with :func:`~boxinst.platform.training.loop.run`, from the
    run's latest checkpoint if it has one, DDP over the workers."""
    use_reserved_cpus(spec)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    device = ray.train.torch.get_device()
    loop.run(spec, device, report, resume, ray.train.torch.prepare_model)


def report(metrics: dict, folder: Path | None) -> None:
    """A report of the loop to Ray Train, with the checkpoint in ``folder`` if any (Ray copies
    it to the run's storage before this returns)."""
    checkpoint = None if folder is None else Checkpoint.from_directory(folder)
    ray.train.report(metrics, checkpoint=checkpoint)


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
            storage_filesystem=storage_filesystem(storage),
            failure_config=FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level=RAY_TRAIN_LOG_LEVEL[verbose]),
        ),
    )
