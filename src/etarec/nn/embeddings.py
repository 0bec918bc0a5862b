"""The sparse part: embedding tables for items, categories, actions, time gaps and users.

`Embeddings` is the interface every model uses; nothing outside an implementation reads its tables.
`FeatureEmbeddings` implements it with one nn.Embedding per feature on one process; a sharded
engine (tables split over processes) is a second implementation of the same methods.

An item is [item embedding, category embedding] (item_dim = 2d wide); a behaviour is the item plus
its user-item features, the action and the time gap (behaviour_dim). For example, with d = 16,
time and action on, no user features:

    embeddings.items(torch.tensor([[41, 12]]), torch.tensor([[3, 3]]))         # -> [1, 2, 32]
    embeddings.behaviours(items, categories, actions, time_gaps, mask)          # -> [1, 2, 64]
    embeddings.users(torch.tensor([7]), torch.zeros((1, 0), dtype=torch.int64))  # -> [1, 0]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from etarec.config import ModelConfig
from etarec.retrieval import native  # the CPU scatter of distinct_items is part of the compiled kernel
from etarec.retrieval.fast_path import cpu_fast_path
from etarec.retrieval.simhash import projected

TIME_BUCKETS = 33  # 0 = padding, 1 + floor(log2(1 + minutes)) capped at 32 (~8,000 years)


@dataclass(frozen=True)
class Vocab:
    """Table sizes, from the prepared data's meta.json (saved in checkpoints with the weights)."""

    num_users: int
    num_items: int
    num_categories: int
    num_actions: int
    profile_sizes: tuple[int, ...] = ()

    @classmethod
    def from_meta(cls, meta: dict) -> "Vocab":
        return cls(meta["num_users"], meta["num_items"], meta["num_categories"], meta["num_actions"],
                   tuple(meta["profile_vocab"].values()))


def behaviour_dim(config: ModelConfig) -> int:
    """A behaviour's width: the item (item and category embeddings) and the user-item features that are on."""
    return config.embedding_dim * (2 + config.use_action + gaps_in_behaviours(config))


def gaps_in_behaviours(config: ModelConfig) -> bool:
    """Whether each behaviour carries its time gap (use_time, unless time_in=user puts time in the user features)."""
    return config.use_time and config.time_in == "behaviours"


def time_bucket(gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[...] seconds -> [...] bucket ids; log-scaled because gaps span seconds to years."""
    minutes = gaps.clamp(min=0).to(torch.float32) / 60.0
    bucket = torch.log2(1.0 + minutes).floor().to(torch.int64).clamp(max=TIME_BUCKETS - 2) + 1
    return torch.where(mask, bucket, 0)


def category_of_items(items: torch.Tensor, categories: torch.Tensor, num_items: int) -> torch.Tensor:
    """items [N], categories [N] -> [num_items] int64: the category of each item among `items`,
    0 for the others. A scatter into an item-indexed table instead of a sort (torch.unique sorts:
    245 ms for 256 x 16384 ids, one core). An item has one category and every real item has one
    >= 1 (padding: 0), so the table both marks the distinct items and gives their categories."""
    if cpu_fast_path(items) and native.available():
        return native.category_of_native(items, categories, num_items)  # [V]
    category_of = torch.zeros(num_items, dtype=torch.int64, device=categories.device)
    category_of[items] = categories.to(torch.int64)
    return category_of


def distinct_items(items: torch.Tensor, categories: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [U], categories [U]) of the distinct real items among `items` [N] (categories [N]).

    On the CPU U is exact. On other devices the size may not depend on the data (reading the
    count would wait for the device on every step), so the ids come padded to the bound
    min(num_items, N) with the padding item 0 (category 0): callers hash or project item 0 too,
    which padding's zero embedding makes harmless, and retrieval never reads padding.
    """
    category_of = category_of_items(items, categories, num_items)
    ids = present_items(category_of, items.numel())
    return ids, category_of[ids]


def present_items(category_of: torch.Tensor, positions: int) -> torch.Tensor:
    """[num_items] table of category_of_items (over `positions` ids) -> the ids of the items in it
    [U]: exact on the CPU, padded with item 0 to min(num_items, positions) elsewhere (distinct_items)."""
    if category_of.device.type == "cpu":
        return torch.nonzero(category_of).squeeze(1)
    return torch.nonzero_static(category_of, size=min(len(category_of), positions), fill_value=0).squeeze(1)


class Embeddings(nn.Module):
    """What a model may ask of the sparse part. Widths are fixed at construction:
    item_dim (an item), behaviour_dim (a behaviour: item + user-item features), user_dim (user
    features, 0 when off); num_items (the item table's rows, padding and unknown included);
    num_profiles (user profile columns read, 0 when off); uses_time / uses_action / uses_user
    (which features are on; uses_time: behaviours carry their time gaps)."""

    item_dim: int
    behaviour_dim: int
    user_dim: int
    num_items: int
    num_profiles: int
    uses_time: bool
    uses_action: bool
    uses_user: bool
    # [num_items] the catalog's category of each item, where the caller knows the catalog (training
    # does: every event of an item carries that item's one category, data/encode.py), else None;
    # lets a model know an item's category without reading it from a window (ETA's code_table)
    item_categories: torch.Tensor | None = None

    def use_catalog(self, item_categories: torch.Tensor) -> None:
        """Remember the catalog's category of each item [num_items] (on the embeddings' device)."""
        if item_categories.shape != (self.num_items,):
            raise ValueError(f"the catalog has {len(item_categories)} items, the item table {self.num_items} rows")
        self.item_categories = item_categories.to(torch.int64)

    def items(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """[...] ids -> [..., item_dim]"""
        raise NotImplementedError

    def behaviours(self, items: torch.Tensor, categories: torch.Tensor, actions: torch.Tensor,
                   time_gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, K] ids of behaviours -> [N, K, behaviour_dim]: [item, category | user-item features]"""
        raise NotImplementedError

    def project_tables(self, item_projection: torch.Tensor,
                       category_projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every item row . item_projection [d, m] -> [num_items, m] and every category row .
        category_projection [d, m] -> [num_categories, m], in float32, without gradient; None
        where this process does not hold the whole tables (a sharded engine)."""
        return None

    def cross(self, actions: torch.Tensor, time_gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, K] -> [N, K, behaviour_dim - item_dim]: the user-item part of behaviours (action, time gap)"""
        raise NotImplementedError

    def behaviour_mean(self, items: torch.Tensor, categories: torch.Tensor, actions: torch.Tensor,
                       time_gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, L] behaviours -> [N, behaviour_dim]: the mean of the real ones (zeros when there are none)"""
        raise NotImplementedError

    def users(self, users: torch.Tensor, profiles: torch.Tensor) -> torch.Tensor:
        """[N], [N, P] -> [N, user_dim]"""
        raise NotImplementedError


class FeatureEmbeddings(Embeddings):
    """One nn.Embedding per feature, all on this process."""

    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__()
        d = config.embedding_dim
        sparse = config.sparse_embeddings
        self.item = nn.Embedding(vocab.num_items, d, padding_idx=0, sparse=sparse)
        self.category = nn.Embedding(vocab.num_categories, d, padding_idx=0, sparse=sparse)
        self.action = nn.Embedding(vocab.num_actions, d, padding_idx=0, sparse=sparse) if config.use_action else None
        self.time_gap = nn.Embedding(TIME_BUCKETS, d, padding_idx=0, sparse=sparse) if gaps_in_behaviours(config) else None
        self.user = nn.Embedding(vocab.num_users, d, sparse=sparse) if config.use_user_id else None
        self.profiles = nn.ModuleList(
            [nn.Embedding(size, d, sparse=sparse) for size in vocab.profile_sizes] if config.use_profile else []
        )
        if config.embedding_init_std is not None:
            # N(0, 1) rows move little under Adam's ~1e-3 steps in one epoch; small rows are shaped
            # by the data sooner
            for table in self.modules():
                if isinstance(table, nn.Embedding):
                    nn.init.normal_(table.weight, std=config.embedding_init_std)
                    if table.padding_idx is not None:
                        nn.init.zeros_(table.weight[table.padding_idx])
        self.item_dim = 2 * d
        self.behaviour_dim = behaviour_dim(config)
        self.user_dim = d * (self.user is not None) + d * len(self.profiles)
        self.num_items = vocab.num_items
        self.num_profiles = len(self.profiles)
        self.uses_time, self.uses_action, self.uses_user = self.time_gap is not None, config.use_action, config.use_user_id

    def items(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item(items), self.category(categories)], dim=-1)

    def project_tables(self, item_projection, category_projection):
        return (projected(self.item.weight.detach(), item_projection),
                projected(self.category.weight.detach(), category_projection))

    def behaviours(self, items, categories, actions, time_gaps, mask) -> torch.Tensor:
        columns = self._behaviour_columns(items, categories, actions, time_gaps, mask)
        return torch.cat([table(ids) for table, ids in columns], dim=-1)

    def cross(self, actions, time_gaps, mask) -> torch.Tensor:
        parts = [table(ids) for table, ids in self._behaviour_columns(None, None, actions, time_gaps, mask)[2:]]
        return torch.cat(parts, dim=-1) if parts else actions.new_zeros((*actions.shape, 0), dtype=torch.float32)

    def behaviour_mean(self, items, categories, actions, time_gaps, mask) -> torch.Tensor:
        """Summed table by table with embedding_bag: the [N, L, behaviour_dim] tensor is never
        built, 5x less time forward and backward at L = 1024."""
        weights = mask.to(torch.float32) / mask.sum(1, keepdim=True).clamp(min=1)  # [N, L]
        columns = self._behaviour_columns(items, categories, actions, time_gaps, mask)
        return torch.cat([F.embedding_bag(ids, table.weight, per_sample_weights=weights, mode="sum",
                                          sparse=table.sparse, padding_idx=table.padding_idx)
                          for table, ids in columns], dim=-1)

    def users(self, users: torch.Tensor, profiles: torch.Tensor) -> torch.Tensor:
        parts = [self.user(users)] if self.user is not None else []
        parts += [table(profiles[:, i]) for i, table in enumerate(self.profiles)]
        return torch.cat(parts, dim=-1) if parts else users.new_zeros((len(users), 0), dtype=torch.float32)

    def _behaviour_columns(self, items, categories, actions, time_gaps, mask) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """The tables of a behaviour's parts in behaviour order, each with its ids [N, K]."""
        columns = [(self.item, items), (self.category, categories)]
        if self.action is not None:
            columns.append((self.action, actions))
        if self.time_gap is not None:
            columns.append((self.time_gap, time_bucket(time_gaps, mask)))
        return columns
