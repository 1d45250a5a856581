"""The ranks of a torchrun launch as one corpus engine: each rank indexes its share of the input files, the ranks
share the plan, then each takes the next unclaimed shard from a counter in torchrun's store until none is left, so a
slow rank holds up the run by one shard at most. Rank 0 writes the manifest once every rank is done.

A lost rank ends the launch; `torchrun --max-restarts N` restarts every rank, and the restarted run resumes from the
shards already written (a restart uses a fresh counter, so no shard is skipped).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta

import torch

TIMEOUT = timedelta(hours=24)  # of a collective: a rank waits while the others index their files (see Group)


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Group:
    """This process's rank in the launch (one GPU per rank on GPUs), with the methods the engine calls (the same as
    job.Solo's).

    The ranks exchange only Python objects (the indexes of the input files, the state of the output folder) and
    counters in the store, never tensors, so the process group is gloo on every device: under NCCL an object
    collective would stage each object through GPU memory and wait, under NCCL's timeout and watchdog, while the
    other ranks still index their files. The timeout covers the indexing of a rank's share of the input, however
    large; a lost rank ends the launch anyway (torchrun stops the others)."""

    def __init__(self, device: str | None = None):
        import torch.distributed as dist

        self.dist = dist
        cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        dist.init_process_group("gloo", timeout=TIMEOUT)
        self.device = device or "cpu"
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.store = dist.distributed_c10d._get_default_store()  # the launch's key-value store
        self.run = f"qwen3_embed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.rounds = 0

    def map(self, fn, items: list) -> list:
        """fn of every item, each rank computing every world_size-th one."""
        mine = {i: fn(item) for i, item in enumerate(items) if i % self.world_size == self.rank}
        parts = [None] * self.world_size
        self.dist.all_gather_object(parts, mine)
        results = {i: result for part in parts for i, result in part.items()}
        return [results[i] for i in range(len(items))]

    def broadcast(self, value):
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def claims(self, n: int) -> Iterator[int]:
        """Shard indices 0..n-1, each handed to exactly one rank, in the order the ranks ask."""
        self.rounds += 1
        key = f"{self.run}/claims/{self.rounds}"
        while (k := self.store.add(key, 1) - 1) < n:
            yield k

    def wait_for_all(self, counts: dict[str, int]) -> dict[str, int]:
        """Once every rank has finished its shards, the sum of every rank's counts on rank 0 (the others return at
        once). A poll of the store, not a barrier, so that no collective times out while the last shards finish."""
        key = f"{self.run}/done/{self.rounds}"
        for name, count in counts.items():
            self.store.add(f"{key}/{name}", count)
        self.store.add(key, 1)
        while self.rank == 0 and self.store.add(key, 0) < self.world_size:
            time.sleep(0.2)
        return {name: self.store.add(f"{key}/{name}", 0) for name in counts}

    def close(self) -> None:
        self.dist.destroy_process_group()
