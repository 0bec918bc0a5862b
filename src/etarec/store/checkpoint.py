"""Checkpoints: one file per run folder, written atomically, loaded with weights_only=True.

The file holds only tensors and plain values (config, vocabulary sizes, the serving catalog), so
loading it never executes pickled code.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from etarec.atomic import atomic_write_bytes
from etarec.config import Config, build_config
from etarec.errors import EtarecError
from etarec.nn.embeddings import Vocab

CHECKPOINT_FILE = "model.pt"
FORMAT = "etarec-checkpoint-v1"


def save_checkpoint(folder: Path, model: nn.Module, config: Config, vocab: Vocab, **extra) -> None:
    """extra: plain values stored beside the weights. Without an explicit `catalog` (raw ids, item
    categories, user profiles: what serving needs, see store/catalog.py) the run's prepared data
    supplies it, when that data is on disk and matches `vocab`."""
    if "catalog" not in extra:
        from etarec.store.catalog import training_catalog  # reads Parquet: only when saving

        catalog = training_catalog(config, vocab)
        if catalog is not None:
            extra["catalog"] = catalog
    payload = {
        "format": FORMAT,
        "model": config.model.name,
        "config": config.model_dump(mode="json"),
        "vocab": asdict(vocab),
        "state_dict": model.state_dict(),
        **extra,
    }
    atomic_write_bytes(Path(folder) / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(folder: Path, expected_model: str | None = None) -> tuple[nn.Module, Config, dict]:
    """(model in eval mode, its config, the payload). Every failure is one EtarecError line."""
    from etarec.models import build_model  # the registry imports every model; only needed here

    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise EtarecError(f"no checkpoint at {path}; pass the --out folder of a finished `etarec train` run")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise EtarecError(f"checkpoint {path} is truncated or corrupt ({reason}); re-run training or copy it again") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EtarecError(f"{path} is not an etarec checkpoint (format {FORMAT} expected); use a model.pt written by `etarec train`")
    if expected_model is not None and payload["model"] != expected_model:
        raise EtarecError(
            f"checkpoint {path} holds a '{payload['model']}' model but the run's config.yaml says "
            f"'{expected_model}'; the files come from different runs, train again or fix the folder"
        )
    config = build_config(payload["config"])
    vocab = Vocab(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["vocab"].items()})
    model = build_model(config.model, vocab)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise EtarecError(f"checkpoint {path} does not fit a '{config.model.name}' model ({first}); it was saved by another model or version") from None
    return model.eval(), config, payload
