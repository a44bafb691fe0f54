"""Evaluation sharded over the workers of a run: every image predicted once, in the batches of a
single worker, so a two-worker run reports exactly what one process computes on its checkpoint."""

import json

import pytest
import torch

from boxinst.platform.evaluation.shards import ShardBatches, gather_batches
from boxinst.platform.inference import load_trained
from boxinst.platform.metrics import ARTIFACT_EVALUATION, ARTIFACT_PREDICTIONS
from boxinst.platform.training.loop import build_val_dataset, evaluate_model, evaluation_loader
from boxinst.platform.training.ray_train import build_trainer


@pytest.mark.parametrize("size", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_workers_batches_are_a_single_workers_batches_each_once(size, batch_size, workers):
    single = list(ShardBatches(size, batch_size))
    assert [i for batch in single for i in batch] == list(range(size))
    shards = [ShardBatches(size, batch_size, rank, workers) for rank in range(workers)]
    numbered = {n: batch for shard in shards for n, batch in zip(shard.numbers, shard, strict=True)}
    assert sum(len(shard) for shard in shards) == len(numbered) == len(single)
    assert [numbered[n] for n in range(len(single))] == single


def test_a_worker_alone_gets_its_batches_back_and_a_short_shard_is_refused():
    sampler = ShardBatches(5, 2)
    assert gather_batches(sampler, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 items for the 3 batches"):
        gather_batches(sampler, ["a", "b"])
    with pytest.raises(ValueError, match="rank 2 is not one of 2 workers"):
        ShardBatches(5, 2, rank=2, workers=2)


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_evaluate_exactly_as_one_process_on_the_checkpoint(
    local_ray, tiny_spec, tmp_path
):
    """Five validation images of different sizes (batches [0 1] [2 3] [4], the second on the
    other worker) and a batch-norm model, whose statistics differ between the workers after
    training: the run's final metrics and results are those of one process."""
    spec = tiny_spec(
        "data.synth.val_images=5",
        "model.score_threshold=0.0",  # a three-iteration model detects on every image
        "resources={num_workers: 2, cpus_per_worker: 1}",
        "solver={ims_per_batch: 2, max_iter: 3, steps: [100], warmup_iters: 1}",
        "reporting={log_every: 1, checkpoint_every: 100}",
        "evaluation={every: 2, overlays: 0}",
    )
    result = build_trainer(spec, tmp_path / "runs", "two-workers").fit()
    assert result.error is None and result.metrics["iteration"] == 3
    with result.checkpoint.as_directory() as folder:
        reported = json.loads(open(f"{folder}/{ARTIFACT_EVALUATION}/metrics.json").read())
        distributed = json.loads(open(f"{folder}/{ARTIFACT_PREDICTIONS}/results.json").read())
        model, loaded, _ = load_trained(folder)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker computes
    try:
        dataset = build_val_dataset(loaded)
        metrics, results = evaluate_model(loaded, model, evaluation_loader(dataset))
    finally:
        torch.set_num_threads(threads)
    assert len({r["image_id"] for r in results}) == len(dataset) == 5  # every image detects
    assert distributed == json.loads(json.dumps(results))
    assert reported == pytest.approx(metrics, nan_ok=True, rel=0, abs=0)
    assert result.metrics["segm/AP"] == pytest.approx(metrics["segm/AP"], nan_ok=True)
