"""The model's forward rearranged for requests: one user's history shared by C candidates.

The model's forward takes one history row per candidate, so scoring C candidates for one user
would embed, hash and project the same L behaviours C times. Here the user side (behaviour
embeddings, their attention projections, their signatures) runs once per request; per candidate
run only the retrieval, a gather of the retrieved projected rows, the attention and the head.
Attention projects each behaviour alone (nn/attention.py), so gathering projected rows equals
projecting gathered rows: the scores are the model's on the equivalent Batch.

Shapes: N requests (1 in the Scorer, any in the ONNX graph), C candidates, L behaviours, K = top_k,
P = attention projection width, m = hash bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.errors import EtarecError
from etarec.models.din import DIN
from etarec.models.eta import ETA
from etarec.models.full_attention import FullAttention
from etarec.serve.signs import history_keys, key_dtype, nearest, product_dtype, sign_vectors, unpack_signs


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [V, D], index [...] -> [..., D]; embedding() copies whole rows, 3-5x faster than table[index]."""
    return nn.functional.embedding(index, table)


@dataclass
class UserSide:
    """What a request's candidates share, computed once per request."""

    user: torch.Tensor  # [N, Du] user features
    short: torch.Tensor  # [N, S, P] projected short window
    short_mask: torch.Tensor  # [N, S]
    projected: torch.Tensor | None  # [N * L, P] projected long window, flat for one gather (None: no long interest)
    mask: torch.Tensor  # [N, L]
    signs: torch.Tensor | None  # [N, m, L] } the history half of the retrieval keys
    bias: torch.Tensor | None  # [N, 1, L]  } (see signs.history_keys)
    beyond: int = 0  # keys from here on belong to padding


class RequestModel(nn.Module):
    """logits [N, C] of C candidates per request, each request with its own history.

    item_category [num_items] (the catalog's) turns on the item cache of serving: embeddings and
    packed signatures of every item, computed once, so a request only gathers rows. Without it,
    items are embedded and hashed in the graph (the ONNX export), as the model does.
    """

    def __init__(self, model: nn.Module, config: ModelConfig, item_category: torch.Tensor | None = None):
        super().__init__()
        if type(model) not in (ETA, DIN, FullAttention):  # exact types: a subclass may form its interest otherwise
            raise EtarecError(f"serving supports eta, din and full_attention models, not '{config.name}'; "
                              "score this model with `etarec evaluate` instead")
        self.embeddings = model.embeddings
        self.short_attention = model.short_attention
        self.head = model.head
        self.long_attention = getattr(model, "long_attention", None)
        self.simhash = getattr(model, "simhash", None)
        self.top_k = config.top_k if self.simhash is not None else 0
        self.long_len, self.short_len = config.long_len, config.short_len
        # left padding so that top-k and the short window always find enough columns, whatever the
        # request's history length (padding never wins retrieval and attention ignores it)
        self.pad = max(self.top_k, self.short_len, 1)
        self.key_dtype = key_dtype(config.hash_bits, self.long_len + self.pad)
        self.cached = item_category is not None
        # the graph keeps float signs: onnxruntime has no fast bfloat16 product on CPU
        self.sign_dtype = product_dtype(config.hash_bits, self.key_dtype) if self.cached else self.key_dtype
        if self.cached:
            with torch.no_grad():
                vectors = self.embeddings.items(torch.arange(len(item_category)), item_category)  # [V, 2d]
                self.register_buffer("item_vectors", vectors, persistent=False)
                if self.simhash is not None:
                    self.register_buffer("item_codes", self.simhash(vectors), persistent=False)  # [V, W]

    def forward(self, user, user_profile, history_items, history_categories, history_actions, history_time_gaps,
                history_mask, candidate_items, candidate_categories) -> torch.Tensor:
        """Batch-like tensors ([N], [N, P], [N, L] x 5) and candidates [N, C] x 2 -> logits [N, C]."""
        side = self.user_side(user, user_profile, history_items, history_categories, history_actions,
                              history_time_gaps, history_mask)
        return self.candidate_logits(side, candidate_items, candidate_categories)

    def user_side(self, user, user_profile, history_items, history_categories, history_actions, history_time_gaps,
                  history_mask) -> UserSide:
        # the model sees the most recent long_len behaviours, right-aligned behind padding
        window = [column[:, -self.long_len:] for column in
                  (history_items, history_categories, history_actions, history_time_gaps, history_mask)]
        items, categories, actions, gaps, mask = [nn.functional.pad(column, (self.pad, 0)) for column in window]
        behaviours = self.embeddings.behaviours(items, categories, actions, gaps, mask)  # [N, L, Db]
        short_start = mask.shape[1] - self.short_len  # the model's short window: the last S columns
        side = UserSide(
            user=self.embeddings.users(user, user_profile),
            short=self.short_attention.project(behaviours[:, short_start:]),
            short_mask=mask[:, short_start:],
            projected=None, mask=mask, signs=None, bias=None,
        )
        if self.long_attention is not None:
            side.projected = self.long_attention.project(behaviours).flatten(0, 1)  # [N * L, P]
        if self.simhash is not None:
            side.signs, side.bias, side.beyond = history_keys(self._signs(items, categories), mask, self.key_dtype)
        return side

    def candidate_logits(self, side: UserSide, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """[N, C] candidate ids -> logits [N, C]. Callers may split C into chunks: rows are independent."""
        n, c = items.shape
        target = rows(self.item_vectors, items) if self.cached else self.embeddings.items(items, categories)  # [N, C, 2d]
        query = target.flatten(0, 1)  # [N * C, 2d]
        parts = [side.user[:, None, :].expand(n, c, -1), target]
        if side.projected is not None:
            index, found = self._select(side, items, categories, target)  # [N, C, K]
            length = side.mask.shape[1]
            flat = index + (torch.arange(n, device=index.device) * length)[:, None, None]  # rows of side.projected
            retrieved = rows(side.projected, flat)  # [N, C, K, P]
            parts.append(self.long_attention.attend(query, retrieved.flatten(0, 1), found.flatten(0, 1)).view(n, c, -1))
        short = side.short[:, None].expand(n, c, -1, -1).flatten(0, 1)  # [N * C, S, P]
        short_mask = side.short_mask[:, None].expand(n, c, -1).flatten(0, 1)  # [N * C, S]
        parts.append(self.short_attention.attend(query, short, short_mask).view(n, c, -1))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)

    def _select(self, side: UserSide, items, categories, target) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [N, C, K], found [N, C, K]): ETA's k nearest behaviours; full attention takes them all."""
        if self.simhash is None:
            n, c = items.shape
            length = side.mask.shape[1]
            index = torch.arange(length, device=items.device).expand(n, c, length)
            return index, side.mask[:, None, :].expand(n, c, length)
        signs = self._signs(items, categories, target)  # [N, C, m]
        return nearest(signs, side.signs, side.bias, side.beyond, self.top_k)

    def _signs(self, items, categories, vectors=None) -> torch.Tensor:
        """[...] items -> [..., m] +-1 SimHash signs: from the cache, or hashed from the embeddings."""
        if self.cached:
            return unpack_signs(rows(self.item_codes, items), self.simhash.bits, self.sign_dtype)
        if vectors is None:
            vectors = self.embeddings.items(items, categories)
        return sign_vectors(vectors, self.simhash.projection, self.sign_dtype)
