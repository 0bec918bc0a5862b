"""The training loop: Adam + BCE, early stopping on valid AUC, best checkpoint, metrics.json; on one
process or many (torchrun + DDP), resumable at any step.

Knows models only through forward(Batch) -> logits.

Many processes (torchrun): `train.batch_size` is the GLOBAL batch. All ranks compute the same epoch
order from (seed, epoch); World.local_batch gives each its disjoint part of every global batch and
the loss factor that makes DDP's averaged gradient the global batch's mean gradient, so N processes
take the same steps as one. Valid/test predictions are gathered from all ranks and scored once
(one AUC over all samples, not an average of per-rank AUCs). Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from etarec.atomic import write_text_atomically
from etarec.config import Config, build_config, dump_config
from etarec.data.batch import Batch, BatchBuilder, epoch_order, rank_share
from etarec.data.prefetch import prefetched
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import PreparedData, Samples, SplitShare
from etarec.errors import EtarecError
from etarec.models import build_model, model_class
from etarec.nn.embeddings import Vocab
from etarec.train import distributed
from etarec.store.checkpoint import load_checkpoint, save_checkpoint
from etarec.train.distributed import World
from etarec.train.inference import predict
from etarec.train.metrics import DEFAULT_LENGTH_EDGES, all_metrics, metrics_by_length
from etarec.train.state import STATE_FILE, Progress, load_state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_split(model: nn.Module, builder: BatchBuilder, samples: Samples, batch_size: int,
                   progress: bool = False, description: str = "evaluate", world: World = World(),
                   length_edges=None, equal_passes: bool = False, held: SplitShare | None = None) -> dict:
    """Metrics over a split; with several ranks each predicts its share and all scores are gathered first.
    With length_edges, also "by_length": the metrics per bucket of real history length (metrics_by_length).
    equal_passes: every rank runs as many forward passes (sharded tables: each pass is collective);
    a shorter share is padded with copies of its first sample, whose scores are dropped.
    held: `samples` is this rank's part of a split held by share; its samples are all it predicts."""
    started = time.perf_counter()
    share = np.arange(len(samples)) if held is not None else rank_share(np.arange(len(samples)), world.rank, world.size)
    predicted = len(share)
    if equal_passes:
        passes = world.max(math.ceil(len(share) / batch_size))
        if passes and not len(samples):
            raise EtarecError(f"rank {world.rank} holds no {description} sample; train on fewer processes")
        share = np.concatenate([share, np.zeros(max(0, (passes - 1) * batch_size + 1 - len(share)), dtype=share.dtype)])
    mine = Samples(**{f.name: getattr(samples, f.name)[share] for f in fields(Samples)})
    # a collective forward (sharded tables) must run whole batches, in step with the other ranks
    local, _ = predict(model, builder, mine, batch_size, progress and world.main, description,
                       workers=1 if equal_passes else None)
    local = local[:predicted]
    if held is None:
        probabilities = world.gather_shares(local, len(samples))
    else:  # the whole split, in its order, from every rank's part
        probabilities = world.gather_by_id(held.ids, local, held.total)
        samples = Samples(**{f.name: world.gather_by_id(held.ids, getattr(samples, f.name), held.total)
                             for f in fields(Samples)})
    metrics = all_metrics(samples.user, samples.label, probabilities)
    if length_edges is not None:
        metrics["by_length"] = metrics_by_length(samples.user, samples.label, probabilities, samples.position, length_edges)
    metrics["infer_samples_per_second"] = len(samples) / max(time.perf_counter() - started, 1e-9)
    return metrics


@dataclass
class _Job:
    """What one training run works with, on this rank."""

    config: Config
    out: Path
    world: World
    data: PreparedData
    model: nn.Module  # the plain model: evaluation, checkpoints, state
    replica: nn.Module  # what the training steps call: the DDP wrapper with several ranks
    optimizer: object
    builder: BatchBuilder
    log: object
    progress: bool
    parallel: distributed.DataParallel  # how the model is spread over the ranks (or ShardedTables)

    def save_state(self, progress: Progress) -> None:
        self.parallel.save_state(self.out, self.config, self.data.meta, self.model, self.optimizer, progress)


def _precision(precision: str, device: torch.device):
    """train.precision: float32 runs as written; bfloat16 autocasts the forward pass and loss (the
    weights, their gradients and the optimizer stay float32; signatures are hashed in float32)."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _local_batch(job: _Job, samples: Samples, global_index: np.ndarray) -> tuple[Batch, float]:
    """This rank's part of a global batch, built (and pinned for a CUDA device), with its loss
    factor (World.local_batch). Runs in the prefetching thread."""
    local, scale = job.world.local_batch(global_index)
    batch = job.builder.build(samples, local)
    if job.world.device.type == "cuda":
        batch = batch.pin_memory()  # page-locked, so the copy in _step leaves the host free to go on
    return batch, scale


def _step(job: _Job, batch: Batch, scale: float) -> torch.Tensor:
    """One optimizer step on this rank's part of a global batch; returns the batch's BCE sum over
    all ranks as a 0-d tensor on the device: reading it waits for the device, so the loop reads
    it only when needed."""
    world = job.world
    batch = batch.to(world.device)
    with _precision(job.config.train.precision, world.device):
        losses = nn.functional.binary_cross_entropy_with_logits(job.replica(batch), batch.labels, reduction="none")
    job.optimizer.zero_grad(set_to_none=True)
    (losses.sum() * scale).backward()
    if job.config.train.grad_clip:
        job.parallel.clip_gradients(job.model, job.config.train.grad_clip)
    job.optimizer.step()
    return world.sum(losses.detach().sum() * bool(scale))


POSTFIX_SECONDS = 0.5  # the progress bar's loss is refreshed this often (each refresh reads the device)


def _train_epoch(job: _Job, state: Progress) -> None:
    """Run the current epoch from state.step to its end, saving state every state_every_steps.

    Step losses stay on the device until the bar, a state save or the epoch's end needs them; they
    are then added to epoch_loss_sum one by one, in step order, as Python floats (the same sum as
    reading each at once)."""
    train_config = job.config.train
    samples = job.data.splits["train"]
    steps = math.ceil(job.data.split_size("train") / train_config.batch_size)
    if train_config.max_steps_per_epoch:
        steps = min(steps, train_config.max_steps_per_epoch)
    order = epoch_order(job.data.split_size("train"), train_config.seed, state.epoch)
    job.replica.train()
    bar = tqdm(total=steps, initial=state.step, desc=f"epoch {state.epoch + 1}/{train_config.epochs}",
               disable=not (job.progress and job.world.main), leave=False)
    pending: list[tuple[torch.Tensor, int]] = []  # (loss sum, samples) of steps not yet read

    def read_pending() -> None:
        if not pending:
            return
        loss_sums = torch.stack([loss_sum for loss_sum, _ in pending]).tolist()  # one wait for all of them
        for loss_sum in loss_sums:
            state.epoch_loss_sum += loss_sum
        bar.set_postfix(loss=f"{loss_sums[-1] / pending[-1][1]:.4f}")
        pending.clear()

    size = train_config.batch_size
    global_batches = [order[step * size : (step + 1) * size] for step in range(state.step, steps)]
    batches = prefetched(lambda global_index: _local_batch(job, samples, global_index), global_batches,
                         train_config.prefetch)
    started = shown = time.perf_counter()
    for global_index, (batch, scale) in zip(global_batches, batches):
        step_started = time.perf_counter()
        pending.append((_step(job, batch, scale), len(global_index)))
        state.epoch_step_seconds += time.perf_counter() - step_started
        state.step += 1
        state.epoch_samples += len(global_index)
        bar.update()
        if not bar.disable and time.perf_counter() - shown >= POSTFIX_SECONDS:
            read_pending()
            shown = time.perf_counter()
        every = train_config.state_every_steps
        if every and state.step % every == 0 and state.step < steps:
            read_pending()
            state.epoch_seconds += time.perf_counter() - started
            job.save_state(state)
            started = time.perf_counter()  # the save is not training time
    batches.close()
    read_pending()
    state.epoch_seconds += time.perf_counter() - started
    bar.close()


def _end_epoch(job: _Job, state: Progress, vocab: Vocab) -> None:
    """Validate, keep the best checkpoint, decide on early stopping, move the position on."""
    valid = evaluate_split(job.model, job.builder, job.data.splits["valid"], job.config.train.eval_batch_size,
                           job.progress, "valid", job.world, equal_passes=job.parallel.collective_forward,
                           held=job.data.shares and job.data.shares["valid"])
    loss = state.epoch_loss_sum / max(state.epoch_samples, 1)
    seconds, step_seconds = state.epoch_seconds, state.epoch_step_seconds
    state.history.append({"epoch": state.epoch + 1, "train_loss": loss, "train_seconds": seconds,
                          "train_step_seconds": step_seconds, **{f"valid_{k}": v for k, v in valid.items()}})
    job.log(f"epoch {state.epoch + 1}: train loss {loss:.4f} ({state.epoch_samples / max(seconds, 1e-9):,.0f} samples/s, "
            f"steps alone {state.epoch_samples / max(step_seconds, 1e-9):,.0f}), valid auc {valid['auc']:.4f} gauc {valid['gauc']:.4f} logloss {valid['logloss']:.4f}")
    if valid["auc"] > state.best_auc:
        state.best_auc, state.best_epoch, state.stale = valid["auc"], state.epoch + 1, 0
        weights = job.parallel.plain_state_dict(job.model)  # every rank takes part (sharded tables are gathered)
        if job.world.main:
            save_checkpoint(job.out, weights, job.config, vocab, epoch=state.epoch + 1, valid_auc=valid["auc"])
    else:
        state.stale += 1
        if state.stale > job.config.train.patience:
            job.log(f"early stop: valid auc has not improved for {state.stale} epoch(s)")
            state.done = True
    state.train_seconds += seconds
    state.train_step_seconds += step_seconds
    state.train_samples += state.epoch_samples
    state.epoch += 1
    state.done = state.done or state.epoch == job.config.train.epochs
    state.step, state.epoch_loss_sum, state.epoch_samples, state.epoch_seconds = 0, 0.0, 0, 0.0
    state.epoch_step_seconds = 0.0
    job.save_state(state)


def _prepared(config: Config, world: World, log) -> PreparedData:
    """Each rank's prepared data. Rank 0 prepares first, then the first process of every other
    machine (which finds the data when the folder is shared, else prepares its own copy), then
    the rest load it: no two processes ever write the same folder. Held by share (train.data_by_share,
    by default with sharded tables) each of several ranks loads only its share (prepared.load_prepared)."""
    by_share = config.train.data_by_share
    if by_share is None:
        by_share = config.model.embeddings == "torchrec"
    share = (world.rank, world.size) if by_share and world.size > 1 else None
    data = None
    for my_turn in (world.main, world.local_rank == 0, True):
        if my_turn and data is None:
            data = ensure_prepared(config.data, log=log, share=share)
        world.barrier()
    return data


def _fit(config: Config, out: Path, world: World, progress: bool, log, data: PreparedData | None,
         saved: dict | None) -> dict:
    log = log if world.main else (lambda *_: None)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp-*"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        if saved is None:  # a new run never resumes an old run's state, nor leaves its metrics beside its config
            (out / STATE_FILE).unlink(missing_ok=True)
            (out / "metrics.json").unlink(missing_ok=True)
        write_text_atomically(out / "config.yaml", dump_config(config))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    data = data or _prepared(config, world, log)
    if data.shares is not None:  # held by share: each rank's part of a global batch is what it holds of it
        world = dataclasses.replace(world, train_ids=data.shares["train"].ids)
    vocab = Vocab.from_meta(data.meta)
    seed_everything(config.train.seed)
    model = build_model(config.model, vocab).to(world.device)  # the same initial weights on every rank
    model.embeddings.use_catalog(torch.from_numpy(data.item_category).to(world.device))
    parallel = distributed.parallel_for(config, world)
    model = parallel.prepare(model)
    optimizer = parallel.optimizer(model, config.train)
    # dropout draws differ between ranks, as they would between the samples of one process
    torch.manual_seed(int(np.random.SeedSequence([config.train.seed, world.rank]).generate_state(1)[0]))
    state = Progress()
    if saved is not None:
        state = parallel.restore(saved, out, data.meta, model, optimizer)
        log(f"resuming {out}: epoch {state.epoch + 1}, step {state.step}" if not state.done
            else f"resuming {out}: training had ended, evaluating the best epoch")
    job = _Job(config, out, world, data, model, parallel.replica(model), optimizer,
               BatchBuilder(data, config.model.long_len, config.model.short_len, model.inputs), log, progress, parallel)
    while not state.done:
        _train_epoch(job, state)
        _end_epoch(job, state, vocab)
    return _finish(job, state)


def _finish(job: _Job, state: Progress) -> dict:
    """Score the best epoch's checkpoint on valid and test; rank 0 writes metrics.json."""
    config, data, world = job.config, job.data, job.world
    best = world.from_main(lambda: load_checkpoint(job.out, expected_model=config.model.name)[0].state_dict())
    job.parallel.load_plain_state_dict(job.model, best)
    equal, shares = job.parallel.collective_forward, data.shares or {}
    valid = evaluate_split(job.model, job.builder, data.splits["valid"], config.train.eval_batch_size,
                           job.progress, "valid", world, DEFAULT_LENGTH_EDGES, equal, shares.get("valid"))
    test = evaluate_split(job.model, job.builder, data.splits["test"], config.train.eval_batch_size,
                          job.progress, "test", world, DEFAULT_LENGTH_EDGES, equal, shares.get("test"))
    metrics = {
        "model": config.model.name,
        "dataset": data.meta["dataset"],
        "best_epoch": state.best_epoch,
        "epochs": len(state.history),
        "valid": valid,
        "test": test,
        "train_seconds": state.train_seconds,
        "train_seconds_per_epoch": state.train_seconds / len(state.history),
        # the loop (batch building and the waits for it included) and the steps alone
        "train_samples_per_second": state.train_samples / max(state.train_seconds, 1e-9),
        "train_step_samples_per_second": state.train_samples / max(state.train_step_seconds, 1e-9),
        "parameters": sum(p.numel() for p in job.model.parameters()),
        "threads": torch.get_num_threads(),
        "processes": world.size,
        "history": state.history,
        "config": config.model_dump(mode="json"),
    }
    if world.main:
        write_text_atomically(job.out / "metrics.json", json.dumps(metrics, indent=2))
    job.log(f"{config.model.name}: test auc {test['auc']:.4f} gauc {test['gauc']:.4f} logloss {test['logloss']:.4f} "
            f"(best epoch {state.best_epoch}, {state.train_seconds:.0f}s training) -> {job.out}")
    return metrics


def train(config: Config, out: str | Path, progress: bool = True, log=print, data: PreparedData | None = None,
          device: str | torch.device | None = None) -> dict:
    """Train `config` into folder `out` (config.yaml, model.pt of the best epoch, state.pt,
    metrics.json), on all processes that torchrun started (or this one alone). device: where one
    process trains (default: CUDA when there is one, else the CPU); several take one GPU each."""
    model_class(config.model.name)  # fail on a bad name before writing or preparing anything
    with distributed.started() as world:
        if device is not None:
            if world.size > 1:
                raise EtarecError("train(device=...) is for one process; under torchrun each process takes its GPU")
            world = dataclasses.replace(world, device=torch.device(device))
        return _fit(config, Path(out), world, progress, log, data, saved=None)


def resume(out: str | Path, progress: bool = True, log=print, data: PreparedData | None = None) -> dict:
    """Continue the run in folder `out` from its state.pt, exactly where it was saved; with the
    same number of processes it was started with."""
    out = Path(out)
    with distributed.started() as world:
        saved = world.from_main(lambda: load_state(out))
        return _fit(build_config(saved["config"]), out, world, progress, log, data, saved)
