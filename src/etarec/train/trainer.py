"""The training loop: Adam + BCE, early stopping on valid AUC, best checkpoint, metrics.json.

Knows models only through forward(Batch) -> logits.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from etarec.config import Config, dump_config
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import PreparedData, Samples
from etarec.models import build_model, model_class
from etarec.nn.embeddings import Vocab
from etarec.train.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from etarec.train.metrics import all_metrics
from etarec.train.optim import make_optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_text_atomically(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: tmp.write_text(text))


@torch.no_grad()
def predict(model: nn.Module, builder: BatchBuilder, samples: Samples, batch_size: int,
            progress: bool = False, description: str = "evaluate") -> tuple[np.ndarray, float]:
    """(probabilities [N], inference samples/s) over a split, in sample order."""
    model.eval()
    outputs = []
    started = time.perf_counter()
    batches = builder.batches(samples, batch_size)
    total = math.ceil(len(samples) / batch_size)
    for batch in tqdm(batches, total=total, desc=description, disable=not progress, leave=False):
        outputs.append(torch.sigmoid(model(batch)))
    seconds = time.perf_counter() - started
    probabilities = torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)
    return probabilities, len(samples) / max(seconds, 1e-9)


def evaluate_split(model: nn.Module, builder: BatchBuilder, samples: Samples, batch_size: int,
                   progress: bool = False, description: str = "evaluate") -> dict[str, float]:
    probabilities, samples_per_second = predict(model, builder, samples, batch_size, progress, description)
    metrics = all_metrics(samples.user, samples.label, probabilities)
    metrics["infer_samples_per_second"] = samples_per_second
    return metrics


def _train_epoch(model, optimizer, builder, samples, config: Config, epoch: int, progress: bool) -> tuple[float, int, float]:
    """One pass over the (shuffled) train split: (mean loss, samples seen, seconds)."""
    model.train()
    steps = math.ceil(len(samples) / config.train.batch_size)
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    batches = builder.batches(samples, config.train.batch_size, shuffle=True, seed=config.train.seed, epoch=epoch)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.train.epochs}", disable=not progress, leave=False)
    loss_sum, seen, running = 0.0, 0, None
    started = time.perf_counter()
    for _, batch in zip(range(steps), batches):
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        value = loss.item()
        loss_sum += value * len(batch)
        seen += len(batch)
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.update()
        bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    return loss_sum / max(seen, 1), seen, time.perf_counter() - started


def train(config: Config, out: str | Path, progress: bool = True, log=print, data: PreparedData | None = None) -> dict:
    """Train `config` into folder `out` (config.yaml, model.pt of the best epoch, metrics.json)."""
    model_class(config.model.name)  # fail on a bad name before writing or preparing anything
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "config.yaml", dump_config(config))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    data = data or ensure_prepared(config.data, log=log)
    vocab = Vocab.from_meta(data.meta)
    seed_everything(config.train.seed)
    model = build_model(config.model, vocab)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len)
    optimizer = make_optimizer(model, config.train)
    train_split, valid_split = data.splits["train"], data.splits["valid"]

    best_auc, best_epoch, stale = -math.inf, -1, 0
    history, train_seconds, train_samples = [], 0.0, 0
    for epoch in range(config.train.epochs):
        loss, seen, seconds = _train_epoch(model, optimizer, builder, train_split, config, epoch, progress)
        train_seconds += seconds
        train_samples += seen
        valid = evaluate_split(model, builder, valid_split, config.train.eval_batch_size, progress, "valid")
        history.append({"epoch": epoch + 1, "train_loss": loss, "train_seconds": seconds, **{f"valid_{k}": v for k, v in valid.items()}})
        log(f"epoch {epoch + 1}: train loss {loss:.4f} ({seen / seconds:,.0f} samples/s), "
            f"valid auc {valid['auc']:.4f} gauc {valid['gauc']:.4f} logloss {valid['logloss']:.4f}")
        if valid["auc"] > best_auc:
            best_auc, best_epoch, stale = valid["auc"], epoch + 1, 0
            save_checkpoint(out, model, config, vocab, epoch=epoch + 1, valid_auc=valid["auc"])
        else:
            stale += 1
            if stale > config.train.patience:
                log(f"early stop: valid auc has not improved for {stale} epoch(s)")
                break

    model, _, _ = load_checkpoint(out, expected_model=config.model.name)
    valid = evaluate_split(model, builder, valid_split, config.train.eval_batch_size, progress, "valid")
    test = evaluate_split(model, builder, data.splits["test"], config.train.eval_batch_size, progress, "test")
    metrics = {
        "model": config.model.name,
        "dataset": data.meta["dataset"],
        "best_epoch": best_epoch,
        "epochs": len(history),
        "valid": valid,
        "test": test,
        "train_seconds": train_seconds,
        "train_seconds_per_epoch": train_seconds / len(history),
        "train_samples_per_second": train_samples / max(train_seconds, 1e-9),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "history": history,
        "config": config.model_dump(mode="json"),
    }
    write_text_atomically(out / "metrics.json", json.dumps(metrics, indent=2))
    log(f"{config.model.name}: test auc {test['auc']:.4f} gauc {test['gauc']:.4f} logloss {test['logloss']:.4f} "
        f"(best epoch {best_epoch}, {train_seconds:.0f}s training) -> {out}")
    return metrics
