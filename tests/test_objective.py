"""The wiring of CondInst's outputs to the losses, on a small real model."""

import math

import numpy as np
import pytest
import torch

from boxinst.models.condinst import CondInst
from boxinst.platform.data.collate import collate_scenes
from boxinst.platform.data.shapes import render_scene
from boxinst.platform.training.objective import LossConfig, box_masks_at_stride, compute_losses


def generate(count: int, seed: int):
    """Scenes of 64x64 pixels, up to three ellipses, triangles and stars each."""
    rng = np.random.default_rng(seed)
    classes = ("ellipse", "triangle", "star")
    return [render_scene(rng, 64, 64, classes, 3, (0.2, 0.4)) for _ in range(count)]


def test_box_masks_are_sampled_like_the_official_bitmasks():
    boxes = torch.tensor([[3.0, 5.5, 13.2, 9.0]])
    full = torch.zeros(16, 20)
    full[5 : int(9.0) + 1, 3 : int(13.2) + 1] = 1  # the official code's drawing, pixels inclusive
    expected = full[2::4, 2::4]
    torch.testing.assert_close(box_masks_at_stride(boxes, 16, 20, 4)[0], expected)


@pytest.fixture(scope="module")
def batch():
    scenes = generate(2, seed=1)
    return collate_scenes(scenes, has_mask=False)


def _losses(batch, make_config, cfg=None, targets=None):
    torch.manual_seed(0)
    model = CondInst(make_config())
    images, default_targets = batch
    return compute_losses(
        model, images, targets or default_targets, cfg or LossConfig(pairwise_warmup_iters=0)
    )


def test_box_only_batch_gives_finite_fcos_and_box_losses(batch, make_config):
    losses = _losses(batch, make_config)
    assert set(losses) == {
        "loss_cls",
        "loss_box",
        "loss_ctr",
        "loss_mask",
        "loss_proj",
        "loss_pairwise",
    }
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_mask"].item() == 0
    assert losses["loss_proj"].item() > 0 and losses["loss_pairwise"].item() > 0
    total = sum(losses.values())
    total.backward()


def test_masks_of_box_only_instances_never_reach_the_loss(batch, make_config):
    _, targets = batch
    semi = []
    for t in targets:
        t = dict(t)
        t["has_mask"] = torch.arange(len(t["boxes"])) % 2 == 0
        semi.append(t)
    poisoned = []
    for t in semi:
        t = dict(t)
        masks = t["masks"].float()  # a copy that can hold the poison
        masks[~t["has_mask"]] = float("nan")
        t["masks"] = masks
        poisoned.append(t)
    clean = _losses(batch, make_config, targets=semi)
    dirty = _losses(batch, make_config, targets=poisoned)
    for name in clean:
        torch.testing.assert_close(dirty[name], clean[name])
    assert clean["loss_mask"].item() > 0


def test_regime_switches_select_the_terms(batch, make_config):
    only_projection = _losses(batch, make_config, LossConfig(use_pairwise=False))
    assert only_projection["loss_pairwise"].item() == 0 and only_projection["loss_proj"].item() > 0
    nothing = _losses(batch, make_config, LossConfig(use_pairwise=False, use_projection=False))
    assert nothing["loss_proj"].item() == 0 and nothing["loss_mask"].item() == 0
    warm = _losses(batch, make_config, LossConfig(pairwise_warmup_iters=10))  # iteration 0 of 10
    assert warm["loss_pairwise"].item() == 0


def test_image_without_objects_is_fine(make_config):
    scenes = generate(1, seed=2)
    scenes[0].masks = np.zeros((0, 64, 64), np.uint8)
    scenes[0].boxes = np.zeros((0, 4), np.float32)
    scenes[0].labels = np.zeros((0,), np.int64)
    losses = _losses(collate_scenes(scenes, has_mask=False), make_config)
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_proj"].item() == 0 and losses["loss_box"].item() == 0
