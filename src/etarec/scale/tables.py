"""The sparse part split over processes: FeatureEmbeddings' tables as one TorchRec
EmbeddingCollection under DistributedModelParallel, the dense part data-parallel (DDP).

How a step runs on each of N processes:

    fetch(batch)   one TorchRec lookup of the batch's distinct ids per table: the ids go to the
                   processes owning their rows (all-to-all), rows come back  -> per table [U, d]
    model(batch)   every items() / behaviours() / users() call reads those rows locally, so the
                   model runs unchanged and the number of collectives per step is fixed (one)
    backward       row gradients flow back to the owners through TorchRec's all-to-all and land
                   on the owner's shard: a plain nn.Parameter over the shard's storage, updated
                   by the same Adam (or SparseAdam) as the dense tables, so N processes train
                   what one process trains with dense tables

TorchRec's own CPU kernels update tables inside the backward pass (fused) and offer no Adam on
the CPU (fbgemm: SGD and Adagrad only), so the shard kernels' forward is replaced by a plain
embedding lookup on the same storage: TorchRec still plans, shards, routes ids and rows, and
keeps the state dict (ShardedTensor per table); torch.optim does the update.

Small tables (at most WHOLE_TABLE_ROWS rows: actions, time buckets, profile values) are fetched
whole every step instead of by the batch's ids.
"""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from etarec.nn.embeddings import Embeddings, FeatureEmbeddings, time_bucket

WHOLE_TABLE_ROWS = 4096
SHARDING_TYPES = {"row_wise": ["row_wise"], "table_wise": ["table_wise"],
                  "planner": ["row_wise", "table_wise", "column_wise"]}


def dense_tables(dense: FeatureEmbeddings) -> dict[str, tuple[nn.Embedding, bool]]:
    """name -> (FeatureEmbeddings' table, whether row 0 is padding), in FeatureEmbeddings' order."""
    tables = {"item": dense.item, "category": dense.category}
    if dense.action is not None:
        tables["action"] = dense.action
    if dense.time_gap is not None:
        tables["time_gap"] = dense.time_gap
    if dense.user is not None:
        tables["user"] = dense.user
    tables.update({f"profile_{i}": table for i, table in enumerate(dense.profiles)})
    return {name: (table, table.padding_idx is not None) for name, table in tables.items()}


def dense_key(name: str) -> str:
    """A table's weight key in a FeatureEmbeddings state dict: profile_1 -> profiles.1.weight"""
    return f"profiles.{name.removeprefix('profile_')}.weight" if name.startswith("profile_") else f"{name}.weight"


class ShardedEmbeddings(Embeddings):
    """The Embeddings interface over a TorchRec EmbeddingCollection; lookups read the rows that
    fetch() brought for the current batch."""

    def __init__(self, dense: FeatureEmbeddings):
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        for name in ("item_dim", "behaviour_dim", "user_dim", "num_items", "num_profiles", "uses_time",
                     "uses_action", "uses_user"):
            setattr(self, name, getattr(dense, name))
        tables = dense_tables(dense)
        self.padded = {name for name, (_, padded) in tables.items() if padded}
        self.rows = {name: table.num_embeddings for name, (table, _) in tables.items()}
        self.sparse = dense.item.sparse
        # meta: no memory and no random draws here; the shards get their rows in ShardedModel
        self.collection = EmbeddingCollection(
            tables=[EmbeddingConfig(name=name, num_embeddings=table.num_embeddings, embedding_dim=table.embedding_dim,
                                    feature_names=[name], init_fn=nn.init.zeros_) for name, (table, _) in tables.items()],
            device=torch.device("meta"))
        self.initial = {name: table.weight.detach() for name, (table, _) in tables.items()}  # until sharded
        self.fetched: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (sorted ids [U], rows [U, d])

    def fetch(self, user: torch.Tensor, items: torch.Tensor, categories: torch.Tensor) -> None:
        """One lookup of every row the next forward pass may read: user [N], items [M], categories [M]."""
        from torchrec import KeyedJaggedTensor

        zero = items.new_zeros(1)  # padding: windows are padded on the left
        wanted = {"item": torch.cat([items, zero]), "category": torch.cat([categories, zero]), "user": user}
        ids = []
        for name, rows in self.rows.items():
            if rows <= WHOLE_TABLE_ROWS:
                ids.append(torch.arange(rows, device=items.device))
            else:
                ids.append(torch.unique(wanted[name]))  # sorted
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=list(self.rows), values=torch.cat(ids),
            lengths=torch.tensor([len(i) for i in ids], dtype=torch.int64, device=items.device))  # one bag per table
        found = self.collection(features)
        self.fetched = {}
        for name, table_ids in zip(self.rows, ids):
            vectors = found[name].values()  # [U, d]
            if name in self.padded:  # padding reads zeros and passes no gradient, as padding_idx does
                vectors = vectors * (table_ids != 0).to(vectors.dtype)[:, None]
            self.fetched[name] = (table_ids, vectors)

    def lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """[...] ids -> [..., d] from the fetched rows"""
        table_ids, vectors = self.fetched[name]
        ids = ids.to(table_ids.dtype)
        position = torch.searchsorted(table_ids, ids).clamp(max=len(table_ids) - 1)
        if not torch.equal(table_ids[position], ids):
            raise RuntimeError(f"{name} ids outside the fetched batch: call fetch() with every id the forward reads")
        return F.embedding(position, vectors)

    def items(self, items, categories):
        return torch.cat([self.lookup("item", items), self.lookup("category", categories)], dim=-1)

    def behaviours(self, items, categories, actions, time_gaps, mask):
        return torch.cat([self.lookup(name, ids) for name, ids in self._columns(items, categories, actions, time_gaps, mask)], dim=-1)

    def cross(self, actions, time_gaps, mask):
        parts = [self.lookup(name, ids) for name, ids in self._columns(None, None, actions, time_gaps, mask)[2:]]
        return torch.cat(parts, dim=-1) if parts else actions.new_zeros((*actions.shape, 0), dtype=torch.float32)

    def behaviour_mean(self, items, categories, actions, time_gaps, mask):
        weights = mask.to(torch.float32) / mask.sum(1, keepdim=True).clamp(min=1)  # [N, L]
        parts = []
        for name, ids in self._columns(items, categories, actions, time_gaps, mask):
            table_ids, vectors = self.fetched[name]
            position = torch.searchsorted(table_ids, ids.to(table_ids.dtype)).clamp(max=len(table_ids) - 1)
            parts.append(F.embedding_bag(position, vectors, per_sample_weights=weights, mode="sum"))
        return torch.cat(parts, dim=-1)

    def users(self, users, profiles):
        parts = [self.lookup("user", users)] if self.uses_user else []
        parts += [self.lookup(f"profile_{i}", profiles[:, i]) for i in range(self.num_profiles)]
        return torch.cat(parts, dim=-1) if parts else users.new_zeros((len(users), 0), dtype=torch.float32)

    def _columns(self, items, categories, actions, time_gaps, mask) -> list[tuple[str, torch.Tensor]]:
        """The tables of a behaviour's parts in behaviour order (FeatureEmbeddings' order), each with its ids."""
        columns = [("item", items), ("category", categories)]
        if self.uses_action:
            columns.append(("action", actions))
        if self.uses_time:
            columns.append(("time_gap", time_bucket(time_gaps, mask)))
        return columns


class FetchingModel(nn.Module):
    """The model behind one fetch per forward pass: what DistributedModelParallel wraps and what
    evaluation calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, cache=None) -> torch.Tensor:
        self.model.embeddings.fetch(batch.user, torch.cat([batch.history_items.flatten(), batch.target_item]),
                                    torch.cat([batch.history_categories.flatten(), batch.target_category]))
        return self.model(batch, cache)

    def item_cache(self):
        return self.model.item_cache()

    @property
    def inputs(self) -> frozenset[str]:
        return self.model.inputs


@dataclass
class Shard:
    """One table's rows held here: rows [n, c] are the table's [row:row+n, column:column+c]."""

    table: str
    rows: nn.Parameter
    row: int
    column: int


def shard_model(model: nn.Module, world_size: int, device: torch.device, sharding: str):
    """Replace model.embeddings (FeatureEmbeddings) by ShardedEmbeddings split over the process
    group. Returns (FetchingModel, DistributedModelParallel over it, this process's Shards).
    The shards start from the dense tables' weights, so a run starts where a dense run starts."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbedding
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    import torch.distributed as dist

    from torchrec.distributed import comm_ops

    logging.getLogger("torchrec").setLevel(logging.ERROR)  # planner reports and notices on every rank
    # the owner of a row receives every process's gradient of it; TorchRec's all-to-all divides them
    # by the number of processes on the way back, so the rows get the mean, as DDP gives the dense part
    comm_ops.set_gradient_division(True)
    sparse = model.embeddings.item.sparse
    model.embeddings = ShardedEmbeddings(model.embeddings)
    fetching = FetchingModel(model)
    # the fused kernel's own update never runs (its forward is replaced below); EXACT_SGD keeps no state
    sharders = [EmbeddingCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0})]
    constraints = {name: ParameterConstraints(sharding_types=SHARDING_TYPES[sharding], compute_kernels=["fused"])
                   for name in model.embeddings.rows}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device=device.type),
                                       constraints=constraints)
    plan = planner.collective_plan(fetching, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(fetching, device=device, plan=plan, sharders=sharders)
    shards = []
    collection = model.embeddings.collection  # now TorchRec's ShardedEmbeddingCollection
    for lookup in collection._lookups:  # one per sharding type; its kernels are not submodules of the collection
        for kernel in lookup.modules():
            if isinstance(kernel, BatchedFusedEmbedding):
                shards += _plain_lookup(kernel, sparse)
    initial = model.embeddings.initial
    with torch.no_grad():
        for shard in shards:
            if initial[shard.table].is_meta:  # a model built on the meta device: the shards stay zero
                continue
            n, c = shard.rows.shape
            shard.rows.copy_(initial[shard.table][shard.row:shard.row + n, shard.column:shard.column + c])
    model.embeddings.initial = {}
    return fetching, dmp, shards


def _plain_lookup(kernel, sparse: bool) -> list[Shard]:
    """Give a TorchRec shard kernel a plain embedding forward over Parameters that share its
    weights' storage (what its state dict reads)."""
    tables = kernel.config.embedding_tables
    shards = [Shard(table.name, nn.Parameter(weight.detach()), *table.local_metadata.shard_offsets[:2])
              for table, weight in zip(tables, kernel.split_embedding_weights())]
    table_of_feature = list(kernel._feature_table_map)

    def forward(self, features):
        parts = [F.embedding(ids.to(torch.int64), shards[table].rows, sparse=sparse)
                 for ids, table in zip(features.values().split(features.length_per_key()), table_of_feature)]
        return torch.cat(parts)

    kernel.forward = types.MethodType(forward, kernel)
    return shards


def table_tensors(fetching: FetchingModel) -> dict:
    """name -> the table's ShardedTensor (this process's shards are the Shards' storage)."""
    state = fetching.model.embeddings.collection.state_dict()
    return {key.removeprefix("embeddings.").removesuffix(".weight"): value for key, value in state.items()}


def like_tables(fetching: FetchingModel, shards: list[Shard], tensors: dict[int, torch.Tensor]) -> dict:
    """ShardedTensors laid out as the tables, over other per-shard tensors (e.g. Adam's moments):
    tensors maps id(shard.rows) -> a tensor of the shard's shape."""
    from torch.distributed._shard.sharded_tensor import Shard as TensorShard, ShardedTensor

    by_storage = {shard.rows.data_ptr(): tensors[id(shard.rows)] for shard in shards}
    out = {}
    for name, table in table_tensors(fetching).items():
        local = [TensorShard(by_storage[part.tensor.data_ptr()], part.metadata) for part in table.local_shards()]
        out[name] = ShardedTensor._init_from_local_shards_and_global_metadata(local, table.metadata())
    return out


def plain_state_dict(fetching: FetchingModel, main: bool) -> dict | None:
    """The model's state dict as FeatureEmbeddings would hold it (whole tables), on rank 0; None on
    the others. Collective: every process calls it."""
    tables = table_tensors(fetching)
    full = {}
    for name, table in tables.items():
        out = torch.empty(table.size(), dtype=table.dtype) if main else None
        table.gather(dst=0, out=out)
        full[f"embeddings.{dense_key(name)}"] = out
    if not main:
        return None
    state = {}
    for key, value in fetching.model.state_dict().items():
        if key.startswith("embeddings.collection."):
            continue
        state[key] = value
    state.update(full)
    return state


def load_plain_state_dict(fetching: FetchingModel, shards: list[Shard], state: dict) -> None:
    """Load a plain (FeatureEmbeddings) state dict: each process copies its shards' rows."""
    with torch.no_grad():
        for shard in shards:
            full = state[f"embeddings.{dense_key(shard.table)}"]
            n, c = shard.rows.shape
            shard.rows.copy_(full[shard.row:shard.row + n, shard.column:shard.column + c])
    load_dense_state_dict(fetching, {key: value for key, value in state.items() if not key.startswith("embeddings.")})


def load_dense_state_dict(fetching: FetchingModel, state: dict) -> None:
    """Load everything but the tables (dense_state_dict's keys), module by module: TorchRec's
    collection refuses a state dict without its tables. RuntimeError when the keys do not fit."""
    used = set()
    for name, child in fetching.model.named_children():
        if name == "embeddings":
            continue
        prefix = f"{name}."
        part = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
        child.load_state_dict(part)
        used |= {prefix + key for key in part}
    if set(state) - used:
        raise RuntimeError(f"unexpected keys in the state dict: {sorted(set(state) - used)[:3]}")


def dense_state_dict(fetching: FetchingModel) -> dict:
    """The model's state without the sharded tables (the same on every process)."""
    return {key: value for key, value in fetching.model.state_dict().items()
            if not key.startswith("embeddings.collection.")}


def dense_parameters(fetching: FetchingModel) -> list[nn.Parameter]:
    """The parameters outside the tables (TorchRec lists the tables' storage among the parameters too)."""
    return [p for name, p in fetching.named_parameters() if not name.startswith("model.embeddings.collection.")]
