"""The one rule for when CPU-only fast paths (the native kernel, numpy's popcount and partition)
may replace torch ops: the tensors are on the CPU and no tracer, exporter or compiler is watching
(they need torch ops to record; numpy and ctypes calls are invisible to them)."""
from __future__ import annotations

import torch


def cpu_fast_path(tensor: torch.Tensor) -> bool:
    return (tensor.device.type == "cpu" and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting())
