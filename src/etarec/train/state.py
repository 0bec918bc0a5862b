"""Resumable training state: what a run killed at any point (kill -9 included) needs to go on
exactly as if it had never stopped.

`state.pt` in the run folder holds the model and optimizer state, every rank's RNG states, the
position in the data (epochs done, global steps done in the current epoch: the epoch's order is a
function of the seed, so the position is enough) and the loop's counters. It is apart from
model.pt, the best epoch's weights for evaluation and serving (train/checkpoint.py).

Rank 0 writes it every train.state_every_steps steps and after every epoch, to a temp file that is
fsynced and then renamed over the old one: at any instant the folder holds a complete state.

A run with sharded tables (model.embeddings: torchrec) keeps the tables and their Adam moments out
of state.pt: every process writes its shards to a fresh folder state-shards-EPOCH-STEP with
torch.distributed.checkpoint, then state.pt (the dense part, as above) is renamed in naming it,
and older shard folders are removed. A kill before the rename leaves the previous pair whole.
"""
from __future__ import annotations

import math
import os
import pickle
import random
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from etarec.config import Config, build_config
from etarec.errors import EtarecError
from etarec.atomic import atomic_write_bytes

STATE_FILE = "state.pt"
FORMAT = "etarec-train-state-v1"


@dataclass
class Progress:
    """Where the loop stands; everything in it is a plain value, saved as is."""

    epoch: int = 0  # epochs finished
    step: int = 0  # global steps done in the current epoch
    epoch_loss_sum: float = 0.0  # BCE summed over the current epoch's samples so far
    epoch_samples: int = 0
    epoch_seconds: float = 0.0  # the loop's time: steps and the waits for their batches
    epoch_step_seconds: float = 0.0  # the steps alone (batch ready -> optimizer step done)
    best_auc: float = -math.inf
    best_epoch: int = -1
    stale: int = 0  # epochs since the best one
    done: bool = False  # the epoch loop has ended (all epochs, or early stop)
    train_seconds: float = 0.0
    train_step_seconds: float = 0.0
    train_samples: int = 0
    history: list = field(default_factory=list)


def rng_states(device: torch.device) -> dict:
    """This process's generators (torch, numpy, Python; CUDA's on a GPU) as plain values and tensors."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def data_identity(meta: dict) -> dict:
    """What the data position refers to: a state only fits the same prepared samples."""
    return {"fingerprint": meta["fingerprint"], "num_events": meta["num_events"], "splits": meta["splits"]}


def save_state(folder: Path, config: Config, meta: dict, model_state: dict, optimizer_state: dict,
               rngs: list[dict], progress: Progress, **extra) -> None:
    """Write state.pt atomically; `rngs` holds every rank's rng_states(), in rank order. extra:
    more plain values (a sharded run: the name of its shard folder, see save_shards)."""
    payload = {
        "format": FORMAT,
        "config": config.model_dump(mode="json"),
        "data": data_identity(meta),
        "world_size": len(rngs),
        "model": model_state,
        "optimizer": optimizer_state,
        "rng": rngs,
        "progress": asdict(progress),
        **extra,
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename makes it the state

    atomic_write_bytes(Path(folder) / STATE_FILE, write)


SHARDS = "state-shards"  # folder name prefix of a sharded run's tables in its state


def shards_name(progress: Progress) -> str:
    """A fresh folder per save position: the one state.pt names stays whole while the next is written."""
    return f"{SHARDS}-{progress.epoch}-{progress.step}"


def save_shards(folder: Path, name: str, tensors: dict, main: bool, barrier) -> None:
    """Every process writes its shards of `tensors` (ShardedTensors) to folder/name with
    torch.distributed.checkpoint. Collective. Only a later state.pt naming the folder makes it
    the state, so a kill while writing leaves the previous state whole."""
    import shutil

    import torch.distributed.checkpoint as dcp

    path = Path(folder) / name
    if main:
        shutil.rmtree(path, ignore_errors=True)  # half written by a killed run at the same position
    barrier()
    dcp.save(tensors, checkpoint_id=path)  # files fsynced before it returns
    barrier()


def load_shards(folder: Path, name: str, tensors: dict) -> None:
    """Read this process's shards of folder/name into `tensors` in place. Collective."""
    import torch.distributed.checkpoint as dcp

    path = Path(folder) / name
    if not path.is_dir():
        raise EtarecError(f"{Path(folder) / STATE_FILE} names the shard folder {name}, which is missing; "
                          "copy the whole run folder, or start the run again")
    dcp.load(tensors, checkpoint_id=path)


def drop_old_shards(folder: Path, keep: str) -> None:
    """Remove the shard folders state.pt no longer names."""
    import shutil

    for path in Path(folder).glob(f"{SHARDS}-*"):
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def load_state(folder: Path) -> dict:
    """The payload of folder/state.pt, checked against the run's config.yaml. One EtarecError line
    naming the problem and the fix for a missing, truncated or foreign file."""
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        raise EtarecError(
            f"{folder} holds no training state ({STATE_FILE}); --resume takes the --out folder of an "
            "`etarec train` run, to start a new run pass --config and --out instead"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise EtarecError(f"training state {path} is truncated or corrupt ({reason}); it cannot be resumed, "
                          f"start the run again with `etarec train --config ... --out {folder}`") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EtarecError(f"{path} is not an etarec training state (format {FORMAT} expected); "
                          "pass the --out folder of an `etarec train` run to --resume")
    _check_own_run(folder, build_config(payload["config"]))
    return payload


def _check_own_run(folder: Path, config: Config) -> None:
    """state.pt and config.yaml must come from the same run (a copied-in state would train on)."""
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        return
    try:
        written = build_config(yaml.safe_load(config_file.read_text()) or {})
    except (yaml.YAMLError, EtarecError, AttributeError):
        raise EtarecError(f"{config_file} is corrupt; restore the run's config.yaml or delete it "
                          f"to resume with the config saved in {STATE_FILE}") from None
    ours, theirs = _flat(written.model_dump(mode="json")), _flat(config.model_dump(mode="json"))
    differing = [key for key in ours if ours[key] != theirs.get(key)]
    if differing:
        key = differing[0]
        raise EtarecError(
            f"{folder / STATE_FILE} belongs to another run: its {key}={theirs.get(key)!r} but "
            f"config.yaml says {ours[key]!r}; resume the folder the state was written in, or start a new run"
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def restore(payload: dict, folder: Path, meta: dict, model: torch.nn.Module, optimizer,
            rank: int, world_size: int, device: torch.device) -> Progress:
    """Load a payload from load_state into a freshly built model and optimizer, set this rank's
    RNG states, and return the loop's position."""
    check_resumable(payload, folder, meta, world_size)
    path = Path(folder) / STATE_FILE
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).splitlines()[0][:160]
        raise EtarecError(f"{path} does not fit the model of its own config ({first}); "
                          "it was written by another etarec version, start the run again") from None
    set_rng_states(payload["rng"][rank], device)
    return Progress(**payload["progress"])


def check_resumable(payload: dict, folder: Path, meta: dict, world_size: int) -> None:
    """The state was written by as many processes as this run has, on the same data."""
    path = Path(folder) / STATE_FILE
    if payload["world_size"] != world_size:
        raise EtarecError(
            f"{path} was written by {payload['world_size']} process(es) and this run has {world_size}; "
            f"resume with the same number (torchrun --nproc_per_node/--nnodes) so every rank gets its RNG state back"
        )
    if payload["data"] != data_identity(meta):
        raise EtarecError(f"the prepared data differs from the data {path} was trained on; "
                          "prepare the run's original data again, or start a new run")
