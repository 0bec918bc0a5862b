"""Retrieval recall: the share of the exact inner-product top-k that a model's own retrieval
returns, measured once per finished run and cached beside its metrics.json."""
from __future__ import annotations

import json

import numpy as np
import torch

from etarec.atomic import write_text_atomically
from etarec.compare.plan import Run
from etarec.config import ModelConfig
from etarec.data.batch import BatchBuilder
from etarec.data.prepared import Samples
from etarec.models import build_model
from etarec.models.base import RetrievedAttention
from etarec.nn.embeddings import Vocab
from etarec.retrieval.selectors import inner_product_top_k
from etarec.store.checkpoint import CHECKPOINT_FILE, load_checkpoint

RECALL_SAMPLES = 20_000  # test samples on which retrieval recall is measured
CACHE_FILE = "retrieval.json"


@torch.no_grad()
def retrieval_recall(model: torch.nn.Module, builder: BatchBuilder, samples: Samples, batch_size: int,
                     max_samples: int = RECALL_SAMPLES) -> float | None:
    """The share of the exact inner-product top-k (on the model's current item embeddings) that the
    model's own retrieve() returns. Counted over rows whose history holds more than k behaviours,
    where retrieval has to choose; None when there is no such row."""
    model.eval()
    chosen = np.sort(np.random.default_rng(0).choice(len(samples), min(max_samples, len(samples)), replace=False))
    hits = total = 0
    for start in range(0, len(chosen), batch_size):
        batch = builder.build(samples, chosen[start : start + batch_size])
        index, found = model.retrieve(batch)  # [B, K]
        target = model.embeddings.items(batch.target_item, batch.target_category)[:, None]  # [B, 1, item_dim]
        keys = model.embeddings.items(batch.history_items, batch.history_categories)  # [B, L, item_dim]
        exact, exact_found = (part[:, 0] for part in  # [B, K]
                              inner_product_top_k(target, keys, batch.history_mask, index.shape[1]))
        choosing = batch.history_mask.sum(1) > index.shape[1]  # [B]
        retrieved = torch.zeros_like(batch.history_mask).scatter_(1, index, found)  # [B, L]
        hits += int((retrieved.gather(1, exact) & exact_found)[choosing].sum())
        total += int(exact_found[choosing].sum())
    return hits / total if total else None


def retrieves(config: ModelConfig) -> bool:
    """Whether the model selects behaviours from its long window (what retrieve() returns), so that
    recall has a meaning: asked of the model built on a tiny vocabulary, without weights or data."""
    model = build_model(config, Vocab(num_users=2, num_items=2, num_categories=2, num_actions=2))
    return isinstance(model.long_interest, RetrievedAttention)


def run_recall(run: Run, data, metrics: dict, say) -> float | None:
    """Retrieval recall of a finished run (cached in its folder beside metrics.json, for the config
    the metrics were written for); None for a model that does not retrieve, or when the run's
    weights are gone. A cached value is read without loading the model, so the tables of
    recorded runs need neither their weights nor their data."""
    cache = run.folder / CACHE_FILE
    try:
        saved = json.loads(cache.read_text())
        if saved.get("config") == metrics["config"]:
            return saved["recall"]
    except (OSError, json.JSONDecodeError):
        pass
    if not retrieves(run.config.model):
        return None
    if not (run.folder / CHECKPOINT_FILE).is_file():
        say(f"{run.describe()}: no retrieval recall, its weights ({CHECKPOINT_FILE}) are not in {run.folder}")
        return None
    model, config, _ = load_checkpoint(run.folder, expected_model=run.config.model.name)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len, model.inputs)
    test = data.splits["test"]
    recall = retrieval_recall(model, builder, test, config.train.eval_batch_size)
    write_text_atomically(cache, json.dumps({"recall": recall, "test_samples": min(RECALL_SAMPLES, len(test)),
                                             "config": metrics["config"]}, indent=2))
    return recall
