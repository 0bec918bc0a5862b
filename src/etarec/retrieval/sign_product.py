"""Hamming top-k as one matrix product of +-1 signs, for many candidates sharing one history.

Training retrieves for one candidate per history row (retrieval/simhash.py: XOR + popcount of
packed words, per pair). In a request all C candidates share the history, so every distance comes
out of one product of sign vectors: hamming = (m - s_q . s_k) / 2. The product is exact (every partial sum is an integer of
at most m), runs on the BLAS, and exports to ONNX as MatMul + TopK, where int64 shifts and popcount
have no operator. The order is the model's: distance first, ties to the more recent behaviour,
padding last.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from etarec.retrieval.fast_path import cpu_fast_path, device_constant

# float32 holds every integer below 2^24 exactly; the sort keys below stay under this bound
_FLOAT32_EXACT = 2**24
# bfloat16 holds every integer up to 256 exactly: products of up to 256 signs are exact in it
_BFLOAT16_EXACT = 256


def key_dtype(bits: int, length: int) -> torch.dtype:
    """The float type in which the sort keys of `bits`-bit signatures over `length` behaviours are exact."""
    return torch.float32 if 2 * (bits + 2) * length < _FLOAT32_EXACT else torch.float64


def product_dtype(bits: int, keys: torch.dtype) -> torch.dtype:
    """The type of the sign product: bfloat16 where it is exact and the CPU multiplies it natively
    (3x faster than float32 for [128 x 64] x [64 x 10^4] on AVX512-BF16), else the key type."""
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    return torch.bfloat16 if bits <= _BFLOAT16_EXACT and native else keys


# row b: the 8 bits of byte value b as signs, lowest bit first
_BYTE_SIGNS = (torch.bitwise_right_shift(torch.arange(256)[:, None], torch.arange(8)) & 1) * 2.0 - 1  # [256, 8]; on each device once


def unpack_signs(codes: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """[..., W] int64 packed signatures -> [..., m] of +-1 (bit j of word w is sign 64 w + j).

    One table row per byte: pack_bits stores a word as 8 little-endian bytes, so the bytes in
    memory order carry bits 0-7, 8-15, ... of each word.
    """
    octets = codes.contiguous().view(torch.uint8).long()  # [..., 8 W]
    signs = nn.functional.embedding(octets, device_constant(_BYTE_SIGNS, codes.device, dtype))  # [..., 8 W, 8]
    return signs.flatten(-2)[..., :bits]


def sign_vectors(projections: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., m] projections e . H (SimHash.project) -> [..., m] of +-1: the SimHash bits as signs."""
    return torch.where(projections > 0, 1.0, -1.0).to(dtype)


def history_keys(signs: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The history half of the sort keys: (signs [N, m, L] with padding zeroed, bias [N, 1, L], beyond).

    -L (s_q . s_k) + bias is then 2 (L * hamming + recency) for a real behaviour and
    2 ((m + 1) L + recency) >= beyond for padding (its zero signs give a zero product), exact in
    `dtype`. recency = L - 1 - position: 0 = most recent.
    """
    _, length, bits = signs.shape
    recency = torch.arange(length - 1, -1, -1, device=signs.device).to(dtype)  # [L]
    beyond = 2 * (bits + 1) * length
    bias = torch.where(mask, bits * length + 2 * recency, beyond + 2 * recency)[:, None, :]  # [N, 1, L]
    return (signs * mask[..., None]).transpose(1, 2), bias, beyond


def nearest(query_signs: torch.Tensor, history_signs: torch.Tensor, bias: torch.Tensor, beyond: int,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query [N, C, m] -> (index [N, C, K], found [N, C, K]) of the k nearest behaviours, nearest first.

    Same selection as hamming_top_k; needs L >= k (callers pad the history). A key encodes its own
    position (key / 2 = L * hamming + recency), so the k smallest keys are all that is needed.
    """
    length = history_signs.shape[-1]
    keys = torch.bmm(query_signs, history_signs).to(bias.dtype).mul_(-length).add_(bias)  # [N, C, L]
    selected = smallest(keys, k)  # [N, C, K] ascending
    recency = torch.remainder(selected * 0.5, length).to(torch.int64)
    return length - 1 - recency, selected < beyond


def smallest(keys: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest values of each row [..., L] -> [..., k], ascending.

    numpy's partition (a SIMD introselect) is 3 to 9 times faster than torch.topk on CPU for rows
    of 10^3 to 10^4 keys; an export traces torch.topk, which becomes ONNX TopK.
    """
    if not cpu_fast_path(keys):
        return torch.topk(keys, k, dim=-1, largest=False, sorted=True).values
    part = np.partition(keys.numpy(), k - 1, axis=-1)[..., :k]
    part.sort(axis=-1)
    return torch.from_numpy(part)
