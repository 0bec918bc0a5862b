"""The rules for when fast paths may replace the plain torch ops, which run everywhere and record
under tracers, exporters and compilers:

cpu_fast_path     CPU-only code (the native kernel, numpy's popcount and partition): the tensors
                  are on the CPU and no tracer, exporter or compiler is watching (they need torch
                  ops to record; numpy and ctypes calls are invisible to them).
compiled_path     the same torch ops fused into one kernel by torch.compile (Triton): the tensors
                  are on a CUDA device, Triton is there, ETAREC_COMPILE is not 0, and nothing is
                  tracing, exporting or compiling already (inside a compiler the plain ops are
                  traced as they are).

Both give exactly the plain ops' results: the paths differ in speed only.
"""
from __future__ import annotations

import os
from functools import cache

import torch


def _watched() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def cpu_fast_path(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and not _watched()


@cache
def _can_compile() -> bool:
    if os.environ.get("ETAREC_COMPILE", "1") == "0":
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def compiled_path(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda" and _can_compile() and not _watched()


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(table: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A module's constant table (made on the CPU at import) on `device` as `dtype`: copied to
    another device once per process instead of on every call (a copy per call would be a host
    to device transfer on the hot path). On the table's own device it is table.to(dtype)."""
    dtype = dtype or table.dtype
    if device == table.device:
        return table.to(dtype)
    key = (id(table), device, dtype)
    found = _CONSTANTS.get(key)
    if found is None:
        with torch.inference_mode(False):  # usable outside inference mode too
            found = table.to(device=device, dtype=dtype)
        if not _watched():  # a tracer's or compiler's fake tensor must not outlive its trace
            _CONSTANTS[key] = found
    return found
