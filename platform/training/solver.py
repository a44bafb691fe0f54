"""Optimiser and learning-rate schedule of the paper's recipe: SGD, linear warm-up, step decay."""

from __future__ import annotations

import torch
from torch import nn

from boxinst.platform.spec import Solver


def build_optimizer(model: nn.Module, solver: Solver) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if solver.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=solver.base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay
        )
    return torch.optim.AdamW(params, lr=solver.base_lr, weight_decay=solver.weight_decay)


def lr_factor(iteration: int, solver: Solver) -> float:
    """Multiplier of the base learning rate at ``iteration``: linear warm-up from
    ``warmup_factor`` over ``warmup_iters``, times ``gamma`` for each step passed."""
    decay = solver.gamma ** sum(iteration >= step for step in solver.steps)
    if iteration >= solver.warmup_iters:
        return decay
    alpha = iteration / solver.warmup_iters
    return decay * (solver.warmup_factor * (1 - alpha) + alpha)


def build_scheduler(optimizer: torch.optim.Optimizer, solver: Solver):
    """A per-iteration LambdaLR following :func:`lr_factor` (its state is checkpointable)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, solver))
