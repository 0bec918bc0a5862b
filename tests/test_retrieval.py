"""SimHash retrieval against a brute-force reference: float signs, counted bits, a stable sort."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from etarec.retrieval import native
from etarec.retrieval.sign_product import history_keys, nearest, unpack_signs
from etarec.retrieval.simhash import (SimHash, device_table_top_k, hamming, hamming_top_k, hamming_torch, pack_bits,
                                      popcount, table_hamming_top_k)


def reference_top_k(query_bits, key_bits, mask, k):
    """Per row: real positions sorted by (Hamming distance, most recent first); at most k."""
    result = []
    for q, keys, valid in zip(query_bits, key_bits, mask):
        length = len(keys)
        newest_first = [j for j in reversed(range(length)) if valid[j]]
        distance = {j: int(sum(int(a) != int(b) for a, b in zip(q, keys[j]))) for j in newest_first}
        ranked = sorted(newest_first, key=lambda j: distance[j])  # stable: ties keep newest first
        result.append(ranked[:k])
    return result


@pytest.mark.parametrize("bits", [1, 3, 13, 63, 64, 65, 100])
def test_packed_popcount_counts_bits(bits, device):
    rng = np.random.default_rng(bits)
    a = torch.from_numpy(rng.random((50, bits)) < 0.5).to(device)
    b = torch.from_numpy(rng.random((50, bits)) < 0.5).to(device)
    packed_a, packed_b = pack_bits(a), pack_bits(b)
    assert packed_a.dtype == torch.int64 and packed_a.shape == (50, (bits + 63) // 64)
    assert packed_a.device.type == device.type
    assert torch.equal(popcount(packed_a).sum(-1), a.sum(-1))
    expected = (a != b).sum(-1)
    assert torch.equal(hamming(packed_a, packed_b[:, None, :]).squeeze(1), expected)
    assert torch.equal(hamming_torch(packed_a, packed_b[:, None, :]).squeeze(1), expected)


def test_popcount_extreme_words(device):
    words = torch.tensor([0, -1, 1, -(2**63), 2**63 - 1, 0x5555555555555555], device=device)
    assert popcount(words).tolist() == [0, 64, 1, 1, 63, 32]


def as_table(key_codes):
    """A table holding each position's codes [B * L, W] and the ids [B, L] that read it back."""
    batch, length, words = key_codes.shape
    return key_codes.reshape(batch * length, words), torch.arange(batch * length, device=key_codes.device).view(batch, length)


def native_top_k(query_codes, key_codes, mask, k):
    """The fused kernel over a table holding each position's codes, ids = positions."""
    if not native.available():
        pytest.skip("no C compiler: the fused kernel is not built (the tensor path is tested)")
    if query_codes.device.type != "cpu":
        pytest.skip("the fused kernel is CPU-only")
    return native.hamming_top_k_native(query_codes, *as_table(key_codes), mask, k)


def table_top_k(query_codes, key_codes, mask, k):
    """What ETA calls, on the inputs' device: the native kernel on CPU, gather + keys + top-k elsewhere."""
    return table_hamming_top_k(query_codes, *as_table(key_codes), mask, k)


def device_top_k(query_codes, key_codes, mask, k):
    """The off-CPU formulation on any device (compiled on CUDA, eager torch ops elsewhere)."""
    return device_table_top_k(query_codes, *as_table(key_codes), mask, k)


TOP_K = [hamming_top_k, native_top_k, table_top_k, device_top_k]
TOP_K_IDS = ["tensor", "native", "table", "device_formulation"]


@pytest.mark.parametrize("top_k", TOP_K, ids=TOP_K_IDS)
@pytest.mark.parametrize("seed", range(12))
def test_top_k_equals_brute_force(seed, top_k, device):
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 6))
    length = int(rng.integers(1, 40))
    bits = int(rng.choice([1, 2, 3, 5, 7, 13, 64, 70, 129]))  # few bits force many ties
    k = int(rng.integers(1, 50))  # often k > L
    query = rng.random((batch, bits)) < 0.5
    keys = rng.random((batch, length, bits)) < 0.5
    mask = rng.random((batch, length)) < rng.uniform(0.2, 1.0)
    mask[0] = False  # an all-padding row
    if batch > 1:
        mask[1] = True  # a row without padding
    index, found = top_k(pack_bits(torch.from_numpy(query).to(device)), pack_bits(torch.from_numpy(keys).to(device)),
                         torch.from_numpy(mask).to(device), k)
    assert index.shape == found.shape == (batch, min(k, length))
    assert index.device.type == found.device.type == device.type
    index, found = index.cpu(), found.cpu()
    for row, expected in enumerate(reference_top_k(query, keys, mask, k)):
        n = len(expected)
        assert found[row].tolist() == [True] * n + [False] * (index.shape[1] - n), "padding retrieved or real key lost"
        assert index[row, :n].tolist() == expected


@pytest.mark.parametrize("top_k", TOP_K, ids=TOP_K_IDS)
def test_padding_never_wins_even_with_identical_codes(top_k, device):
    codes = torch.zeros(1, 6, 1, dtype=torch.int64, device=device)  # every key at distance 0
    mask = torch.tensor([[False, False, True, False, True, False]], device=device)
    index, found = top_k(torch.zeros(1, 1, dtype=torch.int64, device=device), codes, mask, 4)
    index, found = index.cpu(), found.cpu()
    assert index[0, :2].tolist() == [4, 2]  # the more recent of the tied real keys first
    assert found[0].tolist() == [True, True, False, False]


def test_simhash_bits_are_float_signs_of_the_fixed_projection():
    simhash = SimHash(dim=16, bits=37, seed=3)
    embeddings = torch.randn(20, 16)
    expected = pack_bits((embeddings @ simhash.projection) > 0)
    assert torch.equal(simhash(embeddings), expected)
    assert torch.equal(simhash(embeddings), simhash(embeddings)), "a fresh projection per call"
    assert torch.equal(SimHash(16, 37, seed=3).projection, simhash.projection), "seeded projection differs"
    assert not torch.equal(SimHash(16, 37, seed=4).projection, simhash.projection)
    assert list(simhash.parameters()) == []


@pytest.mark.parametrize("bits", [5, 64, 72, 130])
def test_sign_product_retrieval_for_many_candidates_equals_the_brute_force_reference(bits, device):
    """Serving's layout: C candidates share each history row, all distances from one sign product."""
    g = torch.Generator().manual_seed(bits)
    rows, candidates, length, k = 6, 3, 40, 7
    # few distinct signatures: many ties, which must go to the more recent behaviour
    pool = torch.rand((5, bits), generator=g) > 0.5
    history_bits = pool[torch.randint(0, 5, (rows, length), generator=g)]  # [N, L, m]
    query_bits = torch.rand((rows, candidates, bits), generator=g) > 0.5  # [N, C, m]
    mask = torch.arange(length)[None, :] >= torch.tensor([0, 3, 20, 36, 40, 39])[:, None]  # left padding
    for dtype in (torch.float32, torch.bfloat16):  # the graph's and the Scorer's sign product
        signs = unpack_signs(pack_bits(history_bits.to(device)), bits, dtype)
        assert torch.equal(signs.float().cpu(), history_bits.float() * 2 - 1), "unpack_signs does not invert pack_bits"
        history, bias, beyond = history_keys(signs, mask.to(device), torch.float32)
        index, found = nearest(unpack_signs(pack_bits(query_bits.to(device)), bits, dtype), history, bias, beyond, k)
        assert index.shape == found.shape == (rows, candidates, k)
        assert index.device.type == device.type
        index, found = index.cpu(), found.cpu()
        for c in range(candidates):
            expected = reference_top_k(query_bits[:, c], history_bits, mask, k)
            for row in range(rows):
                assert index[row, c][found[row, c]].tolist() == expected[row], f"row {row}, candidate {c}"


@pytest.mark.parametrize("bits", [1, 8, 63, 64, 65, 130])
@pytest.mark.parametrize("fast", [True, False])
def test_pack_bits_puts_bit_j_of_word_w_at_position_64w_plus_j(bits, fast, monkeypatch):
    from etarec.retrieval import simhash

    if not fast:  # the plain torch ops (what runs on devices and under exporters)
        monkeypatch.setattr(simhash, "cpu_fast_path", lambda tensor: False)
    rng = np.random.default_rng(bits)
    flags = torch.from_numpy(rng.random((3, 4, bits)) < 0.5)
    packed = simhash.pack_bits(flags)
    assert packed.shape == (3, 4, (bits + 63) // 64) and packed.dtype == torch.int64
    for row, words in zip(flags.reshape(-1, bits).tolist(), packed.reshape(-1, packed.shape[-1]).tolist()):
        for w, word in enumerate(words):
            expected = sum(1 << j for j in range(64) if 64 * w + j < bits and row[64 * w + j])
            assert word % 2**64 == expected


@pytest.mark.skipif(not native.available(), reason="no C compiler for the native kernel")
@pytest.mark.parametrize("bits", [1, 3, 63, 64, 65, 130])
def test_the_fused_sign_packing_gives_the_compares_bits_also_for_nan_and_signed_zeros(bits):
    """native.sign_pack_native (SSE compares, 4 at a time, and a scalar tail) against torch's
    x > 0 and pack_bits, including the values where a compare could go either way."""
    g = torch.Generator().manual_seed(bits)
    values = torch.randn((7, 5, bits), generator=g)
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-45, -1e-45])
    values.view(-1)[: 3 * len(special)] = special.repeat(3)
    assert torch.equal(native.sign_pack_native(values), pack_bits(values > 0))
    # with a second table added row by row (the whole-table signatures): the float32 sum, then the compare
    extra = torch.randn((4, bits), generator=g)
    rows_of = torch.randint(0, 4, (35,), generator=g)
    flat = values.reshape(35, bits)
    assert torch.equal(native.sign_pack_sum_native(flat, extra, rows_of), pack_bits(flat + extra[rows_of] > 0))
    with pytest.raises(IndexError, match="category id outside"):
        native.sign_pack_sum_native(flat, extra, torch.full((35,), 4))


@pytest.mark.parametrize("fast", [True, False])
def test_whole_table_signatures_equal_hashing_each_items_row_and_the_float64_signs(fast, monkeypatch):
    """table_codes (every item row and category row projected once, summed per item) gives the bits
    SimHash(split) gives each gathered [item | category] row, and the float64 signs wherever a
    projection is not within rounding of zero."""
    from etarec.retrieval import simhash as module

    if not fast:
        monkeypatch.setattr(module, "cpu_fast_path", lambda tensor: False)
    g = torch.Generator().manual_seed(5)
    d, bits, num_items, num_categories = 12, 70, 300, 9
    simhash = SimHash(2 * d, bits, seed=2, split=d)
    item_rows, category_rows = torch.randn((num_items, d), generator=g), torch.randn((num_categories, d), generator=g)
    category_of = torch.randint(1, num_categories, (num_items,), generator=g)
    codes = module.table_codes(item_rows @ simhash.projection[:d], category_rows @ simhash.projection[d:], category_of)
    vectors = torch.cat([item_rows, category_rows[category_of]], dim=1)  # [V, 2d] the rows the gathered path hashes
    assert torch.equal(codes, simhash(vectors))
    exact = vectors.double() @ simhash.projection.double()  # [V, m]
    clear = exact.abs() > 1e-4
    bits_of = lambda packed: torch.stack([(packed[:, j // 64] >> (j % 64)) & 1 for j in range(bits)], dim=1).bool()
    assert torch.equal(bits_of(codes)[clear], (exact > 0)[clear])
    assert clear.float().mean() > 0.99


@pytest.mark.skipif(not native.available() or not Path("/proc/self/maps").is_file(),
                    reason="needs the native kernel and Linux's /proc")
def test_the_native_kernel_runs_on_torchs_own_openmp_runtime():
    """One OpenMP runtime, one thread pool: the kernel's parallel regions reuse the threads of
    torch's intra-op pool (and OMP_WAIT_POLICY), not a second pool spinning next to it. A fresh
    process, so no other library's OpenMP (scikit-learn bundles one) is loaded beforehand."""
    probe = ("import torch\nfrom etarec.retrieval import native\nassert native.available()\n"
             "torch.set_num_threads(2)\n"
             "native.hamming_top_k_native(torch.zeros(64, 1, dtype=torch.int64), torch.zeros(9, 1, dtype=torch.int64),"
             " torch.ones(64, 100, dtype=torch.int64), torch.ones(64, 100, dtype=torch.bool), 5)\n"
             "print('\\n'.join(sorted({line.split()[-1] for line in open('/proc/self/maps') if 'omp' in line.split('/')[-1]})))")
    mapped = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert len(mapped) == 1, f"more than one OpenMP runtime loaded: {mapped}"
    torch_lib = Path(torch.__file__).parent / "lib"
    bundled = sorted(torch_lib.glob("lib*omp*.so*"))
    if bundled:  # a pip wheel brings its own runtime; the kernel must resolve to it, not the system's
        assert Path(mapped[0]).resolve() in {path.resolve() for path in bundled}
