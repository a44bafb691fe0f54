"""The learning-rate schedule of the paper's COCO recipe."""

import pytest
import torch

from boxinst.platform.spec import Solver
from boxinst.platform.training.solver import build_optimizer, build_scheduler, lr_factor

COCO_1X = Solver()  # 90k iterations, lr 0.01, /10 at 60k and 80k, 1k warm-up from 0.001


@pytest.mark.parametrize(
    "iteration,factor",
    [
        (0, 0.001),
        (500, 0.001 * 0.5 + 0.5),
        (1000, 1.0),
        (59_999, 1.0),
        (60_000, 0.1),
        (80_000, 0.01),
    ],
)
def test_coco_1x_schedule(iteration, factor):
    assert lr_factor(iteration, COCO_1X) == pytest.approx(factor)


def test_scheduler_drives_the_optimizer():
    model = torch.nn.Linear(2, 1)
    solver = Solver(base_lr=0.02, warmup_iters=2, warmup_factor=0.5, steps=[3])
    optimizer = build_optimizer(model, solver)
    scheduler = build_scheduler(optimizer, solver)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.01, 0.015, 0.02, 0.002, 0.002])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
