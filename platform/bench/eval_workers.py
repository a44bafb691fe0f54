"""``boxinst bench eval-workers``: one evaluation of a run (the workers' predictions on the
validation set, then COCO scoring on rank 0) by rank 0 alone while the other workers wait, as
before :mod:`~boxinst.platform.evaluation.shards`, and sharded over all the workers, side by
side in the same Ray Train run of ``workers`` workers of one CPU each.

The model is the quickstart's, randomly initialised with the score threshold at 0, so that every
image yields the full 100 detections and masks (the load of a trained model); the evaluation set
is ``images`` generated images of the quickstart's kind (its own 200 by default). Each round runs
both evaluations one after the other; the median of ``repeats`` rounds is reported, with whether
the two gave the same metrics.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import ray
import ray.train
import torch
from ray.train import LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader

from boxinst.models.condinst import CondInst
from boxinst.platform.bench.harness import table
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.evaluation.shards import ShardBatches
from boxinst.platform.ray_cluster import start_ray
from boxinst.platform.spec import TrainSpec, load_spec
from boxinst.platform.training.loop import (
    EVALUATION_BATCH,
    build_val_dataset,
    evaluate_model,
    evaluation_loader,
    generate_data,
)


def _evaluations(config: dict) -> None:
    """A worker's rounds: rank 0 alone, then sharded, a barrier around each."""
    torch.set_num_threads(1)
    spec = TrainSpec.model_validate(config["spec"])
    dataset = build_val_dataset(spec)
    torch.manual_seed(0)
    model = CondInst(spec.model).eval()
    rank = torch.distributed.get_rank()
    alone = DataLoader(
        dataset,
        batch_sampler=ShardBatches(len(dataset), EVALUATION_BATCH),
        collate_fn=collate_instances,
    )
    times, same = {"rank0": [], "sharded": []}, True
    for _ in range(config["repeats"]):
        torch.distributed.barrier()
        start = time.perf_counter()
        single = evaluate_model(spec, model, alone)[0] if rank == 0 else None
        torch.distributed.barrier()
        middle = time.perf_counter()
        sharded = evaluate_model(spec, model, evaluation_loader(dataset))[0]
        torch.distributed.barrier()
        times["rank0"].append(middle - start)
        times["sharded"].append(time.perf_counter() - middle)
        same = same and (rank != 0 or str(single) == str(sharded))  # NaN-safe
    with tempfile.TemporaryDirectory() as empty:  # a run's result keeps a checkpoint's metrics
        checkpoint = ray.train.Checkpoint.from_directory(empty) if rank == 0 else None
        ray.train.report({**times, "same_metrics": same}, checkpoint=checkpoint)


def run(images: int = 200, workers: int = 2, repeats: int = 3) -> dict:
    """Median seconds of the two evaluations, their ratio, and whether the metrics agree."""
    with tempfile.TemporaryDirectory() as folder:
        splits = [
            f"data.{name}={{annotations: {folder}/{name}/annotations.json, "
            f"images: {folder}/{name}/images}}"
            for name in ("train", "val")
        ]
        settings = ["data.synth.train_images=1", f"data.synth.val_images={images}"]
        resources = f"resources={{num_workers: {workers}, cpus_per_worker: 1}}"
        spec = load_spec("quickstart", [*splits, *settings, resources, "model.score_threshold=0.0"])
        generate_data(spec)
        started = not ray.is_initialized()
        start_ray(None, [spec])
        try:
            trainer = TorchTrainer(
                _evaluations,
                train_loop_config={"spec": spec.as_dict(), "repeats": repeats},
                scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(
                    name="eval-workers",
                    storage_path=f"{folder}/runs",
                    logging_config=LoggingConfig(log_level="WARNING"),
                ),
            )
            metrics = trainer.fit().metrics
        finally:
            if started:
                ray.shutdown()
    rank0, sharded = (statistics.median(metrics[key]) for key in ("rank0", "sharded"))
    return {
        "images": images,
        "workers": workers,
        "repeats": repeats,
        "rank0_s": rank0,
        "sharded_s": sharded,
        "ratio": sharded / rank0,
        "same_metrics": metrics["same_metrics"],
    }


def summary(result: dict) -> str:
    rows = [
        ("rank 0 alone, the others waiting", result["rank0_s"], 1.0),
        (f"sharded over {result['workers']} workers", result["sharded_s"], result["ratio"]),
    ]
    same = "identical" if result["same_metrics"] else "DIFFERENT"
    return (
        f"one evaluation of {result['images']} images x 100 detections, {result['workers']} "
        f"Ray Train workers of 1 CPU (median of {result['repeats']}); metrics {same}\n"
        + table(["evaluation", "s", "x rank 0"], rows)
    )
