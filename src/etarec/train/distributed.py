"""One process or many: torch.distributed set up from torchrun's environment, and the few
collectives the trainer needs (a sum, a gather in sample order, a broadcast from rank 0).

Without torchrun (WORLD_SIZE unset or 1) the same `World` interface runs without a process group,
so the trainer has a single code path. The backend follows the device: nccl when CUDA is
available, gloo on CPU.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from etarec.data.batch import rank_share
from etarec.errors import EtarecError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes of this machine
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP over the model when there are several processes. find_unused_parameters stays off:
        every parameter of the models takes part in every forward pass, and DDP fails loudly on
        the next step if one does not."""
        if self.size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def local_batch(self, global_index: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's samples of a global batch and the factor on its loss sum.

        DDP averages the ranks' gradients, so a loss sum times size / len(global_index) on every
        rank gives the global batch's mean gradient, also when the parts differ in size by one.
        """
        local = rank_share(global_index, self.rank, self.size)
        if len(local):
            return local, self.size / len(global_index)
        # fewer samples than ranks (a short last batch): one sample with weight 0 keeps this rank
        # in DDP's gradient all-reduce
        return global_index[:1], 0.0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            value = value.to(self.device)
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather_shares(self, local: np.ndarray, total: int) -> np.ndarray:
        """Every rank's `rank_share` of `total` values, concatenated in rank order (= sample order).

        all_gather needs equal sizes, so shares are padded to the largest and trimmed after.
        """
        if self.size == 1:
            return local
        bounds = [r * total // self.size for r in range(self.size + 1)]
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        padded = torch.zeros(longest, dtype=torch.from_numpy(local).dtype, device=self.device)
        padded[: len(local)] = torch.from_numpy(local).to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: b - a] for part, a, b in zip(parts, bounds, bounds[1:])]).cpu().numpy()

    def all_gather_object(self, value: Any) -> list:
        if self.size == 1:
            return [value]
        gathered: list = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """compute() on rank 0, its result sent to every rank. An EtarecError on rank 0 is raised
        on every rank, so no rank waits forever for a result that never comes."""
        if self.size == 1:
            return compute()
        message = [None]
        if self.main:
            try:
                message = [("ok", compute())]
            except EtarecError as error:
                message = [("error", str(error))]
        dist.broadcast_object_list(message, src=0)
        kind, value = message[0]
        if kind == "error":
            raise EtarecError(value)
        return value


@contextmanager
def started() -> Iterator[World]:
    """The World of this process: from torchrun's RANK / WORLD_SIZE / LOCAL_RANK when present.

    Joins a process group the caller already set up; one created here is destroyed on exit.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)  # nccl's object collectives use the current device
    if size == 1:
        yield World(device=device)
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, device=device)
    finally:
        if created:
            dist.destroy_process_group()
