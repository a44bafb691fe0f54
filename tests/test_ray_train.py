"""Training on a real local Ray cluster: two DDP workers, checkpoints, resume by run name."""

import pytest
import ray
import torch
import yaml

from boxinst.platform.ray_train import build_trainer
from boxinst.platform.spec import load_spec
from boxinst.platform.training import CHECKPOINT_FILE, prepare_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_spec(tmp_path, max_iter):
    root = tmp_path / "shapes"
    data = {
        "name": "tiny",
        "regime": "box_only",
        "data": {
            "train": {
                "annotations": f"{root}/train/annotations.json",
                "images": f"{root}/train/images",
            },
            "val": {"annotations": f"{root}/val/annotations.json", "images": f"{root}/val/images"},
            "synth": {
                "seed": 2,
                "train_images": 8,
                "val_images": 2,
                "min_size": 64,
                "max_size": 80,
            },
            "train_short_sizes": [64],
            "max_size": 96,
            "test_short_size": 64,
            "loader_workers": 0,
        },
        "model": {
            "num_classes": 7,
            "backbone_depth": 18,
            "backbone_norm": "BN",
            "trainable_backbone_layers": 5,
            "fpn_channels": 64,
            "head_convs": 1,
            "mask_branch_channels": 32,
            "mask_branch_convs": 1,
        },
        "solver": {"ims_per_batch": 4, "max_iter": max_iter, "steps": [100], "warmup_iters": 1},
        "reporting": {"log_every": 1, "checkpoint_every": 2},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    prepare_data(spec)
    return spec


def test_two_workers_train_checkpoint_evaluate_and_resume(local_ray, tmp_path):
    storage = tmp_path / "runs"
    result = build_trainer(tiny_spec(tmp_path, max_iter=4), storage, "run").fit()
    assert result.error is None
    assert result.metrics["iteration"] == 4 and result.metrics["resumed_from"] == 0
    assert "segm/AP" in result.metrics and "bbox/AP" in result.metrics
    with result.checkpoint.as_directory() as folder:
        state = torch.load(f"{folder}/{CHECKPOINT_FILE}", weights_only=True)
    assert state["iteration"] == 4

    # the same run name under the same storage resumes from its latest checkpoint
    longer = build_trainer(tiny_spec(tmp_path, max_iter=6), storage, "run").fit()
    assert longer.metrics["resumed_from"] == 4 and longer.metrics["iteration"] == 6
