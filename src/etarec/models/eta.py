"""ETA (Chen et al., arXiv 2108.04468): SimHash top-k retrieval from the long window, end to end.

Per forward pass: hash the current embeddings of the candidate and of each distinct history item
with a fixed random projection, keep the k behaviours nearest in Hamming distance, and run target
attention over them and over the short window. Hashing runs without gradient; the retrieved
behaviours are embedded again with gradient, so only they (and the short window) learn from the
long-interest path.

Two layouts of the same retrieval (retrieval/ tests both against brute force):
    one candidate per row   packed codes, XOR + popcount (the fused CPU kernel)
    shared history          one product of +-1 signs for all C candidates (BLAS, ONNX MatMul + TopK)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from etarec.config import ModelConfig
from etarec.data.batch import UserHistory
from etarec.models.base import Candidates, InterestModel, ItemCache, RetrievedAttention, Selector
from etarec.nn.embeddings import Embeddings, Vocab, category_of_items, distinct_items, present_items
from etarec.retrieval import sign_product
from etarec.retrieval.simhash import SimHash, table_codes, table_hamming_top_k


# measured on the peer's workload (1e5 items, d = 32, 64 bits, 2 cores): hashing the whole table
# from its rows costs ~0.3 of gathering and hashing as many distinct items; see code_table
WHOLE_TABLE = 0.3
# and ~30x what marking one window position in the item-indexed table costs (~60 vs ~2 ns): from
# 30 positions per catalog item, counting the distinct items costs more than hashing them all
POSITIONS_PER_ITEM = 30


class SignatureCache(ItemCache):
    """Packed signatures [V, W] of the items hashed so far, on the embeddings' device. Valid while
    the weights stay as they were: evaluation makes one per checkpoint (each item hashed once),
    the Scorer fills it with the whole catalog at load."""

    def __init__(self, simhash: SimHash, embeddings: Embeddings):
        device = simhash.projection.device
        self.simhash, self.embeddings = simhash, embeddings
        self.codes = torch.zeros((embeddings.num_items, simhash.words), dtype=torch.int64, device=device)
        self.hashed = torch.zeros(embeddings.num_items, dtype=torch.bool, device=device)
        self.hashed[0] = True  # padding: retrieval masks it, so its code is never read

    @torch.no_grad()
    def fill(self, items: torch.Tensor, categories: torch.Tensor) -> None:
        self.codes[items] = self.simhash(self.embeddings.items(items, categories))
        self.hashed[items] = True

    @torch.no_grad()
    def fill_catalog(self, item_categories: torch.Tensor) -> None:
        """From the whole tables where this process holds them: no [V, item_dim] gather
        (1e5 items: 9 instead of 50-60 ms); the same bits as fill() (table_codes)."""
        d = self.simhash.split
        tables = None if d is None else \
            self.embeddings.project_tables(self.simhash.projection[:d], self.simhash.projection[d:])
        if tables is None:
            super().fill_catalog(item_categories)
            return
        self.codes = table_codes(*tables, item_categories)
        self.hashed[:] = True


@dataclass
class _SignatureSide:
    table: torch.Tensor | None  # [V, W] codes current for every item of the window (one candidate per row)
    cache: SignatureCache | None = None
    signs: torch.Tensor | None = None  # [N, m, L] } the history half of the sign-product keys
    bias: torch.Tensor | None = None  # [N, 1, L]  } (shared history, see retrieval/sign_product.py)
    beyond: int = 0


class SimHashNearest(Selector):
    """The k behaviours nearest to the candidate in Hamming distance of their SimHash signatures."""

    def __init__(self, item_dim: int, config: ModelConfig):
        super().__init__(config.top_k)
        # the projection draws from its own seeded generator, so it leaves the weights' draws alone;
        # an item is [item embedding | category embedding], projected part by part (see code_table)
        self.simhash = SimHash(item_dim, config.hash_bits, seed=config.hash_seed, split=config.embedding_dim)
        # the sort keys of the shared layout are exact in this float type up to the longest window
        self.key_dtype = sign_product.key_dtype(config.hash_bits, config.long_len + max(config.top_k, config.short_len, 1))

    def item_cache(self, embeddings: Embeddings) -> SignatureCache:
        return SignatureCache(self.simhash, embeddings)

    @torch.no_grad()
    def user_side(self, embeddings, history: UserHistory, shared: bool, cache: SignatureCache | None) -> _SignatureSide:
        if not shared:
            return _SignatureSide(self.code_table(embeddings, history, cache))
        if cache is None:  # a graph (ONNX): the request's items are hashed inside it
            vectors = embeddings.items(history.items, history.categories)  # [N, L, Dq]
            signs = sign_product.sign_vectors(self.simhash.project(vectors), self.key_dtype)
        else:  # serving: the cached signatures, as bfloat16 signs where that is exact and fast
            signs = self._cached_signs(embeddings, history.items, history.categories, cache,
                                       sign_product.product_dtype(self.simhash.bits, self.key_dtype))
        return _SignatureSide(None, cache, *sign_product.history_keys(signs, history.mask, self.key_dtype))

    @torch.no_grad()
    def forward(self, embeddings, history: UserHistory, side: _SignatureSide,
                candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = candidates.items.shape
        if side.table is None:  # shared history: all C candidates in one sign product
            if side.cache is None:
                signs = sign_product.sign_vectors(self.simhash.project(candidates.vectors), side.signs.dtype)
            else:
                signs = self._cached_signs(embeddings, candidates.items, candidates.categories, side.cache,
                                           side.signs.dtype)
            return sign_product.nearest(signs, side.signs, side.bias, side.beyond, self.top_k)  # [N, C, K]
        query = self.simhash(candidates.vectors).reshape(n * c, -1)  # [N*C, W]
        items, mask = history.items, history.mask
        if c > 1:
            items, mask = items.repeat_interleave(c, dim=0), mask.repeat_interleave(c, dim=0)
        index, found = table_hamming_top_k(query, side.table, items, mask, self.top_k)  # [N*C, K]
        return index.view(n, c, -1), found.view(n, c, -1)

    def code_table(self, embeddings, history: UserHistory, cache: SignatureCache | None) -> torch.Tensor:
        """[V, W] packed signatures, current for every item of the window. Each distinct item is
        hashed once per call, or once per cache; where the window holds a large part of the
        catalog, the whole item table is hashed from its rows (no gathering, see WHOLE_TABLE), and
        where the window is so long that even finding its distinct items costs more, from the
        rows and the catalog's categories alone (POSITIONS_PER_ITEM)."""
        if cache is not None:
            self._hash_missing(embeddings, history.items, history.categories, cache)
            return cache.codes
        items, categories = history.items.flatten(), history.categories.flatten()  # [N*L]
        d = self.simhash.split
        if embeddings.item_categories is not None and items.numel() >= POSITIONS_PER_ITEM * embeddings.num_items:
            # the catalog gives every item's category: the window is not read at all (it would give
            # the same categories: one per item)
            tables = embeddings.project_tables(self.simhash.projection[:d], self.simhash.projection[d:])
            if tables is not None:
                return table_codes(*tables, embeddings.item_categories)
        category_of = category_of_items(items, categories, embeddings.num_items)  # [V]
        if self._whole_table_pays(category_of, items.numel()):
            tables = embeddings.project_tables(self.simhash.projection[:d], self.simhash.projection[d:])
            if tables is not None:
                return table_codes(*tables, category_of)
        fresh = SignatureCache(self.simhash, embeddings)
        ids = present_items(category_of, items.numel())  # [U]
        fresh.fill(ids, category_of[ids])
        return fresh.codes

    @staticmethod
    def _whole_table_pays(category_of: torch.Tensor, positions: int) -> bool:
        """Hashing all V rows straight from the tables costs about WHOLE_TABLE as much per row as
        gathering and hashing one distinct item. On the CPU the count of distinct items decides;
        on a device (where reading it would wait) the bound min(V, positions) that the gathered
        path is padded to."""
        rows = len(category_of)
        distinct = int(torch.count_nonzero(category_of)) if category_of.device.type == "cpu" else min(rows, positions)
        return distinct >= WHOLE_TABLE * rows

    def _cached_signs(self, embeddings, items, categories, cache: SignatureCache, dtype: torch.dtype) -> torch.Tensor:
        """[...] items -> [..., m] +-1 signs of their cached signatures"""
        self._hash_missing(embeddings, items, categories, cache)
        return sign_product.unpack_signs(cache.codes[items], self.simhash.bits, dtype)

    @staticmethod
    def _hash_missing(embeddings, items: torch.Tensor, categories: torch.Tensor, cache: SignatureCache) -> None:
        items, categories = items.flatten(), categories.flatten()  # [N*L]
        missing = ~cache.hashed[items]
        if items.device.type == "cpu":
            if missing.any():
                cache.fill(*distinct_items(items[missing], categories[missing], embeddings.num_items))
            return
        # on a device, asking whether any is missing would wait for it: the items already hashed get
        # category 0, which distinct_items reads as absent (ids padded with item 0, see there)
        cache.fill(*distinct_items(items, torch.where(missing, categories, 0), embeddings.num_items))


class ETA(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=config.attention_dim)
        selector = SimHashNearest(self.embeddings.item_dim, config)
        self.long_interest = RetrievedAttention.configured(selector, config, self.embeddings)
