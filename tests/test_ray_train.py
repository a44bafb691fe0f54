"""Training on a real local Ray cluster: two DDP workers, checkpoints, resume by run name."""

import pytest
import torch

from boxinst.platform.training.loop import CHECKPOINT_FILE
from boxinst.platform.training.ray_train import build_trainer, use_reserved_cpus

pytestmark = pytest.mark.integration


def spec(tiny_spec, max_iter):
    return tiny_spec(
        "data.train_short_sizes=[64]",
        "solver.ims_per_batch=4",
        f"solver.max_iter={max_iter}",
        "solver.steps=[100]",
        "solver.warmup_iters=1",
        "reporting={log_every: 1, checkpoint_every: 2}",
        "resources={num_workers: 2, cpus_per_worker: 1}",
    )


def test_two_workers_train_checkpoint_evaluate_and_resume(local_ray, tiny_spec, tmp_path):
    storage = tmp_path / "runs"
    result = build_trainer(spec(tiny_spec, 4), storage, "run").fit()
    assert result.error is None
    assert result.metrics["iteration"] == 4 and result.metrics["resumed_from"] == 0
    assert "segm/AP" in result.metrics and "bbox/AP" in result.metrics
    with result.checkpoint.as_directory() as folder:
        state = torch.load(f"{folder}/{CHECKPOINT_FILE}", weights_only=True)
    assert state["iteration"] == 4

    # the same run name under the same storage resumes from its latest checkpoint
    longer = build_trainer(spec(tiny_spec, 6), storage, "run").fit()
    assert longer.metrics["resumed_from"] == 4 and longer.metrics["iteration"] == 6


@pytest.mark.parametrize(("cpus", "threads"), [(0.4, 1), (1, 1), (2.5, 2)])
def test_a_cpu_worker_computes_with_the_cpus_it_reserved(tiny_spec, cpus, threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        use_reserved_cpus(tiny_spec(f"resources.cpus_per_worker={cpus}"))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
