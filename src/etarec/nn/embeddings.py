"""The sparse part: embedding tables for items, categories, actions, time gaps and users.

Kept apart from the dense part so that a sharded engine can replace it later. An item is
represented as [item embedding, category embedding]; a behaviour adds its action and time gap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from etarec.config import ModelConfig
from etarec.data.batch import Batch

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


def time_bucket(gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[...] seconds -> [...] bucket ids; log-scaled because gaps span seconds to years."""
    minutes = gaps.clamp(min=0).to(torch.float32) / 60.0
    bucket = torch.log2(1.0 + minutes).floor().to(torch.int64).clamp(max=TIME_BUCKETS - 2) + 1
    return torch.where(mask, bucket, 0)


class FeatureEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__()
        d = config.embedding_dim
        sparse = config.sparse_embeddings
        self.item = nn.Embedding(vocab.num_items, d, padding_idx=0, sparse=sparse)
        self.category = nn.Embedding(vocab.num_categories, d, padding_idx=0, sparse=sparse)
        self.action = nn.Embedding(vocab.num_actions, d, padding_idx=0, sparse=sparse) if config.use_action else None
        self.time_gap = nn.Embedding(TIME_BUCKETS, d, padding_idx=0, sparse=sparse) if config.use_time else None
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
        self.behaviour_dim = self.item_dim + d * (self.action is not None) + d * (self.time_gap is not None)
        self.user_dim = d * (self.user is not None) + d * len(self.profiles)

    def items(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """[...] ids -> [..., 2d]"""
        return torch.cat([self.item(items), self.category(categories)], dim=-1)

    def behaviours(self, items: torch.Tensor, categories: torch.Tensor, actions: torch.Tensor,
                   time_gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, K] ids of behaviours -> [B, K, behaviour_dim]: [item, category | user-item features]"""
        columns = self._behaviour_columns(items, categories, actions, time_gaps, mask)
        return torch.cat([table(ids) for table, ids in columns], dim=-1)

    def cross(self, actions: torch.Tensor, time_gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, K] -> [B, K, behaviour_dim - item_dim]: the user-item part of behaviours (action, time gap)"""
        parts = [table(ids) for table, ids in self._behaviour_columns(None, None, actions, time_gaps, mask)[2:]]
        return torch.cat(parts, dim=-1) if parts else actions.new_zeros((*actions.shape, 0), dtype=torch.float32)

    def history_mean(self, batch: Batch) -> torch.Tensor:
        """[B, behaviour_dim]: the mean of the long window's real behaviours (zeros for an empty window).

        Summed table by table with embedding_bag instead of averaging history(): the [B, L,
        behaviour_dim] tensor is never built, 5x less time forward and backward at L = 1024.
        """
        mask = batch.history_mask
        weights = mask.to(torch.float32) / mask.sum(1, keepdim=True).clamp(min=1)  # [B, L]
        columns = self._behaviour_columns(batch.history_items, batch.history_categories, batch.history_actions,
                                          batch.history_time_gaps, mask)
        return torch.cat([F.embedding_bag(ids, table.weight, per_sample_weights=weights, mode="sum",
                                          sparse=table.sparse, padding_idx=table.padding_idx)
                          for table, ids in columns], dim=-1)

    def _behaviour_columns(self, items, categories, actions, time_gaps, mask) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """The tables of a behaviour's parts in behaviour order, each with its ids [B, K]."""
        columns = [(self.item, items), (self.category, categories)]
        if self.action is not None:
            columns.append((self.action, actions))
        if self.time_gap is not None:
            columns.append((self.time_gap, time_bucket(time_gaps, mask)))
        return columns

    def distinct_items(self, items: torch.Tensor, categories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [U], categories [U]) of the distinct real items among `items` [N] (categories [N]).

        A scatter into an item-indexed table instead of a sort (torch.unique sorts: 245 ms for
        256 x 16384 ids, one core). An item has one category and every real item has one >= 1
        (padding: 0), so the scatter both finds the distinct items and gives their categories.
        """
        category_of = torch.zeros(self.item.num_embeddings, dtype=categories.dtype, device=categories.device)
        category_of[items] = categories
        ids = torch.nonzero(category_of).squeeze(1)  # [U]
        return ids, category_of[ids]

    def target(self, batch: Batch) -> torch.Tensor:
        """[B, 2d] the candidate item"""
        return self.items(batch.target_item, batch.target_category)

    def history(self, batch: Batch, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded long-window behaviours at positions `index` [B, K] (the whole window when None).

        Returns (behaviours [B, K, behaviour_dim], mask [B, K]). Only the selected positions are
        embedded, so only they receive gradients.
        """
        columns = [batch.history_items, batch.history_categories, batch.history_actions,
                   batch.history_time_gaps, batch.history_mask]
        if index is not None:
            columns = [torch.gather(column, 1, index) for column in columns]
        return self.behaviours(*columns), columns[-1]

    def short_history(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(behaviours [B, S, behaviour_dim], mask [B, S]) of the most recent S behaviours"""
        return self.behaviours(batch.short(batch.history_items), batch.short(batch.history_categories),
                               batch.short(batch.history_actions), batch.short(batch.history_time_gaps),
                               batch.short(batch.history_mask)), batch.short(batch.history_mask)

    def user_features(self, batch: Batch) -> torch.Tensor:
        return self.users(batch.user, batch.user_profile)

    def users(self, users: torch.Tensor, profiles: torch.Tensor) -> torch.Tensor:
        """[B], [B, P] -> [B, user_dim] (width 0 when user features are off)"""
        parts = [self.user(users)] if self.user is not None else []
        parts += [table(profiles[:, i]) for i, table in enumerate(self.profiles)]
        return torch.cat(parts, dim=-1) if parts else users.new_zeros((len(users), 0), dtype=torch.float32)
