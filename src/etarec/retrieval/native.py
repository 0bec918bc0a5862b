"""The fused CPU retrieval kernel (hamming_topk.c), compiled on first use and loaded with ctypes.

A C compiler is the only requirement; without one (or with ETAREC_NATIVE=0) retrieval falls back
to the tensor formulation in simhash.py, which gives identical results.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("hamming_topk.c")


def _flags() -> list[str]:
    flags = ["-O3", "-fopenmp", "-shared", "-fPIC"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mpopcnt")  # one instruction per word instead of a bit-twiddling sequence
    return flags


def _cache_dir() -> Path:
    return Path(os.environ.get("ETAREC_CACHE", Path.home() / ".cache" / "etarec"))


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("ETAREC_NATIVE", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    flags = _flags()
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    target = _cache_dir() / f"hamming_topk-{digest}-{platform.machine()}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True)
            if result.returncode != 0:
                return None
            os.replace(built, target)  # atomic: concurrent processes never load a half-written file
    library = ctypes.CDLL(str(target))
    for function in (library.etarec_hamming_topk, library.etarec_hamming_topk_i32):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_int] + [ctypes.c_void_p] * 2
    for function in (library.etarec_category_of, library.etarec_category_of_i32):
        function.restype = None
        function.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_void_p]
    library.etarec_sign_pack.restype = None
    library.etarec_sign_pack.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int, ctypes.c_void_p]
    return library


def available() -> bool:
    return _library() is not None


def hamming_top_k_native(query_codes: torch.Tensor, table_codes: torch.Tensor, history_items: torch.Tensor,
                         history_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B, W], table [V, W], history ids [B, L] (int32 or int64, read as they are), mask [B, L]
    -> (index [B, K], found [B, K])."""
    library = _library()
    rows, length = history_items.shape
    top = min(k, length)
    query = query_codes.contiguous()
    table = table_codes.contiguous()
    narrow = history_items.dtype == torch.int32
    items = (history_items if narrow else history_items.to(torch.int64)).contiguous()
    mask = history_mask.contiguous().view(torch.uint8)
    index = torch.empty((rows, top), dtype=torch.int64)
    found = torch.empty((rows, top), dtype=torch.uint8)
    kernel = library.etarec_hamming_topk_i32 if narrow else library.etarec_hamming_topk
    failed = kernel(
        items.data_ptr(), table.data_ptr(), query.data_ptr(), mask.data_ptr(), rows, length, table.shape[1], top,
        table.shape[0], torch.get_num_threads(), index.data_ptr(), found.data_ptr(),
    )
    if failed:
        raise MemoryError("retrieval kernel could not allocate its per-thread buffers")
    return index, found.view(torch.bool)


def category_of_native(items: torch.Tensor, categories: torch.Tensor, num_items: int) -> torch.Tensor:
    """items [N], categories [N] (the same integer dtype, int32 or int64) -> [num_items] int64: the
    category of each item that occurs, 0 for the others (distinct_items' scatter, one pass)."""
    library = _library()
    narrow = items.dtype == torch.int32 and categories.dtype == torch.int32
    wide = torch.int32 if narrow else torch.int64
    items, categories = items.to(wide).contiguous(), categories.to(wide).contiguous()
    category_of = torch.zeros(num_items, dtype=torch.int64)
    scatter = library.etarec_category_of_i32 if narrow else library.etarec_category_of
    scatter(items.data_ptr(), categories.data_ptr(), items.numel(), num_items, category_of.data_ptr())
    return category_of


def sign_pack_native(projections: torch.Tensor) -> torch.Tensor:
    """[..., m] float32 -> [..., ceil(m / 64)] int64: pack_bits(projections > 0) in one pass
    (9x faster than the compare and numpy's packbits for 100k x 64, no [..., m] bool temporary)."""
    *shape, bits = projections.shape
    flat = projections.contiguous()
    out = torch.empty((*shape, (bits + 63) // 64), dtype=torch.int64)
    _library().etarec_sign_pack(flat.data_ptr(), None, None, flat.numel() // bits, bits, torch.get_num_threads(),
                                out.data_ptr())
    return out


def sign_pack_sum_native(item_projections: torch.Tensor, category_projections: torch.Tensor,
                         category_of: torch.Tensor) -> torch.Tensor:
    """[V, m], [C, m] float32, [V] category ids -> [V, W] int64:
    pack_bits(item_projections + category_projections[category_of] > 0) in one pass."""
    rows, bits = item_projections.shape
    x, y = item_projections.float().contiguous(), category_projections.float().contiguous()
    rows_of = category_of.to(torch.int64).contiguous()
    if len(rows_of) and (int(rows_of.min()) < 0 or int(rows_of.max()) >= len(y)):
        raise IndexError("category id outside the category table")
    out = torch.empty((rows, (bits + 63) // 64), dtype=torch.int64)
    _library().etarec_sign_pack(x.data_ptr(), y.data_ptr(), rows_of.data_ptr(), rows, bits, torch.get_num_threads(),
                                out.data_ptr())
    return out
