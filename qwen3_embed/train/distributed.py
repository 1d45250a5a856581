"""Data-parallel training over the ranks of a torchrun launch (one GPU per rank, or CPU processes over gloo), as the
corpus encoder runs: every rank holds the whole model and walks the same schedule of batches, takes every
world_size-th example of each batch (its share: in-batch negatives are those of its share), and the ranks' gradients
are averaged before each optimizer step, so every rank takes the same step. Rank 0 alone evaluates and writes
checkpoints and the model. One process alone (no torchrun) is one rank of one, and nothing here does anything."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..corpus.torchrun import launched


class Ranks:
    """This process's rank in the launch, and what the trainer asks of the others."""

    def __init__(self, device: str | None):
        self.rank, self.world_size, self.device = 0, 1, device
        if not launched():
            return
        import torch.distributed as dist

        self.dist = dist
        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            self.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device and self.device.startswith("cuda") else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def first(self) -> bool:
        return self.rank == 0

    def share(self, batch: Sequence) -> list:
        """This rank's examples of a batch."""
        return list(batch[self.rank :: self.world_size])

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Each parameter's gradient replaced by its mean over the ranks (a rank with no share contributes zeros)."""
        if self.world_size == 1:
            return
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.dist.all_reduce(p.grad)
            p.grad /= self.world_size

    def average(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            self.dist.all_reduce(value)
            value /= self.world_size
        return value

    def wait(self) -> None:
        """Until every rank is here (while rank 0 writes)."""
        if self.world_size > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            self.dist.destroy_process_group()
