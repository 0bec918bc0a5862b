"""The baselines' ways of choosing behaviours from the long window, next to ETA's SimHash top-k.

Top-k selectors follow simhash.hamming_top_k's contract: positions index the right-aligned window
[N, L]; for C candidates per history row they return (index [N, C, K], found [N, C, K]) with
K = min(k, L), best first; ties go to the more recent position; padding is never selected (it
comes last, found=False).
"""
from __future__ import annotations

import torch
from torch.nn import functional

from etarec.retrieval.simhash import SimHash, projected


def _recency(length: int, device: torch.device) -> torch.Tensor:
    """[L] 0 for the most recent (rightmost) position, L - 1 for the oldest"""
    return torch.arange(length - 1, -1, -1, device=device)


def category_top_k(history_categories: torch.Tensor, history_mask: torch.Tensor, target_category: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SIM(hard) search: the behaviours whose category equals the candidate's, most recent first.

    history_categories [N, L], history_mask [N, L], target_category [N, C] -> [N, C, K].
    """
    length = history_categories.shape[1]
    recency = _recency(length, history_categories.device)  # [L]
    match = history_mask[:, None, :] & (history_categories[:, None, :] == target_category[:, :, None])  # [N, C, L]
    # one distinct integer per position: every match (key < L) before every non-match
    order_key = torch.where(match, recency, length + recency)  # [N, C, L]
    selected_key, index = torch.topk(order_key, min(k, length), dim=-1, largest=False, sorted=True)
    return index, selected_key < length


def inner_product_top_k(query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                        k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product (the ETA paper's ablation v3, and the reference its SimHash
    retrieval is measured against). query [N, C, D], keys [N, L, D], key_mask [N, L] -> [N, C, K]."""
    scores = (keys @ query.transpose(1, 2)).transpose(1, 2)  # [N, L, C] -> [N, C, L]
    return score_top_k(scores, key_mask, k)


def score_top_k(scores: torch.Tensor, key_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k real positions with the largest scores [N, C, L] (key_mask [N, L]), equal scores
    newest first -> (index, found) [N, C, K]."""
    length = scores.shape[-1]
    mask = key_mask[:, None, :].expand_as(scores)  # [N, C, L]
    scores = scores.masked_fill(~mask, float("-inf"))  # real scores are finite: padding sorts last
    newest = scores.flip(-1)  # [N, C, L] position 0 = the most recent
    if torch.compiler.is_exporting():  # ONNX has no stable sort; its TopK breaks ties to the lower index
        newest_first = torch.topk(newest, min(k, length), dim=-1, sorted=True).indices
    else:  # a stable sort keeps equal scores newest first (torch.topk's tie order is unspecified)
        newest_first = torch.sort(newest, dim=-1, descending=True, stable=True).indices[..., : min(k, length)]
    index = length - 1 - newest_first  # [N, C, K] back to window positions
    return index, torch.gather(mask, -1, index)


class BucketHash(SimHash):
    """SDIM's hashing (arXiv 2205.10249): the m sign bits of SimHash's fixed random projection, read
    as m / tau signatures of tau bits each; a signature is the id of the bucket it names."""

    def __init__(self, dim: int, hashes: int, tau: int, seed: int = 0):
        super().__init__(dim, hashes, seed=seed)
        self.tau = tau

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[..., D] float -> [..., m / tau] int64 bucket ids"""
        bits = (projected(embeddings.detach(), self.projection) > 0).to(torch.int64)  # [..., m]
        groups = bits.view(*bits.shape[:-1], -1, self.tau)  # [..., G, tau]
        powers = 2 ** torch.arange(self.tau, device=bits.device)  # [tau] (a product, not a shift: ONNX shifts only unsigned)
        return (groups * powers).sum(-1)  # [..., G]


def bucket_mean(query_buckets: torch.Tensor, key_buckets: torch.Tensor, values: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
    """SDIM's interest: per hash group, the behaviours in the candidate's bucket are summed and
    l2-normalised; the groups are averaged. A group whose bucket holds no real behaviour adds zero.

    query_buckets [N, C, G], key_buckets [N, L, G], values [N, L, D], key_mask [N, L] -> [N, C, D].
    """
    same = (key_buckets[:, None] == query_buckets[:, :, None, :]) & key_mask[:, None, :, None]  # [N, C, L, G]
    sums = torch.einsum("nclg,nld->ncgd", same.to(values.dtype), values)  # [N, C, G, D]
    return functional.normalize(sums, dim=-1).mean(2)  # normalize leaves a zero sum at zero


def bucket_table(key_buckets: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor, tau: int) -> torch.Tensor:
    """SDIM's interest for every possible bucket at once, for histories many candidates share:
    per group, the l2-normalised sum of the real behaviours in each of the 2^tau buckets.

    key_buckets [N, L, G], values [N, L, D], key_mask [N, L] -> [N, G, 2^tau, D]. A candidate then
    reads its own bucket's row of each group (bucket_lookup): O(L·G·D) once per history instead of
    O(C·L·G·D) comparisons for C candidates.
    """
    n, length, groups = key_buckets.shape
    slots = 2**tau
    # flat slot of (row, group, bucket); padding goes to a spare slot past the end that is dropped
    row_group = (torch.arange(n, device=key_buckets.device)[:, None, None] * groups
                 + torch.arange(groups, device=key_buckets.device)[None, None, :])  # [N, 1, G]
    slot = torch.where(key_mask[:, :, None], row_group * slots + key_buckets, n * groups * slots)  # [N, L, G]
    weighted = values[:, :, None, :].expand(n, length, groups, -1)  # [N, L, G, D]
    sums = values.new_zeros((n * groups * slots + 1, values.shape[-1]))
    sums = sums.index_add(0, slot.reshape(-1), weighted.reshape(-1, values.shape[-1]))
    return functional.normalize(sums[:-1].view(n, groups, slots, -1), dim=-1)


def bucket_lookup(query_buckets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """query_buckets [N, C, G], a bucket_table [N, G, 2^tau, D] -> [N, C, D]: bucket_mean's result"""
    n, c, groups = query_buckets.shape
    index = query_buckets.transpose(1, 2)[..., None].expand(n, groups, c, table.shape[-1])  # [N, G, C, D]
    return torch.gather(table, 2, index).mean(1)  # [N, C, D], the groups averaged
