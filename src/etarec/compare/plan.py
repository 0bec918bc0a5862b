"""The runs of a suite: every (entry, sweep value, seed) with its config and its folder
`runs/<entry>-<config digest>/seed-<seed>/`, and which of them are finished."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etarec.compare.suite import Suite, Sweep, override, rebuild
from etarec.config import Config
from etarec.errors import EtarecError


@dataclass(frozen=True)
class Run:
    label: str
    value: Any  # the sweep value; None in the main table
    seed: int
    config: Config
    folder: Path

    def describe(self) -> str:
        """'eta seed 2024', 'eta (16) seed 2024' in a sweep: how logs and tables name the run."""
        return f"{self.label}{'' if self.value is None else f' ({self.value})'} seed {self.seed}"


Result = tuple[Run, dict, float | None]  # a finished run, its metrics.json, its retrieval recall


def config_digest(config: Config) -> str:
    """The folder name's digest of seed 0's config: equal configs share a folder (a sweep value equal
    to the main table's setting reuses its runs). Changing it would orphan every recorded run."""
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:10]


def plan_runs(suite: Suite, out: Path, seeds: int, sweep: Sweep | None = None) -> list[Run]:
    """Every (entry, sweep value, seed) run with its config and folder; validates each config.
    Seed i sets train.seed and model.hash_seed to seed 0's values + i."""
    runs = []
    for label in (sweep.labels if sweep else suite.entries):
        entry = suite.entries[label]
        for value in (sweep.values if sweep else [None]):
            config = entry.config
            if sweep:
                try:
                    config = rebuild(config, [override(f"model.{sweep.key}", value)])
                except EtarecError as error:
                    raise EtarecError(f"sweep {sweep.name}: entry '{label}' with {sweep.key}={value}: {error}") from None
            folder = out / "runs" / f"{label}-{config_digest(config)}"
            for i in range(seeds):
                seeded = rebuild(config, [override("train.seed", config.train.seed + i),
                                          override("model.hash_seed", config.model.hash_seed + i)])
                runs.append(Run(label, value, seeded.train.seed, seeded, folder / f"seed-{seeded.train.seed}"))
    return runs


def finished_metrics(run: Run) -> dict | None:
    """The run's metrics.json when it exists and was written for exactly this config, else None."""
    try:
        metrics = json.loads((run.folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("config") == run.config.model_dump(mode="json") else None
