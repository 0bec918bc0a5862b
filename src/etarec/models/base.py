"""The frame every model shares, and the contract that trains, evaluates, serves and exports it.

A model scores candidates for users. It is split where serving splits the work:

    side = model.user_side(history, shared)        # depends on the user and the history only
    logits = model.candidate_logits(side, items, categories)   # [N, C] for C candidates per row

The user side embeds the user features, projects the short window for attention and lets the
long interest prepare what it needs (signatures, projected keys, a pooled vector). The candidate
side selects from the long window for each candidate, attends and runs the head. `forward(batch)`
is the candidate side with one candidate per row (the sample's target), so training, evaluation,
the Scorer and the ONNX graph all run this one code; only `shared` changes how the work is laid
out, never the result:

    shared=False  one candidate per history row (training, evaluation): only the behaviours a
                  candidate retrieves are embedded, with gradient, so only they learn
    shared=True   many candidates per history row (a request): the whole window is embedded and
                  projected once, each candidate gathers its rows

Head input: [user features, candidate, long interest, short interest] -> MLP -> logit.
Shapes: N history rows, C candidates per row, L long window, S short window, K = top_k,
P = attention projection width, A = attention_dim, Dq = item_dim, Db = behaviour_dim.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.data.batch import Batch, UserHistory
from etarec.nn.attention import TargetAttention, target_attention
from etarec.nn.embeddings import TIME_BUCKETS, Embeddings, FeatureEmbeddings, Vocab, time_bucket
from etarec.nn.mlp import MLP


@dataclass
class Candidates:
    """C candidate items for each of N history rows."""

    items: torch.Tensor  # [N, C] int64
    categories: torch.Tensor  # [N, C] int64
    vectors: torch.Tensor  # [N, C, Dq] their embeddings: the attention queries


@dataclass
class UserSide:
    """What the candidates of a history row share, computed once per row."""

    history: UserHistory  # [N, L] the window the model looks at
    user: torch.Tensor  # [N, Du] user features
    short: torch.Tensor | None  # [N, S, P] projected short window (None: no short-window attention)
    short_mask: torch.Tensor | None  # [N, S]
    long: Any  # the long interest's own part (its user_side())
    shared: bool  # many candidates per row (see InterestModel.user_side)
    cache: ItemCache | None = None
    ready: bool = False  # short and long are made (at once when shared, with the candidate otherwise)


class ItemCache:
    """What a model derives from item embeddings alone (ETA: SimHash signatures), kept while the
    weights do not change. Evaluation and serving own one (`model.item_cache()`); training has none."""

    def fill(self, items: torch.Tensor, categories: torch.Tensor) -> None:
        """Compute the entries of items [V] (categories [V]) now."""
        raise NotImplementedError

    def fill_catalog(self, item_categories: torch.Tensor) -> None:
        """Compute every item's entry now, item_categories [V] giving each item's category: the
        Scorer at load, evaluation before its passes (which then only read the cache)."""
        self.fill(torch.arange(len(item_categories), device=item_categories.device), item_categories)


class LongInterest(nn.Module):
    """How a model forms its long interest from the long window: the one part models differ in."""

    def user_side(self, embeddings: Embeddings, history: UserHistory, shared: bool, cache: ItemCache | None) -> Any:
        """Per-history work shared by all candidates of a row (None when there is none)."""
        return None

    def forward(self, embeddings: Embeddings, history: UserHistory, side: Any, candidates: Candidates) -> torch.Tensor:
        """-> [N, C, width] the long interest of each candidate"""
        raise NotImplementedError

    def item_cache(self, embeddings: Embeddings) -> ItemCache | None:
        return None


class Selector(nn.Module):
    """Chooses, for each candidate, top_k behaviours of the long window (retrieval/ has the
    contract: index and found [N, C, K], best first, ties to the more recent, padding never chosen)."""

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k

    def user_side(self, embeddings: Embeddings, history: UserHistory, shared: bool, cache: ItemCache | None) -> Any:
        return None

    def forward(self, embeddings: Embeddings, history: UserHistory, side: Any,
                candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def item_cache(self, embeddings: Embeddings) -> ItemCache | None:
        return None


@dataclass
class _RetrievalSide:
    selection: Any  # the selector's user side
    projected: torch.Tensor | None  # [N, L, P] the whole window projected for attention (shared only)


class RetrievedAttention(LongInterest):
    """Long interest = target attention over the k behaviours selected for each candidate.

    Selection runs without gradient; the chosen behaviours are embedded again with gradient, so only
    they learn from the long-interest path (shared=True gathers rows projected once instead: the
    same numbers, no gradient needed in serving). The selector is a part passed in; a model whose
    selection needs the attention itself (TWIN) overrides prepare_selection() and select()."""

    def __init__(self, selector: Selector | None, attention: TargetAttention):
        super().__init__()
        self.selector = selector
        self.attention = attention

    @classmethod
    def configured(cls, selector: Selector, config: ModelConfig, embeddings: Embeddings) -> "RetrievedAttention":
        """The selector with the configured attention (model.attention) from item to behaviour space."""
        return cls(selector, target_attention(config, embeddings.item_dim, embeddings.behaviour_dim))

    def prepare_selection(self, embeddings, history: UserHistory, shared: bool, cache: ItemCache | None,
                          projected: torch.Tensor | None) -> Any:
        return self.selector.user_side(embeddings, history, shared, cache)

    def select(self, embeddings, history: UserHistory, selection: Any,
               candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [N, C, K], found [N, C, K]) positions in the window, best first"""
        return self.selector(embeddings, history, selection, candidates)

    def user_side(self, embeddings, history, shared, cache) -> _RetrievalSide:
        projected = None
        if shared:
            projected = self.attention.project(embeddings.behaviours(*history.behaviour_columns()))  # [N, L, P]
        return _RetrievalSide(self.prepare_selection(embeddings, history, shared, cache, projected), projected)

    def forward(self, embeddings, history, side: _RetrievalSide, candidates: Candidates) -> torch.Tensor:
        index, found = self.select(embeddings, history, side.selection, candidates)  # [N, C, K]
        n, c, k = index.shape
        if side.projected is None:
            rows = history if c == 1 else repeat_rows(history, c)
            retrieved = embeddings.behaviours(*rows.gather(index.reshape(n * c, k)))  # [N*C, K, Db]
            projected = self.attention.project(retrieved)  # [N*C, K, P]
        else:
            length = history.length
            flat = index + (torch.arange(n, device=index.device) * length)[:, None, None]  # rows of projected
            # embedding() copies whole rows: 3-5x faster than indexing for this gather
            projected = nn.functional.embedding(flat, side.projected.flatten(0, 1)).flatten(0, 1)  # [N*C, K, P]
        query = candidates.vectors.reshape(n * c, 1, -1)  # [N*C, 1, Dq]
        return self.attention.attend(query, projected, found.reshape(n * c, k)).view(n, c, -1)  # [N, C, A]

    def item_cache(self, embeddings) -> ItemCache | None:
        return self.selector.item_cache(embeddings) if self.selector is not None else None


def repeat_rows(history: UserHistory, times: int) -> UserHistory:
    """Each row `times` times in a row: [N, L] -> [N * times, L]"""
    return UserHistory(*(column.repeat_interleave(times, dim=0) for column in
                         (history.user, history.user_profile, *history.behaviour_columns())))


class InterestModel(nn.Module):
    """The frame: embeddings, target attention over the short window, the long interest, the head.

    A model file calls super().__init__ with its long interest's width, then sets
    self.long_interest (left None: no long interest, as DIN). The long interest is created after
    the shared layers, so one seed gives every model the same embeddings, short attention and head.
    """

    def __init__(self, config: ModelConfig, vocab: Vocab, long_width: int, short_attention: bool = True):
        super().__init__()
        self.long_len, self.short_len, self.top_k = config.long_len, config.short_len, config.top_k
        self.time_origin = config.time_origin
        self.embeddings: Embeddings = FeatureEmbeddings(config, vocab)
        e = self.embeddings
        self.short_attention = target_attention(config, e.item_dim, e.behaviour_dim) if short_attention else None
        short_width = config.attention_dim if short_attention else 0
        recency_width = config.embedding_dim if config.time_in == "user" else 0  # (validation: use_time is on)
        self.head = MLP(e.user_dim + recency_width + e.item_dim + long_width + short_width, config.mlp, 1,
                        config.activation, config.dropout)
        # time_in=user: how long before the request the user last acted, one more user feature (a
        # dense table of 33 rows: bucketed like the behaviours' gaps); made after the head, so the
        # embeddings and the short attention draw their initial weights as without it
        self.recency = nn.Embedding(TIME_BUCKETS, config.embedding_dim, padding_idx=0) if recency_width else None
        self.long_interest: LongInterest | None = None

    @property
    def inputs(self) -> frozenset[str]:
        """The optional history columns this model reads (BatchBuilder builds only those)."""
        e = self.embeddings
        reads_time = e.uses_time or self.recency is not None
        return frozenset({"actions"} if e.uses_action else set()) | frozenset({"time_gaps"} if reads_time else set())

    def forward(self, batch: Batch, cache: ItemCache | None = None) -> torch.Tensor:
        """[B] logits of each sample's target, given its history."""
        side = self.user_side(batch.user_history(), shared=False, cache=cache)
        return self.candidate_logits(side, batch.target_item[:, None], batch.target_category[:, None])[:, 0]

    def user_side(self, history: UserHistory, shared: bool, cache: ItemCache | None = None) -> UserSide:
        """The work of history rows [N, L] that their candidates share. Any L works: the model looks
        at the most recent long_len behaviours; a shared (request) window goes behind enough padding
        columns for top-k and the short window, which padding never wins."""
        pad = max(self.top_k, self.short_len, 1)
        if shared or history.length < pad:
            history = history.window(self.long_len, pad)
        elif history.length > self.long_len:
            history = history.window(self.long_len)
        if self.time_origin == "last_behaviour":
            history = history.gaps_from_last()
        side = UserSide(history, self.user_features(history), None, None, None, shared, cache)
        # one candidate per row shares nothing: its row's work waits for the candidate (candidate_logits),
        # so the embeddings are used in the order target, long, short, and their gradients sum in it
        return self.prepared(side) if shared else side

    def user_features(self, history: UserHistory) -> torch.Tensor:
        """[N, Du (+ d with time_in=user)] the user's embeddings, and how long they have been away"""
        user = self.embeddings.users(history.user, history.user_profile)
        if self.recency is None:
            return user
        away = self.recency(time_bucket(history.time_gaps[:, -1], history.mask[:, -1]))  # [N, d]; 0: no history
        return torch.cat([user, away], dim=-1)

    def prepared(self, side: UserSide) -> UserSide:
        """The side with its short window projected and the long interest's own part made
        (user_side() returns it so when shared; otherwise candidate_logits() makes it)."""
        e, history = self.embeddings, side.history
        short = short_mask = long = None
        if self.long_interest is not None:
            long = self.long_interest.user_side(e, history, side.shared, side.cache)
        if self.short_attention is not None:
            start = history.length - self.short_len  # the short window: the last S columns
            short_columns = [column[:, start:] for column in history.behaviour_columns()]
            short, short_mask = self.short_attention.project(e.behaviours(*short_columns)), short_columns[-1]
        return dataclasses.replace(side, short=short, short_mask=short_mask, long=long, ready=True)

    def candidate_logits(self, side: UserSide, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """Candidates [N, C] (ids, categories) of each history row -> logits [N, C]. Candidates are
        independent: a caller may split C into chunks."""
        n, c = items.shape
        candidates = Candidates(items, categories, self.embeddings.items(items, categories))  # vectors [N, C, Dq]
        if not side.ready:
            side = self.prepared(side)
        parts = [side.user[:, None, :].expand(n, c, -1), candidates.vectors]
        if self.long_interest is not None:
            parts.append(self.long_interest(self.embeddings, side.history, side.long, candidates))  # [N, C, width]
        if self.short_attention is not None:
            parts.append(self.short_attention.attend(candidates.vectors, side.short, side.short_mask))  # [N, C, A]
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)

    @torch.no_grad()
    def retrieve(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [B, K], found [B, K]): the window positions the long interest selects for each
        sample's target, best first (retrieval models only: what their attention sees)."""
        if not isinstance(self.long_interest, RetrievedAttention):
            raise TypeError(f"{type(self).__name__} selects no behaviours from its long window")
        side = self.prepared(self.user_side(batch.user_history(), shared=False))
        items, categories = batch.target_item[:, None], batch.target_category[:, None]
        candidates = Candidates(items, categories, self.embeddings.items(items, categories))
        index, found = self.long_interest.select(self.embeddings, side.history, side.long.selection, candidates)
        return index[:, 0], found[:, 0]

    def item_cache(self) -> ItemCache | None:
        """A fresh cache for the current weights (None for models that derive nothing per item)."""
        return self.long_interest.item_cache(self.embeddings) if self.long_interest is not None else None
