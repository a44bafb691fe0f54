"""Loss normalisers shared by the workers of a data-parallel run.

DDP averages the workers' gradients, so a loss normalised on each worker by a count over all
workers (the mean of the workers' counts) has the gradient the same loss has on the whole
global batch in one process: the result does not depend on how the batch is split.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over the workers of the default process group (itself when alone).

    A collective: every worker must call it, the same number of times, in the same order."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value
