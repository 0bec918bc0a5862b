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
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from etarec.config import Config, TrainConfig
from etarec.data.batch import rank_share
from etarec.errors import EtarecError
from etarec.train.optim import OptimizerGroup, adam, clip_gradients, make_optimizer, scale_gradients
from etarec.train import state as saved_state


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes of this machine
    device: torch.device = torch.device("cpu")
    # data by share (sharded tables): the global train sample ids this rank holds, increasing, in
    # the order of its train split; None: it holds the whole split
    train_ids: np.ndarray | None = None

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

        By share (train_ids set) the part is the samples of the global batch this rank holds, as
        positions in its own train split: the parts still cover the global batch, of any sizes.
        """
        if self.train_ids is not None:
            position = np.searchsorted(self.train_ids, global_index).clip(max=len(self.train_ids) - 1)
            local = position[self.train_ids[position] == global_index]
            stand_in = np.zeros(1, dtype=np.int64)  # its own first sample
        else:
            local = rank_share(global_index, self.rank, self.size)
            stand_in = global_index[:1]
        if len(local):
            return local, self.size / len(global_index)
        # none of the batch is here (a short last batch, or by share): one sample with weight 0
        # keeps this rank in the gradient all-reduce
        return stand_in, 0.0

    def max(self, value: int) -> int:
        return max(self.all_gather_object(value))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            value = value.to(self.device)
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather_by_id(self, ids: np.ndarray, local: np.ndarray, total: int) -> np.ndarray:
        """[total] values from every rank's (ids, local values) of a split held by share."""
        values = np.zeros(total, dtype=local.dtype)
        for part_ids, part in self.all_gather_object((ids, local)):
            values[part_ids] = part
        return values

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


class DataParallel:
    """Every process holds the whole model; DDP averages the gradients of its replicas."""

    collective_forward = False  # a forward pass talks to no other process

    def __init__(self, world: World):
        self.world = world

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model evaluation and checkpoints use (here: as built)."""
        return model

    def replica(self, model: nn.Module) -> nn.Module:
        """What the training steps call."""
        return self.world.wrap(model)

    def optimizer(self, model: nn.Module, config: TrainConfig) -> OptimizerGroup:
        return make_optimizer(model, config)

    def clip_gradients(self, model: nn.Module, max_norm: float) -> None:
        clip_gradients(list(model.parameters()), max_norm)

    def plain_state_dict(self, model: nn.Module) -> dict | None:
        """The weights as model.pt holds them (on rank 0; every rank calls this)."""
        return model.state_dict()

    def load_plain_state_dict(self, model: nn.Module, state: dict) -> None:
        model.load_state_dict(state)

    def save_state(self, folder: Path, config: Config, meta: dict, model: nn.Module, optimizer,
                   progress: saved_state.Progress) -> None:
        rngs = self.world.all_gather_object(saved_state.rng_states(self.world.device))  # every rank's own streams
        if self.world.main:
            saved_state.save_state(folder, config, meta, model.state_dict(), optimizer.state_dict(), rngs, progress)

    def restore(self, payload: dict, folder: Path, meta: dict, model: nn.Module, optimizer) -> saved_state.Progress:
        return saved_state.restore(payload, folder, meta, model, optimizer, self.world.rank, self.world.size,
                                   self.world.device)


def parallel_for(config: Config, world: World):
    """How the model is spread over the processes: DataParallel, or with model.embeddings:
    torchrec the tables split over them (etarec.scale, an optional extra)."""
    if config.model.embeddings == "dense":
        return DataParallel(world)
    return ShardedTables(world, config)


class _ShardedOptimizer(OptimizerGroup):
    """The dense part's optimizers (as make_optimizer builds them) and one over this process's
    table shards. state_dict() is the dense part's: the shards' moments are saved per shard."""

    def __init__(self, dense: OptimizerGroup, tables: torch.optim.Optimizer | None):
        super().__init__(dense.optimizers + ([tables] if tables is not None else []))
        self.dense, self.tables = dense, tables

    def step(self) -> None:
        if self.tables is not None:  # a shard no row of the batch lives in still steps, as a dense table would
            for group in self.tables.param_groups:
                for rows in group["params"]:
                    if rows.grad is None and not isinstance(self.tables, torch.optim.SparseAdam):
                        rows.grad = torch.zeros_like(rows)
        super().step()

    def state_dict(self) -> dict:
        return self.dense.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state)

    def moments(self, rows: torch.Tensor) -> dict:
        """Adam's state of one shard (zeros before its first step)."""
        state = self.tables.state[rows]
        if not state:
            sparse = isinstance(self.tables, torch.optim.SparseAdam)
            state.update(step=0 if sparse else torch.tensor(0.0), exp_avg=torch.zeros_like(rows),
                         exp_avg_sq=torch.zeros_like(rows))
        return state


class ShardedTables(DataParallel):
    """model.embeddings: torchrec: the embedding tables split over the processes by TorchRec
    (etarec.scale.tables), the rest data-parallel (DDP inside DistributedModelParallel).
    Checkpoints (model.pt) hold whole tables, gathered on rank 0: the plain format every command
    loads; the training state keeps them split (torch.distributed.checkpoint, one folder)."""

    collective_forward = True  # each forward pass fetches rows from the other processes

    def __init__(self, world: World, config: Config):
        from etarec.scale import require_torchrec

        require_torchrec()
        if not dist.is_initialized():  # one process: TorchRec still shards over a (one-member) group
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        super().__init__(world)
        self.sharding = config.model.sharding
        self.dmp: nn.Module | None = None
        self.shards: list = []

    def prepare(self, model: nn.Module) -> nn.Module:
        from etarec.scale.tables import shard_model

        fetching, self.dmp, self.shards = shard_model(model, self.world.size, self.world.device, self.sharding)
        return fetching

    def replica(self, model: nn.Module) -> nn.Module:
        return self.dmp

    def optimizer(self, model: nn.Module, config: TrainConfig) -> _ShardedOptimizer:
        rows = [shard.rows for shard in self.shards]
        tables = None
        if rows and model.model.embeddings.sparse:
            tables = torch.optim.SparseAdam(rows, lr=config.lr)
        elif rows:
            tables = adam(rows, config)
        from etarec.scale.tables import dense_parameters

        dense = OptimizerGroup([adam(dense_parameters(model), config)])
        return _ShardedOptimizer(dense, tables)

    def clip_gradients(self, model: nn.Module, max_norm: float) -> None:
        """clip_gradients over the whole model: the dense gradients are the same on every rank,
        the shards' are summed over the ranks."""
        def squares(parameters) -> torch.Tensor:
            total = torch.zeros(())
            for p in parameters:
                if p.grad is not None:
                    grad = p.grad.coalesce() if p.grad.is_sparse else p.grad
                    total = total + (grad.values() if grad.is_sparse else grad).pow(2).sum()
            return total

        from etarec.scale.tables import dense_parameters

        dense, rows = dense_parameters(model), [shard.rows for shard in self.shards]
        total = (squares(dense) + self.world.sum(squares(rows))).sqrt()
        scale_gradients([*dense, *rows], total, max_norm)

    def plain_state_dict(self, model: nn.Module) -> dict | None:
        from etarec.scale.tables import plain_state_dict

        return plain_state_dict(model, self.world.main)

    def load_plain_state_dict(self, model: nn.Module, state: dict) -> None:
        from etarec.scale.tables import load_plain_state_dict

        load_plain_state_dict(model, self.shards, state)

    def _shard_tensors(self, model: nn.Module, optimizer: _ShardedOptimizer) -> dict:
        from etarec.scale.tables import like_tables, table_tensors

        tensors = {"tables": table_tensors(model)}
        for moment in ("exp_avg", "exp_avg_sq"):  # keyed alike on every rank, also one holding no shard
            tensors[moment] = like_tables(model, self.shards, {id(shard.rows): optimizer.moments(shard.rows)[moment]
                                                               for shard in self.shards})
        return tensors

    def save_state(self, folder: Path, config: Config, meta: dict, model: nn.Module, optimizer,
                   progress: saved_state.Progress) -> None:
        from etarec.scale.tables import dense_state_dict

        world = self.world
        rngs = world.all_gather_object(saved_state.rng_states(world.device))
        steps = [float(optimizer.moments(shard.rows)["step"]) for shard in self.shards]
        table_step = world.max(max(steps, default=0.0))
        name = saved_state.shards_name(progress)
        saved_state.save_shards(folder, name, self._shard_tensors(model, optimizer), world.main, world.barrier)
        if world.main:
            saved_state.save_state(folder, config, meta, dense_state_dict(model), optimizer.state_dict(), rngs,
                                   progress, shards=name, table_step=table_step)
            saved_state.drop_old_shards(folder, keep=name)
        world.barrier()

    def restore(self, payload: dict, folder: Path, meta: dict, model: nn.Module, optimizer) -> saved_state.Progress:
        world = self.world
        saved_state.check_resumable(payload, folder, meta, world.size)
        if "shards" not in payload:
            raise EtarecError(f"{Path(folder) / saved_state.STATE_FILE} is the state of a run with dense tables; "
                              "resume it without model.embeddings: torchrec, or start a new run")
        from etarec.scale.tables import load_dense_state_dict

        try:
            load_dense_state_dict(model, payload["model"])
        except RuntimeError:
            raise EtarecError(f"{Path(folder) / saved_state.STATE_FILE} does not fit the model of its own config; "
                              "it was written by another etarec version, start the run again") from None
        optimizer.load_state_dict(payload["optimizer"])
        for shard in self.shards:
            moments = optimizer.moments(shard.rows)
            step = payload["table_step"]
            moments["step"] = int(step) if isinstance(optimizer.tables, torch.optim.SparseAdam) else torch.tensor(step)
        saved_state.load_shards(folder, payload["shards"], self._shard_tensors(model, optimizer))
        saved_state.set_rng_states(payload["rng"][world.rank], world.device)
        return saved_state.Progress(**payload["progress"])
