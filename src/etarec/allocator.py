"""Keep freed heap memory for the next step instead of handing it back to the kernel.

A training or scoring step allocates and frees the same tens of MB of tensors every time. glibc's
malloc serves blocks above its mmap threshold with fresh mmap()s and returns them on free, and
trims the heap top beyond M_TRIM_THRESHOLD; either way the next step page-faults the same memory
in again. Measured on the peer's L = 16,384 workload (ETA, batch 256, 2 cores): 7,757 minor page
faults per training step by default, 261 with this setting; the step fell from ~150 ms to ~120 ms
at the same peak RSS (benchmarks/RESULTS.md, "End to end at long histories").

keep_freed_memory() sets M_MMAP_MAX = 0 (every block from the heap) and M_TRIM_THRESHOLD to
2 GiB, once per process, in the CLI entry points that run steps (train, evaluate, serve, compare).
The cost: a process keeps its peak heap until it exits, as a caching allocator does.
ETAREC_KEEP_FREED_MEMORY=0 turns it off; other C libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

_M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 2 * 2**30


@cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc as described above; True when it was applied."""
    if os.environ.get("ETAREC_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def configure_step_process() -> None:
    """What a process that runs model steps over and over sets before torch loads: freed memory
    kept (above), and OpenMP threads that wait passively. Spinning waits hold their core while
    the thread they wait for has been preempted by another process: one busy process beside a
    2-thread ETA step at L = 4,096 made it 3.3x slower; waiting passively, 1.7x, at 8% of the
    quiet speed (RESULTS.md, "End to end at long histories"). The OpenMP runtime reads the
    variable when it loads, with torch, so this must come first; a user's own setting wins."""
    keep_freed_memory()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
