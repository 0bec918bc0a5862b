"""A suite YAML read and validated: every entry's config built, the sweep specs and the `paper:`
claims checked against the entries, so that bad input fails before anything trains."""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from etarec.config import Config, ModelConfig, build_config, load_config, read_yaml
from etarec.errors import EtarecError
from etarec.models import model_class
from etarec.train.metrics import DEFAULT_LENGTH_EDGES, length_edges

SUITE_KEYS = {"base", "set", "models", "sweep_models", "paper", "length_buckets"}
ENTRY_KEYS = {"name", "model", "set"}
PAPER_KEYS = {"ordering", "versus"}
LABEL = re.compile(r"^[A-Za-z0-9_+-]+$")
LINK = re.compile(r"\s*(<=|<)\s*")  # the links of an ordering chain: "a < b <= c"


@dataclass(frozen=True)
class Entry:
    label: str
    config: Config  # seed 0's config


@dataclass(frozen=True)
class Paper:
    """What a paper claims about the suite's entries, checked on the finished runs.

    ordering: the entries from worst to best on mean test AUC; strict[i] says whether
    ordering[i] must be strictly below ordering[i + 1] (`<`) or may equal it (`<=`).
    versus: (entry, reference) pairs set against each other seed by seed: AUC gap and cost ratios."""
    ordering: list[str]
    strict: list[bool]
    versus: list[tuple[str, str]]


@dataclass(frozen=True)
class Suite:
    path: Path
    entries: dict[str, Entry]  # label -> entry, in suite order (the tables' order)
    sweep_models: list[str]
    paper: Paper | None  # None: the suite claims nothing, the tables carry no verdict lines
    length_edges: tuple[int, ...] = DEFAULT_LENGTH_EDGES  # buckets of the by-length tables (`length_buckets`)


@dataclass(frozen=True)
class Sweep:
    name: str  # as the user wrote it left of '=': "eta.hash_bits" or "long_len"
    key: str  # a model config key
    values: list
    labels: list[str]  # the entries it runs over


def override(key: str, value: Any) -> str:
    """`key=value` for build_config; JSON is YAML, so build_config parses it back to the same value."""
    return f"{key}={json.dumps(value)}"


def rebuild(config: Config, overrides: list[str]) -> Config:
    return build_config(config.model_dump(mode="json"), overrides)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise EtarecError(f"{where} must be a mapping of dotted keys to values, e.g. {{train.epochs: 2}}")
    return value


def load_suite(path: str | Path, overrides: list[str] = (), only: list[str] | None = None) -> Suite:
    """Read and validate a suite: every entry's config is built here, so bad input fails before training.
    `overrides` (key=value) apply to every entry, after the suite's own settings; `only` (entry
    names) keeps those entries, in the suite's order: their runs are the same (same label, same
    config) as in the whole suite, so a part run first is reused by the whole."""
    path = Path(path)
    raw = read_yaml(path, "suite file", "a YAML file such as configs/suites/quickstart.yaml")
    if not raw.get("base") or not raw.get("models"):
        raise EtarecError(f"suite file {path} needs `base` (a config file) and `models` (a list of entries)")
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise EtarecError(f"suite file {path}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(SUITE_KEYS))}")
    shared = [override(k, v) for k, v in _mapping(raw.get("set"), f"{path}: `set`").items()]
    base = load_config(path.parent / str(raw["base"]))
    if not isinstance(raw["models"], list):
        raise EtarecError(f"suite file {path}: `models` must be a list of entries with a `name`")
    entries: dict[str, Entry] = {}
    for item in raw["models"]:
        entry = _entry(item, base, shared, list(overrides), path)
        if entry.label in entries:
            raise EtarecError(f"suite file {path}: two entries are named '{entry.label}'; names must be unique")
        entries[entry.label] = entry
    sweep_models = raw.get("sweep_models") or list(entries)
    if not isinstance(sweep_models, list):
        raise EtarecError(f"suite file {path}: `sweep_models` must be a list of entry names")
    for label in sweep_models:
        known_entry(label, entries, f"suite file {path}: sweep_models")
    paper = None if raw.get("paper") is None else _paper(raw["paper"], entries, f"suite file {path}: paper")
    if only is not None:  # after the paper's names were checked against the whole suite
        for label in only:
            known_entry(label, entries, f"--models {','.join(only)}")
        entries = {label: entry for label, entry in entries.items() if label in only}
        sweep_models = [label for label in sweep_models if label in entries] or list(entries)
    try:
        edges = length_edges(raw["length_buckets"]) if raw.get("length_buckets") is not None else DEFAULT_LENGTH_EDGES
    except EtarecError as error:
        raise EtarecError(f"suite file {path}: `length_buckets`: {error}") from None
    return Suite(path, entries, list(sweep_models), paper, edges)


def _entry(item: Any, base: Config, shared: list[str], overrides: list[str], path: Path) -> Entry:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise EtarecError(f"suite file {path}: every entry of `models` needs a `name`, e.g. - name: eta")
    label = item["name"]
    unknown = sorted(set(item) - ENTRY_KEYS)
    if unknown:
        raise EtarecError(f"suite file {path}: entry '{label}' has unknown key '{unknown[0]}'; allowed: name, model, set")
    if not LABEL.match(label):
        raise EtarecError(f"suite file {path}: entry name '{label}' may hold only letters, digits, _, + and -")
    own = _mapping(item.get("set"), f"{path}: entry '{label}' `set`")
    if any(key.startswith("data.") for key in own):
        raise EtarecError(f"suite file {path}: entry '{label}' overrides data.*; a suite compares models on one "
                          "dataset, so set data in the base config or the suite's `set`")
    name = item.get("model", label)
    if not isinstance(name, str):
        raise EtarecError(f"suite file {path}: entry '{label}': `model` must be a model name, e.g. model: eta")
    try:
        model_class(name)
        config = rebuild(base, shared + [override(k, v) for k, v in own.items()] + overrides
                         + [override("model.name", name)])
    except EtarecError as error:
        raise EtarecError(f"suite file {path}: entry '{label}': {error}") from None
    return Entry(label, config)


def _paper(raw: Any, entries: dict[str, Entry], where: str) -> Paper:
    """`paper: {ordering: "a < b <= c", versus: ["x vs y", ...]}`, every name an entry of the suite."""
    if not isinstance(raw, dict):
        raise EtarecError(f"{where} must be a mapping with `ordering` and/or `versus`")
    unknown = sorted(set(raw) - PAPER_KEYS)
    if unknown:
        raise EtarecError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(PAPER_KEYS))}")
    ordering, strict = [], []
    if raw.get("ordering") is not None:
        chain = raw["ordering"]
        parts = LINK.split(chain.strip()) if isinstance(chain, str) else []
        ordering, strict = parts[::2], [link == "<" for link in parts[1::2]]
        if len(ordering) < 2 or not all(ordering):
            raise EtarecError(f"{where}: `ordering` must be a chain of entries, worst first, "
                              "e.g. ordering: din < eta <= full_attention")
    versus = raw.get("versus") or []
    pairs = [tuple(part.strip() for part in item.split(" vs ")) if isinstance(item, str) else ()
             for item in (versus if isinstance(versus, list) else [None])]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise EtarecError(f"{where}: `versus` must be a list of 'ENTRY vs REFERENCE', e.g. [eta vs full_attention]")
    for label in ordering + [label for pair in pairs for label in pair]:
        known_entry(label, entries, where)
    return Paper(ordering, strict, pairs)


def known_entry(label: str, entries: dict, where: str) -> None:
    if label not in entries:
        nearest = difflib.get_close_matches(label, entries, n=1)
        hint = f"did you mean '{nearest[0]}'? " if nearest else ""
        raise EtarecError(f"{where}: no entry named '{label}'; {hint}entries: {', '.join(entries)}")


def parse_sweep(spec: str, suite: Suite) -> Sweep:
    """`[ENTRY.]KEY=V1,V2,...`: a model config KEY over the values, for ENTRY or the suite's sweep_models."""
    name, sep, listed = spec.partition("=")
    texts = [text.strip() for text in listed.split(",")]
    if not sep or not name or not all(texts):
        raise EtarecError(f"sweep '{spec}' is malformed; write [ENTRY.]KEY=V1,V2,... e.g. eta.hash_bits=4,8,16")
    label, _, key = name.rpartition(".")
    if key not in ModelConfig.model_fields or key == "name":
        nearest = difflib.get_close_matches(key, ModelConfig.model_fields, n=1)
        hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
        raise EtarecError(f"sweep '{spec}': '{key}' is not a model config key{hint}")
    if label:
        known_entry(label, suite.entries, f"sweep '{spec}'")
    values = [yaml.safe_load(text) for text in texts]
    if len(set(map(json.dumps, values))) < len(values):
        raise EtarecError(f"sweep '{spec}' lists a value twice")
    return Sweep(name, key, values, [label] if label else suite.sweep_models)
