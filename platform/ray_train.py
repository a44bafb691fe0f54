"""Ray Train: a spec trained by a ``TorchTrainer``, DDP over its workers (gloo on CPU, NCCL on
GPU), reporting losses and checkpoints to Ray Train and, at the end, the COCO metrics."""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from boxinst.platform.spec import TrainSpec
from boxinst.platform.training import (
    CHECKPOINT_FILE,
    build_datasets,
    build_state,
    evaluate_model,
    load_checkpoint,
    loaders,
    save_checkpoint,
    train_steps,
)


def _report(metrics: dict, state=None) -> None:
    """Report from every worker (Ray Train needs all to call it); rank 0 adds the checkpoint."""
    if state is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(state, Path(folder))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def train_loop_per_worker(config: dict) -> None:
    """The loop each Ray Train worker runs; resumes from the run's latest checkpoint if any."""
    spec = TrainSpec.model_validate(config["spec"])
    train_set, val_set = build_datasets(spec)
    train_loader, val_loader = loaders(spec, train_set, val_set)
    state = build_state(spec, ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state.load_state_dict(load_checkpoint(Path(folder) / CHECKPOINT_FILE))
    resumed_from = state.iteration
    model = ray.train.torch.prepare_model(state.model)  # DDP when there are several workers

    every = spec.reporting
    while state.iteration < spec.solver.max_iter:
        until = min(
            (state.iteration // every.checkpoint_every + 1) * every.checkpoint_every,
            spec.solver.max_iter,
        )
        train_steps(
            spec,
            state,
            train_loader,
            until,
            lambda i, m: _report({**m, "iteration": i}),
            every.log_every,
            model,
        )
        if until < spec.solver.max_iter:
            _report({"iteration": state.iteration}, state)

    rank0 = ray.train.get_context().get_world_rank() == 0
    metrics = evaluate_model(spec, state.model, val_loader) if rank0 else {}
    _report({**metrics, "iteration": state.iteration, "resumed_from": resumed_from}, state)


def build_trainer(
    spec: TrainSpec, storage: str | Path, name: str, max_failures: int = 0
) -> TorchTrainer:
    """A TorchTrainer for ``spec``; a run of the same ``name`` under ``storage`` resumes."""
    resources = spec.resources
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.as_dict()},
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
