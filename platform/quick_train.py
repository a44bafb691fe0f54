"""A short, single-process CondInst/BoxInst training on generated shapes, and the measure of its
masks: the demo of the embedded default and the learning check of the test suite.

Mask quality is measured where the detector cannot blur it: for every ground-truth instance,
the dynamic mask head is run with the controller output at the instance's most central
positive location (as training does), and the mask's IoU with the true shape is compared with
the IoU of the filled box, the "box as mask" baseline of the paper's Table 3.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from boxinst.models.condinst import CondInst, CondInstConfig
from boxinst.platform.data.box_prior import PriorSettings, box_priors
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.shapes import Scene, render_scene
from boxinst.platform.mask_quality import MaskIoU
from boxinst.platform.metrics import MASK_IOU, MASK_IOU_BOX
from boxinst.platform.objective import LossConfig, compute_losses


def small_model_config(**overrides) -> CondInstConfig:
    """A CondInst small enough to train on a CPU: ResNet-18 from scratch (batch norm, all
    stages trained), 64-channel FPN, 2-conv towers, a 32-channel mask branch."""
    values = dict(
        backbone_depth=18,
        backbone_norm="BN",
        trainable_backbone_layers=5,
        fpn_channels=64,
        head_convs=2,
        mask_branch_channels=32,
        mask_branch_convs=2,
    )
    return CondInstConfig(**{**values, **overrides})


#: Supervision regimes of the demo: mask policy and enabled box terms (``use_prior``: the
#: GrabCut box prior of :mod:`boxinst.platform.data.box_prior`, the spec's ``box_only_grabcut``).
REGIMES = {
    "box_only_grabcut": dict(
        has_mask=False, use_projection=True, use_pairwise=True, use_prior=True
    ),
    "box_only": dict(has_mask=False, use_projection=True, use_pairwise=True),
    "projection_only": dict(has_mask=False, use_projection=True, use_pairwise=False),
    "fully_supervised": dict(has_mask=True, use_projection=False, use_pairwise=False),
}


@dataclass
class QuickTrainConfig:
    regime: str = "box_only"
    # Shapes whose box is a poor mask and whose outline the pairwise term can find (a ring's hole
    # is enclosed by the ring, so no box-only loss can tell it from the ring: the paper's Fig. 5).
    classes: tuple[str, ...] = ("ellipse", "triangle", "star", "crescent", "bar")
    max_objects: int = 1
    size_range: tuple[float, float] = (0.2, 0.4)
    iterations: int = 400
    batch_size: int = 8
    image_size: int = 96
    train_images: int = 256
    val_images: int = 32
    learning_rate: float = 2e-3
    pairwise_warmup_iters: int = 150
    seed: int = 0
    model: CondInstConfig = field(default_factory=small_model_config)


def scenes_to_batch(
    scenes: list[Scene], has_mask: bool, priors: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> tuple[torch.Tensor, list[dict]]:
    """The objective's batch of generated scenes, padded by the datasets' own collate; with
    each scene's box priors (:func:`~boxinst.platform.data.box_prior.box_priors`) where given."""
    samples = []
    for index, scene in enumerate(scenes):
        target = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.labels),
            "masks": torch.from_numpy(scene.masks),
            "has_mask": torch.full((len(scene.masks),), has_mask),
            "image_size": scene.image.shape[:2],
        }
        if priors is not None:
            masks, reached = priors[index]
            target["prior_masks"] = torch.from_numpy(masks.astype(np.uint8))
            target["has_prior"] = torch.from_numpy(reached)
        samples.append((torch.from_numpy(scene.image).permute(2, 0, 1), target))
    return collate_instances(samples)


def generate(cfg: QuickTrainConfig, count: int, seed: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [
        render_scene(
            rng, cfg.image_size, cfg.image_size, cfg.classes, cfg.max_objects, cfg.size_range
        )
        for _ in range(count)
    ]


def train(cfg: QuickTrainConfig, log_every: int = 0) -> CondInst:
    """Train a small CondInst on generated scenes under ``cfg.regime``."""
    regime = REGIMES[cfg.regime]
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    scenes = generate(cfg, cfg.train_images, cfg.seed)
    model = CondInst(replace(cfg.model, num_classes=len(cfg.classes)))
    loss_cfg = LossConfig(
        use_projection=regime["use_projection"],
        use_pairwise=regime["use_pairwise"],
        use_prior=regime.get("use_prior", False),
        pairwise_warmup_iters=cfg.pairwise_warmup_iters,
    )
    priors = None
    if loss_cfg.use_prior:
        priors = [box_priors(s.image, s.boxes, PriorSettings()) for s in scenes]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.learning_rate, total_steps=cfg.iterations, pct_start=0.1
    )
    model.train()
    start = time.perf_counter()
    for iteration in range(cfg.iterations):
        picks = torch.randperm(len(scenes), generator=generator)[: cfg.batch_size]
        images, targets = scenes_to_batch(
            [scenes[i] for i in picks],
            regime["has_mask"],
            None if priors is None else [priors[i] for i in picks],
        )
        losses = compute_losses(model, images, targets, loss_cfg, iteration, generator)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        if log_every and (iteration % log_every == 0 or iteration == cfg.iterations - 1):
            parts = " ".join(f"{k[5:]}={v.item():.3f}" for k, v in losses.items())
            rate = (iteration + 1) * cfg.batch_size / (time.perf_counter() - start)
            print(
                f"[{cfg.regime}] it {iteration:4d} loss={total.item():.3f} {parts} "
                f"({rate:.1f} img/s)"
            )
    return model


@torch.no_grad()
def mask_quality(model: CondInst, scenes: list[Scene]) -> dict[str, float]:
    """Mean IoU with the true shapes of the model's masks at the ground-truth locations and of
    the filled boxes (:class:`~boxinst.platform.mask_quality.MaskIoU`, as every evaluation)."""
    model.eval()
    images, targets = scenes_to_batch(scenes, has_mask=True)
    quality = MaskIoU()
    quality.add(model, model(images), targets, LossConfig())
    metrics = quality.metrics()
    return {
        "mask_iou": metrics[MASK_IOU],
        "box_iou": metrics[MASK_IOU_BOX],
        "instances": quality.instances,
    }


def run(cfg: QuickTrainConfig, log_every: int = 0) -> dict[str, float]:
    """Train under ``cfg`` and measure on held-out scenes; returns the metrics and the time."""
    start = time.perf_counter()
    model = train(cfg, log_every)
    val_scenes = generate(cfg, cfg.val_images, cfg.seed + 10_000)
    metrics = mask_quality(model, val_scenes)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def _run_single_threaded(cfg: QuickTrainConfig, log_every: int) -> dict[str, float]:
    torch.set_num_threads(1)
    return run(cfg, log_every)


def run_parallel(configs: list[QuickTrainConfig], log_every: int = 0) -> list[dict[str, float]]:
    """Run several trainings side by side, one single-threaded process per CPU core (small
    models train faster per core that way than one process using all cores)."""
    workers = min(len(configs), os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_run_single_threaded, cfg, log_every) for cfg in configs]
        return [future.result() for future in futures]
