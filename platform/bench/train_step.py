"""``boxinst bench train-step``: one training iteration as training runs it
(:func:`boxinst.platform.training.loop.optimisation_step`: all losses, backward, SGD step) of the
small CPU model and of the R-50 COCO model (``--configs``: also the BiFPN and DCN models of
:data:`~boxinst.platform.bench.batches.CONFIGS`), box-supervised (projection + pairwise terms,
warm-up done).

On CUDA the step runs under autocast with a gradient scaler, as training does; on the CPU in
float32. ``channels_last`` and ``torch.compile`` of the model are options, to measure them.
"""

from __future__ import annotations

import time

import torch

from boxinst.models.condinst import CondInst
from boxinst.platform.bench.batches import (
    BATCH_SIZES,
    COCO_IMAGE_SIZE,
    CONFIG_HEADER,
    CONFIGS,
    SMALL_IMAGE_SIZE,
    batch_for,
    config_columns,
    config_record,
    image_size,
)
from boxinst.platform.bench.harness import default_device, synchronize, table, time_interleaved
from boxinst.platform.training.loop import batch_to_device, optimisation_step
from boxinst.platform.training.objective import LossConfig


def training_step(
    config: str,
    size: tuple[int, int],
    device: torch.device,
    channels_last: bool = False,
    torch_compile: bool = False,
    seed: int = 0,
):
    """A closure running one training iteration of ``config`` on its benchmark batch."""
    torch.manual_seed(seed)
    model = CondInst(CONFIGS[config][0]).to(device).train()
    images, targets = batch_to_device(*batch_for(config, BATCH_SIZES[config], size, seed), device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    forward = torch.compile(model) if torch_compile else model
    loss_cfg = LossConfig(pairwise_warmup_iters=0)
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        optimisation_step(forward, images, targets, loss_cfg, 0, generator, optimizer, scaler)

    return step


def run(
    configs: tuple[str, ...] = ("small", "coco"),
    size: tuple[int, int] = COCO_IMAGE_SIZE,
    small_size: int = SMALL_IMAGE_SIZE,
    repeats: int = 5,
    channels_last: bool = False,
    torch_compile: bool = False,
) -> dict:
    """Seconds per iteration and images per second of each configuration (after one warm-up
    iteration, whose time is reported as ``first_step_s``: it includes compilation)."""
    device = default_device()
    results = {}
    for config in configs:
        hw = image_size(config, size, small_size)
        step = training_step(config, hw, device, channels_last, torch_compile)
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - start
        timing = time_interleaved({config: step}, repeats, device)[config]
        results[config] = {**config_record(config, hw, timing), "first_step_s": first}
    return {
        "device": str(device),
        "autocast": device.type == "cuda",
        "channels_last": channels_last,
        "torch_compile": torch_compile,
        "configs": results,
    }


def summary(result: dict) -> str:
    variant = (
        ", ".join(name for name in ("autocast", "channels_last", "torch_compile") if result[name])
        or "float32, eager"
    )
    rows = [
        (*config_columns(name, r), r["median_s"], r["images_per_s"], r["first_step_s"])
        for name, r in result["configs"].items()
    ]
    header = [*CONFIG_HEADER, "s/step", "images/s", "first step s"]
    return f"training step on {result['device']} ({variant})\n" + table(header, rows)
