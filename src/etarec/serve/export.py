"""`etarec export`: the model's serving path as one ONNX graph, and its parity check on real samples.

The graph is the model's own user side and candidate side (models/base.py, shared=True) without
the item cache: it embeds and hashes the request's items itself, so the retrieval (for ETA: sign
product + TopK) runs inside the graph as in the model.
Inputs (int64 unless noted; N requests, L behaviours, C candidates, all three axes dynamic):
    user [N], user_profile [N, P], history_items / history_categories / history_actions /
    history_time_gaps [N, L], history_mask [N, L] bool, candidate_items / candidate_categories [N, C]
Outputs: logits [N, C], probabilities [N, C] float32.
A model trained on N samples scores them with C = 1; a request for one user is N = 1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from etarec.data.batch import Batch, UserHistory
from etarec.errors import EtarecError
from etarec.store.checkpoint import load_checkpoint

INPUTS = ("user", "user_profile", "history_items", "history_categories", "history_actions", "history_time_gaps",
          "history_mask", "candidate_items", "candidate_categories")
OUTPUTS = ("logits", "probabilities")
TOLERANCE = 1e-5  # largest |probability difference| the parity check accepts


class RequestGraph(nn.Module):
    """The model's serving path with named inputs (the export maps them to graph inputs) and both outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, user, user_profile, history_items, history_categories, history_actions, history_time_gaps,
                history_mask, candidate_items, candidate_categories):
        history = UserHistory(user, user_profile, history_items, history_categories, history_actions,
                              history_time_gaps, history_mask)
        side = self.model.user_side(history, shared=True)
        logits = self.model.candidate_logits(side, candidate_items, candidate_categories)  # [N, C]
        return logits, torch.sigmoid(logits)


def batch_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """A Batch as graph inputs: each sample is a request with its target as the one candidate.
    Id columns go in as int64, the graph's id type (a built batch holds int32 windows)."""
    inputs = {"user": batch.user, "user_profile": batch.user_profile, "history_items": batch.history_items,
            "history_categories": batch.history_categories, "history_actions": batch.history_actions,
            "history_time_gaps": batch.history_time_gaps, "history_mask": batch.history_mask,
            "candidate_items": batch.target_item[:, None], "candidate_categories": batch.target_category[:, None]}
    return {name: column.to(torch.int64) if column.dtype == torch.int32 else column for name, column in inputs.items()}


def export_onnx(folder: str | Path, out: str | Path) -> Path:
    """Write the checkpoint in `folder` as an ONNX graph to `out` (atomically); returns `out`."""
    _require("onnx", "onnxscript")
    model, config, _ = load_checkpoint(Path(folder))
    graph = RequestGraph(model).eval()
    # example shapes only fix the trace; every axis below is dynamic
    example = _example(model, config.model.short_len + 3, candidates=3)
    batch, history, candidates = (torch.export.Dim(name) for name in ("batch", "history", "candidates"))
    per_request, per_behaviour, per_candidate = {0: batch}, {0: batch, 1: history}, {0: batch, 1: candidates}
    dynamic = (per_request, per_request) + (per_behaviour,) * 5 + (per_candidate,) * 2
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with _quiet_exporter():
            torch.onnx.export(graph, tuple(example.values()), str(tmp), input_names=list(INPUTS),
                              output_names=list(OUTPUTS), dynamic_shapes=dynamic, dynamo=True,
                              external_data=False, verbose=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def check_onnx(folder: str | Path, onnx_file: str | Path, samples: int = 512, candidates: int = 64) -> dict:
    """Parity of the graph on onnxruntime with the PyTorch model on real test samples.

    Two shapes: `samples` test samples as N requests of one candidate each (the model's own
    Batch), and one sample's history shared by `candidates` candidates (a serving request). Raises
    EtarecError when a probability differs by more than TOLERANCE.
    """
    _require("onnxruntime")
    import onnxruntime

    from etarec.data.batch import BatchBuilder
    from etarec.data.prepare import ensure_prepared

    model, config, _ = load_checkpoint(Path(folder))
    data = ensure_prepared(config.data, log=lambda *_: None)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len)
    test = data.splits["test"]
    batch = builder.build(test, np.arange(min(samples, len(test))))
    request = shared_history(batch, min(candidates, len(batch)))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    report = {"model": config.model.name, "onnx": str(onnx_file), "tolerance": TOLERANCE}
    for name, shaped, feeds in (("samples", batch, batch_inputs(batch)), ("request", request, request_inputs(request))):
        with torch.no_grad():
            logits = model(shaped).numpy()
        feeds = {key: value.numpy() for key, value in feeds.items()}
        started = time.perf_counter()
        onnx_logits, onnx_probabilities = session.run(list(OUTPUTS), feeds)
        seconds = time.perf_counter() - started
        report[name] = {
            "shape": {"batch": int(feeds["user"].shape[0]), "history": int(feeds["history_items"].shape[1]),
                      "candidates": int(feeds["candidate_items"].shape[1])},
            "max_abs_diff_probability": float(np.abs(onnx_probabilities.reshape(-1) - _sigmoid(logits)).max()),
            "max_abs_diff_logit": float(np.abs(onnx_logits.reshape(-1) - logits).max()),
            "onnxruntime_ms": 1e3 * seconds,
        }
    worst = max(report[name]["max_abs_diff_probability"] for name in ("samples", "request"))
    report["passed"] = worst <= TOLERANCE
    if not report["passed"]:
        raise EtarecError(f"ONNX parity check failed: probabilities differ by up to {worst:.2e} (> {TOLERANCE:g}) "
                          f"from PyTorch on real samples; report this with the checkpoint")
    return report


def shared_history(batch: Batch, candidates: int) -> Batch:
    """The first sample's history repeated for the targets of the first `candidates` samples."""
    first = torch.zeros(candidates, dtype=torch.int64)
    rows = {field.name: getattr(batch, field.name)[first] for field in dataclasses.fields(batch)
            if isinstance(getattr(batch, field.name), torch.Tensor)}
    rows |= {"target_item": batch.target_item[:candidates], "target_category": batch.target_category[:candidates]}
    return dataclasses.replace(batch, **rows)


def request_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """A shared_history() Batch as one request (N = 1): its history once, its targets as the C candidates."""
    inputs = {key: value[:1] for key, value in batch_inputs(batch).items()}
    return inputs | {"candidate_items": batch.target_item[None, :], "candidate_categories": batch.target_category[None, :]}


def _example(model: nn.Module, length: int, candidates: int) -> dict[str, torch.Tensor]:
    """Small valid inputs (N = 2) for tracing; distinct tensors (the exporter merges aliased inputs)."""
    profiles = model.embeddings.num_profiles

    def ids(count: int) -> torch.Tensor:
        return torch.full((2, count), 2)  # item / category 2: the first real one

    return {"user": torch.zeros(2, dtype=torch.int64), "user_profile": torch.zeros((2, profiles), dtype=torch.int64),
            "history_items": ids(length), "history_categories": ids(length), "history_actions": ids(length),
            "history_time_gaps": ids(length), "history_mask": torch.ones((2, length), dtype=torch.bool),
            "candidate_items": ids(candidates), "candidate_categories": ids(candidates)}


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _require(*modules: str) -> None:
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EtarecError(f"ONNX export needs {', '.join(missing)}; install them with: pip install 'etarec[serve]'")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress lines, registration notes and deprecation warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
