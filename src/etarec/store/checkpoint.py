"""Checkpoints: one file per run folder, written atomically, loaded with weights_only=True.

The file holds only tensors and plain values (config, vocabulary sizes, the serving catalog), so
loading it never executes pickled code.
"""
from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from etarec.atomic import atomic_write_bytes
from etarec.config import Config, ModelConfig, build_config
from etarec.errors import EtarecError
from etarec.nn.embeddings import Vocab

CHECKPOINT_FILE = "model.pt"
FORMAT = "etarec-checkpoint-v1"


def save_checkpoint(folder: Path, model: nn.Module | dict, config: Config, vocab: Vocab, **extra) -> None:
    """model: the model, or its state dict as the model built from `config` holds it (a run with
    sharded tables passes its tables gathered whole: the file is the same plain checkpoint).
    extra: plain values stored beside the weights. Without an explicit `catalog` (raw ids, item
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
        "state_dict": model if isinstance(model, dict) else model.state_dict(),
        **extra,
    }
    atomic_write_bytes(Path(folder) / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(folder: Path, expected_model: str | None = None) -> tuple[nn.Module, Config, dict]:
    """(model in eval mode, its config, the payload). Every failure is one EtarecError line.

    When the folder holds a config.yaml (a run folder), the checkpoint's model must be the one it
    names: a model.pt copied in from another run is refused by every command, not only evaluate.
    expected_model: a model name the caller requires as well (e.g. the config it trained)."""
    from etarec.models import build_model  # the registry imports every model; only needed here

    folder = Path(folder)
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise EtarecError(f"no checkpoint at {path}; pass the --out folder of a finished `etarec train` run")
    run_model = _run_config_model(folder)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the refusal below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file; each becomes one line
        raise EtarecError(_load_failure(path, error)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EtarecError(f"{path} is not an etarec checkpoint (format {FORMAT} expected); use a model.pt written by `etarec train`")
    if run_model is not None and payload.get("model") != run_model:
        raise EtarecError(
            f"checkpoint {path} holds a '{payload.get('model')}' model but the run's config.yaml says "
            f"'{run_model}'; the files come from different runs: train again, or put the model.pt and "
            "config.yaml of one run together"
        )
    if expected_model is not None and payload.get("model") != expected_model:
        raise EtarecError(
            f"checkpoint {path} holds a '{payload.get('model')}' model, not the '{expected_model}' expected; "
            "the files come from different runs, train again or fix the folder"
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


def _run_config_model(folder: Path) -> str | None:
    """The model name the run folder's config.yaml gives (its default when it names none); None
    without a config.yaml. A config.yaml that is no YAML mapping is one EtarecError line."""
    import yaml

    config_file = folder / "config.yaml"
    if not config_file.is_file():
        return None
    try:
        raw = yaml.safe_load(config_file.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        raw = None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(model or {}, dict):
        raise EtarecError(f"{config_file} is corrupt (not a YAML mapping with a model section); "
                          "copy the run folder again or re-run training")
    name = (model or {}).get("name", ModelConfig.model_fields["name"].default)
    return str(name)


# pickle opcodes that import or call something: a payload holding them could run code when unpickled
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "EXT1", "EXT2", "EXT4"}
_UNSAFE = "is not a weights-only checkpoint, refused for safety (it could run code when loaded"
_ADVICE = "use the model.pt that `etarec train` wrote (only tensors and plain values), or train again"


def _load_failure(path: Path, error: Exception) -> str:
    """One line for a model.pt that torch.load(weights_only=True) refused: code-executing pickles are
    named as such; anything else is a truncated or corrupt file."""
    inner = str(error.__context__ or "") if isinstance(error, pickle.UnpicklingError) else ""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", f"{inner} {error}")
    if found:  # a torch.save (or a pickle) of objects beyond tensors and plain values
        return f"checkpoint {path} {_UNSAFE}: it imports {found.group(1)}); {_ADVICE}"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip: perhaps a plain pickle.dump
        verdict = _plain_pickle(path)
        if verdict is not None:
            return f"checkpoint {path} {verdict}; {_ADVICE}"
    return f"checkpoint {path} is truncated or corrupt ({_reason(inner or str(error), error)}); re-run training or copy it again"


def _plain_pickle(path: Path) -> str | None:
    """What a complete plain pickle in `path` is (read, never executed); None when it is no complete pickle."""
    code: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as file:
            for opcode, argument, _ in pickletools.genops(file):
                if opcode.name in _CODE_OPCODES:
                    if opcode.name == "GLOBAL" and isinstance(argument, str):
                        code.append(argument.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        code.append(".".join(strings[-2:]))
                    else:
                        code.append(opcode.name)
                elif isinstance(argument, str):
                    strings.append(argument)
                if opcode.name == "STOP":
                    break
            else:
                return None  # ran out of bytes before STOP: truncated
            if file.read(1):
                return None  # more after the pickle: e.g. torch's legacy format (several pickles), cut short
    except Exception:  # noqa: BLE001 - not a pickle at all, or cut inside an opcode
        return None
    if code:
        return f"{_UNSAFE}: a plain pickle that imports {code[0]})"
    return f"is a plain pickle, not an etarec checkpoint (format {FORMAT} expected)"


def _reason(message: str, error: Exception) -> str:
    """The first sentence of torch's message (whole words), or the error's type when it has none."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.split(r"(?<=[a-z0-9])\. ", first)[0].rstrip(".")
    if len(first) > 160:
        first = first[:160].rsplit(" ", 1)[0] + " ..."
    return first or type(error).__name__
