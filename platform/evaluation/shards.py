"""An evaluation set split over the workers of a distributed run, and its pieces put back
together on rank 0.

The split is by batch: of the batches a single worker's sequential loader would make (images
``0..B-1``, ``B..2B-1``, ...), worker ``r`` of ``W`` predicts batches ``r, r + W, r + 2W, ...``.
Every image is in exactly one batch of one worker (no padding with repeated images, as
``torch.utils.data.DistributedSampler`` pads), and every batch holds the images it holds on one
worker, padded to the same size, so each batch's predictions are those of a single-worker
evaluation and the metrics are the same whatever the number of workers. Rank 0 gathers the
workers' batches (``torch.distributed.gather_object``) and orders them by batch number, which is
a single worker's order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

T = TypeVar("T")


def world() -> tuple[int, int]:
    """This process's rank and the number of processes of its process group ((0, 1) alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardBatches(Sampler[list[int]]):
    """The batches of ``size`` images that worker ``rank`` of ``workers`` predicts (the module
    says which); ``numbers`` are their positions among all the batches."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, workers: int = 1):
        if not 0 <= rank < workers:
            raise ValueError(f"rank {rank} is not one of {workers} workers")
        self.size, self.batch_size, self.rank, self.workers = size, batch_size, rank, workers
        self.batches = math.ceil(size / batch_size)  # over all the workers
        self.numbers = range(rank, self.batches, workers)

    def __iter__(self) -> Iterator[list[int]]:
        for number in self.numbers:
            start = number * self.batch_size
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        return len(self.numbers)


def share_rank0_weights(model: torch.nn.Module, sampler: ShardBatches) -> None:
    """Every worker of ``sampler``'s split gets rank 0's parameters and buffers in ``model``,
    those rank 0 checkpoints: DDP keeps the parameters equal, but each worker's batch-norm
    statistics follow its own images since the last forward. A collective, as
    :func:`gather_batches`."""
    if sampler.workers > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def gather_batches(sampler: ShardBatches, shard: list[T]) -> list[T] | None:
    """Every worker's per-batch ``shard`` (one item per batch of ``sampler``, in its order) on
    rank 0, all the batches in a single worker's order; ``None`` on the other ranks. A
    collective: every worker of the group calls it."""
    if len(shard) != len(sampler):
        raise ValueError(f"{len(shard)} items for the {len(sampler)} batches of this worker")
    if sampler.workers == 1:
        return shard
    numbered = list(zip(sampler.numbers, shard, strict=True))
    gathered = [None] * sampler.workers if sampler.rank == 0 else None
    dist.gather_object(numbered, gathered, dst=0)
    if sampler.rank != 0:
        return None
    ordered = sorted(itertools.chain.from_iterable(gathered), key=lambda item: item[0])
    if [number for number, _ in ordered] != list(range(sampler.batches)):
        raise RuntimeError("the workers' evaluation batches do not cover the evaluation set once")
    return [item for _, item in ordered]
