"""SimHash signatures packed into int64 words, Hamming distance by XOR + popcount, and top-k.

The projection H (d x m, N(0, 1)) is fixed at creation and lives in a buffer: sign() has no useful
gradient, so a trainable hash would only pretend to learn. Signatures are recomputed from the
current embeddings, which is what makes ETA's retrieval end to end.
"""
from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import torch
from torch import nn

from etarec.retrieval.fast_path import compiled_path, cpu_fast_path, device_constant

WORD_BITS = 64
# SWAR popcount masks for 64-bit words (int64 literals of the usual 0x5555..., 0x3333..., 0x0f0f...)
_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def words_for(bits: int) -> int:
    return (bits + WORD_BITS - 1) // WORD_BITS


_BYTE_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)  # on each device once (fast_path)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """[..., m] bool -> [..., ceil(m / 64)] int64; bit j of word w is bits[..., 64 w + j].

    Packs 8 bits per byte in uint8 arithmetic, then reinterprets 8 bytes as one little-endian
    word: an eighth of the memory traffic of summing int64 powers of two.
    """
    m = bits.shape[-1]
    n_words = words_for(m)
    if cpu_fast_path(bits) and bits.numel():  # numpy's packbits: one C pass, 3x faster than the ops below
        packed = np.packbits(bits.numpy(), axis=-1, bitorder="little")  # [..., ceil(m / 8)] uint8
        packed = np.pad(packed, [(0, 0)] * (bits.dim() - 1) + [(0, n_words * 8 - packed.shape[-1])])
        return torch.from_numpy(np.ascontiguousarray(packed)).view(torch.int64)  # [..., W], little-endian
    padded = torch.nn.functional.pad(bits.to(torch.uint8), (0, n_words * WORD_BITS - m))
    octets = padded.view(*bits.shape[:-1], n_words * 8, 8)
    packed = (octets * device_constant(_BYTE_WEIGHTS, bits.device)).sum(-1, dtype=torch.uint8)  # [..., 8 W]
    return packed.contiguous().view(torch.int64)  # [..., W]; byte 0 is the low byte (little-endian)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits per int64 element (SWAR; every shift is masked, so arithmetic shifts are harmless)."""
    x = words - (torch.bitwise_right_shift(words, 1) & _M1)
    x = (x & _M2) + (torch.bitwise_right_shift(x, 2) & _M2)
    x = (x + torch.bitwise_right_shift(x, 4)) & _M4
    # the top byte of x * 0x0101... holds the sum of all bytes (<= 64, so the sign bit stays clear)
    return torch.bitwise_right_shift(x * _H01, 56)


def hamming(query_codes: torch.Tensor, key_codes: torch.Tensor) -> torch.Tensor:
    """query [B, W], keys [B, L, W] -> distances [B, L] int64.

    On CPU, numpy's bitwise_count (a hardware popcount, numpy >= 2) does in one pass what the
    portable SWAR popcount needs a dozen tensor passes for (16 ms vs 265 ms for 4M words, one
    core). Other devices, and tracing for export, use the torch formulation.
    """
    if _HAS_BITWISE_COUNT and cpu_fast_path(query_codes):
        xor = np.bitwise_xor(query_codes.numpy()[:, None, :], key_codes.numpy()).view(np.uint64)
        return torch.from_numpy(np.bitwise_count(xor).sum(-1, dtype=np.int64))
    return hamming_torch(query_codes, key_codes)


def hamming_torch(query_codes: torch.Tensor, key_codes: torch.Tensor) -> torch.Tensor:
    """The device-independent formulation of hamming(): XOR, SWAR popcount, sum over words."""
    return popcount(torch.bitwise_xor(query_codes[:, None, :], key_codes)).sum(-1)


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


def hamming_top_k(query_codes: torch.Tensor, key_codes: torch.Tensor, key_mask: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k keys nearest in Hamming distance, for each query.

    query_codes [B, W], key_codes [B, L, W], key_mask [B, L] (True = real behaviour).
    Returns (index [B, K], found [B, K]) with K = min(k, L), nearest first. Ties go to the more
    recent (higher) position; padding never beats a real key and comes back with found=False.
    """
    distance = hamming(query_codes, key_codes)  # [B, L]
    order_key, beyond_any_distance = _order_keys(distance, key_mask, key_codes.shape[-1])
    return _smallest_keys(order_key, beyond_any_distance, k)


def _order_keys(distance: torch.Tensor, key_mask: torch.Tensor, words: int) -> tuple[torch.Tensor, int]:
    """One integer key per position makes the order total: distance first, then recency; padding
    after every real key. -> (keys [B, L], the first key no real position reaches)"""
    length = distance.shape[1]
    recency = torch.arange(length - 1, -1, -1, device=distance.device)  # [L] 0 = most recent
    beyond_any_distance = (WORD_BITS * words + 1) * length
    return torch.where(key_mask, distance * length + recency, beyond_any_distance + recency), beyond_any_distance


def _smallest_keys(order_key: torch.Tensor, beyond_any_distance: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # keys are distinct integers, so the k smallest and their order are unique: any top-k gives them
    selected_key, index = torch.topk(order_key, min(k, order_key.shape[1]), dim=1, largest=False, sorted=True)
    return index, selected_key < beyond_any_distance


def table_order_keys(query_codes: torch.Tensor, table_codes: torch.Tensor, history_items: torch.Tensor,
                     history_mask: torch.Tensor) -> torch.Tensor:
    """The sort keys of hamming_top_k over table_codes[history_items], as one fusable expression:
    gather, XOR, popcount, key. int32 where every key fits (half the bytes for the top-k to read)."""
    words, length = table_codes.shape[1], history_items.shape[1]
    distance = hamming_torch(query_codes, table_codes[history_items])  # [B, L]
    keys, _ = _order_keys(distance, history_mask, words)
    return keys.to(torch.int32) if _fits_int32(words, length) else keys


def _fits_int32(words: int, length: int) -> bool:
    return (WORD_BITS * words + 2) * length < 2**31


@cache
def _compiled_order_keys():
    # dynamic: one kernel for every batch size and window length (sizes 0 and 1 aside)
    return torch.compile(table_order_keys, dynamic=True)


_compile_failed: list[str] = []  # the error that turned the compiled path off, once


def _device_order_keys(query_codes, table_codes, history_items, history_mask) -> torch.Tensor:
    """table_order_keys in one compiled kernel on a CUDA device (ids, mask and codes read once,
    int keys written once), eager torch ops elsewhere or when compiling fails."""
    if compiled_path(history_items) and not _compile_failed:
        try:
            return _compiled_order_keys()(query_codes, table_codes, history_items, history_mask)
        except Exception as error:  # a compiler problem must not stop training; eager gives the same keys
            _compile_failed.append(f"{type(error).__name__}: {error}")
            warnings.warn(f"etarec: compiled retrieval failed, using eager torch ops ({_compile_failed[0][:300]})")
    return table_order_keys(query_codes, table_codes, history_items, history_mask)


def table_hamming_top_k(query_codes: torch.Tensor, table_codes: torch.Tensor, history_items: torch.Tensor,
                        history_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hamming_top_k over the codes table_codes[history_items] [B, L, W] without materialising them.

    On CPU the fused kernel (native.py) reads each id once and selects by counting; elsewhere the
    keys come from table_order_keys (one compiled kernel on CUDA) and a top-k on the device; on
    CPU without a C compiler, hamming_top_k. All return the same indices.
    """
    from etarec.retrieval import native  # compiles the kernel on first use

    if cpu_fast_path(history_items):
        if native.available():
            return native.hamming_top_k_native(query_codes, table_codes, history_items, history_mask, k)
        return hamming_top_k(query_codes, table_codes[history_items], history_mask, k)
    return device_table_top_k(query_codes, table_codes, history_items, history_mask, k)


def device_table_top_k(query_codes: torch.Tensor, table_codes: torch.Tensor, history_items: torch.Tensor,
                       history_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """table_hamming_top_k off the CPU: the keys of table_order_keys, then one top-k, on the device
    of the inputs (runs anywhere; the compiled kernel only on CUDA)."""
    keys = _device_order_keys(query_codes, table_codes, history_items, history_mask)
    beyond_any_distance = (WORD_BITS * table_codes.shape[1] + 1) * history_items.shape[1]
    return _smallest_keys(keys, beyond_any_distance, k)


class SimHash(nn.Module):
    """Fixed random projection d -> m bits, packed into int64 words.

    split: where an item vector [item embedding | category embedding] divides (None: not at all).
    Each part is projected by its own rows of H and the two products are added, so that a
    signature can also come from the tables themselves, every row projected once (table_codes):
    the same bits as hashing the concatenated rows (a row's product does not depend on how many
    rows share the matrix product, single rows aside), without gathering them.
    """

    def __init__(self, dim: int, bits: int, seed: int = 0, split: int | None = None):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.bits = bits
        self.words = words_for(bits)
        self.split = split
        self.register_buffer("projection", torch.randn(dim, bits, generator=generator))  # [D, m]

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., m] float32: e . H, part by part where the vector is split"""
        if self.split is None:
            return projected(embeddings, self.projection)
        s = self.split
        return projected(embeddings[..., :s], self.projection[:s]) + projected(embeddings[..., s:], self.projection[s:])

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[..., D] float -> [..., ceil(m / 64)] int64 packed signatures."""
        return sign_pack(self.project(embeddings.detach()))


def sign_pack(projections: torch.Tensor) -> torch.Tensor:
    """[..., m] float -> [..., ceil(m / 64)] int64: pack_bits(projections > 0)."""
    if projections.dtype == torch.float32 and projections.shape[-1] and cpu_fast_path(projections):
        from etarec.retrieval import native  # compiles the kernel on first use

        if native.available():  # the compare and the packing in one pass (the same bits)
            return native.sign_pack_native(projections)
    return pack_bits(projections > 0)


def table_codes(item_projections: torch.Tensor, category_projections: torch.Tensor,
                category_of: torch.Tensor) -> torch.Tensor:
    """The signature of every item at once: item_projections [V, m] (each item row . its part of
    H), category_projections [C, m] (each category row . the other part), category_of [V] (0 for
    an item seen nowhere: its code is that of its item row alone, never read) -> [V, W] int64,
    what SimHash(split) gives each item's [item | category] vector."""
    if cpu_fast_path(item_projections):
        from etarec.retrieval import native

        if native.available():  # the gather, the sum and the packing in one pass, no [V, m] temporary
            return native.sign_pack_sum_native(item_projections, category_projections, category_of)
    return pack_bits(item_projections + category_projections[category_of] > 0)


def projected(embeddings: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """embeddings [..., D] @ projection [D, m] in float32, also under autocast: an item's signature
    must not depend on the precision a step runs in (bfloat16 would flip the bits near zero)."""
    kind = embeddings.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            return embeddings.float() @ projection.float()
    return embeddings @ projection
