"""The baselines' selectors against slow references: loops over rows, positions and groups."""
import numpy as np
import pytest
import torch

from etarec.retrieval.selectors import (BucketHash, bucket_lookup, bucket_mean, bucket_table, category_top_k,
                                       inner_product_top_k, score_top_k)


def random_window(rng, batch, length):
    mask = rng.random((batch, length)) < rng.uniform(0.2, 1.0)
    mask[0] = False  # an all-padding row
    if batch > 1:
        mask[1] = True  # a row without padding
    return mask


def newest_first(valid):
    return [j for j in reversed(range(len(valid))) if valid[j]]


def check(index, found, expected, k, length):
    """expected: per row and candidate, the selected positions best first (at most k); the rest must be padding."""
    assert index.shape == found.shape == (len(expected), len(expected[0]), min(k, length))
    for row, per_candidate in enumerate(expected):
        for candidate, positions in enumerate(per_candidate):
            n = len(positions)
            got_index, got_found = index[row, candidate], found[row, candidate]
            assert got_found.tolist() == [True] * n + [False] * (len(got_index) - n), "padding selected or a key lost"
            assert got_index[:n].tolist() == positions
            assert len(set(got_index.tolist())) == len(got_index), "a position returned twice"


@pytest.mark.parametrize("seed", range(12))
def test_category_top_k_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    batch, length, k = int(rng.integers(1, 6)), int(rng.integers(1, 40)), int(rng.integers(1, 50))  # often k >= L
    candidates = int(rng.integers(1, 4))
    mask = random_window(rng, batch, length)
    categories = rng.integers(2, 5, (batch, length))  # few categories: many matches
    target = rng.integers(2, 5, (batch, candidates))
    rows, columns = np.nonzero(~mask)
    categories[rows, columns] = target[rows, 0]  # padding that "matches" must still never be selected
    index, found = category_top_k(torch.from_numpy(categories), torch.from_numpy(mask), torch.from_numpy(target), k)
    expected = [[[j for j in newest_first(mask[b]) if categories[b, j] == target[b, c]][:k] for c in range(candidates)]
                for b in range(batch)]
    check(index, found, expected, k, length)


@pytest.mark.parametrize("seed", range(12))
def test_inner_product_top_k_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    batch, length, k, dim = int(rng.integers(1, 6)), int(rng.integers(1, 40)), int(rng.integers(1, 50)), 3
    candidates = int(rng.integers(1, 4))
    mask = random_window(rng, batch, length)
    # small integers: float32 scores are exact, and equal scores (ties) are frequent
    keys = rng.integers(-2, 3, (batch, length, dim)).astype(np.float32)
    keys[~mask] = 100.0  # padding that would win on score must never be selected
    query = rng.integers(-2, 3, (batch, candidates, dim)).astype(np.float32)
    query[:, 0] = np.abs(query[:, 0])  # a candidate that padding's keys would win for
    index, found = inner_product_top_k(torch.from_numpy(query), torch.from_numpy(keys), torch.from_numpy(mask), k)
    expected = []
    for b in range(batch):
        per_candidate = []
        for c in range(candidates):
            score = {j: float(np.dot(query[b, c].astype(np.float64), keys[b, j])) for j in newest_first(mask[b])}
            per_candidate.append(sorted(score, key=lambda j: -score[j])[:k])  # stable: ties stay newest first
        expected.append(per_candidate)
    check(index, found, expected, k, length)


def test_ties_go_to_the_most_recent_position():
    keys = torch.ones(1, 5, 2)  # every score equal
    mask = torch.tensor([[True, False, True, True, False]])
    index, found = inner_product_top_k(torch.ones(1, 1, 2), keys, mask, 3)
    assert index[0, 0].tolist() == [3, 2, 0] and found[0, 0].all()
    index, found = score_top_k(torch.zeros(1, 1, 5), mask, 3)
    assert index[0, 0].tolist() == [3, 2, 0] and found[0, 0].all()
    index, found = category_top_k(torch.full((1, 5), 7), mask, torch.tensor([[7]]), 5)
    assert index[0, 0, :3].tolist() == [3, 2, 0] and found[0, 0].tolist() == [True, True, True, False, False]


@pytest.mark.parametrize("hashes,tau", [(1, 1), (6, 3), (12, 4), (62, 62)])
def test_bucket_hash_reads_groups_of_tau_sign_bits(hashes, tau):
    bucket_hash = BucketHash(dim=8, hashes=hashes, tau=tau, seed=5)
    embeddings = torch.randn(4, 7, 8)
    buckets = bucket_hash(embeddings)
    assert buckets.shape == (4, 7, hashes // tau) and buckets.dtype == torch.int64
    signs = (embeddings.double() @ bucket_hash.projection.double() > 0).numpy()
    for b in range(4):
        for j in range(7):
            for g in range(hashes // tau):
                expected = sum(int(signs[b, j, g * tau + t]) << t for t in range(tau))
                assert int(buckets[b, j, g]) == expected
    assert list(bucket_hash.parameters()) == [] and torch.equal(bucket_hash(embeddings), buckets)


@pytest.mark.parametrize("seed", range(8))
def test_bucket_mean_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    batch, length, groups, dim = int(rng.integers(1, 5)), int(rng.integers(1, 30)), int(rng.integers(1, 5)), 4
    candidates = int(rng.integers(1, 4))
    mask = random_window(rng, batch, length)
    key_buckets = rng.integers(0, 3, (batch, length, groups))
    query_buckets = rng.integers(0, 3, (batch, candidates, groups))
    values = rng.normal(size=(batch, length, dim))
    rows, columns = np.nonzero(~mask)
    key_buckets[rows, columns] = query_buckets[rows, 0]  # padding in the target's bucket must not count
    tensors = [torch.from_numpy(a) for a in (query_buckets, key_buckets, values, mask)]
    got = bucket_mean(*tensors)
    assert got.shape == (batch, candidates, dim)
    # the shared-history layout: every bucket's interest once, then a lookup per candidate
    table = bucket_table(tensors[1], tensors[2], tensors[3], tau=2)  # buckets 0..2 < 2^2
    torch.testing.assert_close(bucket_lookup(tensors[0], table), got, rtol=1e-6, atol=1e-9)
    for b in range(batch):
        for c in range(candidates):
            per_group = []
            for g in range(groups):
                total = np.zeros(dim)
                for j in range(length):
                    if mask[b, j] and key_buckets[b, j, g] == query_buckets[b, c, g]:
                        total += values[b, j]
                norm = np.linalg.norm(total)
                per_group.append(total / norm if norm > 0 else total)
            np.testing.assert_allclose(got[b, c].numpy(), np.mean(per_group, axis=0), rtol=1e-6, atol=1e-9)
    assert torch.all(got[0] == 0), "an all-padding row must give the zero vector"
