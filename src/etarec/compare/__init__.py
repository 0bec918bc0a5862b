"""`etarec compare`: every model of a suite, for every seed, on one prepared dataset under one budget;
then summary tables and plots (the ETA paper's Table 4, its hash-bit figure and Table 7).

A suite is a YAML file:

    base: ../ml1m_eta.yaml              # a train config, relative to the suite file
    set: {train.epochs: 8}              # the shared budget: overrides applied to every entry
    models:                             # the entries; tables follow the paper's order, not this one
      - name: sim_hard+time             # a label (also a folder name); the model is `model`, else the name
        model: sim_hard
        set: {model.use_time: true}     # the entry's own overrides (model.* and train.*)
    sweep_models: [eta, full_attention] # the entries a sweep without an entry name runs over (default: all)

Seed i (0-based) of a run sets train.seed and model.hash_seed to the config's values + i, so the
spread over seeds covers the weights, the data order and the hash projection. The output folder:

    runs/<entry>-<config digest>/seed-<seed>/   one trainer run each (config.yaml, model.pt, metrics.json)
    summary.json, summary.md, auc_vs_cost.png   the main table
    sweep_<entry>_<key>.json / .md / .png       one set per --sweep (sweep_long_len.*: no entry named)

A run whose metrics.json exists and holds the run's config is finished and never redone; a run
killed part-way goes on from its state.pt (the trainer's exact resume), so an interrupted suite
loses at most the steps since the last saved state. A sweep value equal to the main table's
setting reuses the main table's runs (same config, same folder).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from etarec.config import Config, ModelConfig, build_config, load_config
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import Samples
from etarec.errors import EtarecError
from etarec.models import model_class
from etarec.retrieval.selectors import inner_product_top_k
from etarec.atomic import atomic_write_bytes, write_text_atomically
from etarec.store.checkpoint import load_checkpoint
from etarec.train.state import STATE_FILE, load_state
from etarec.train.trainer import resume, train

# the ETA paper's Table 4 order (with its ablations after ETA); other entries follow in suite order
PAPER_ORDER = ["avg_pool", "din", "din_long", "sim_hard", "sim_hard+time", "eta", "eta+time", "eta_inner_product",
               "twin", "full_attention", "sdim"]
# the paper's claim, checked on mean test AUC: each strictly below the next, ETA <= full attention
PAPER_CLAIM = ["avg_pool", "din", "sim_hard", "eta", "full_attention"]
RECALL_SAMPLES = 20_000  # test samples on which retrieval recall is measured
SUITE_KEYS = {"base", "set", "models", "sweep_models"}
ENTRY_KEYS = {"name", "model", "set"}
LABEL = re.compile(r"^[A-Za-z0-9_+-]+$")


@dataclass(frozen=True)
class Entry:
    label: str
    config: Config  # seed 0's config


@dataclass(frozen=True)
class Suite:
    path: Path
    entries: dict[str, Entry]  # label -> entry, in suite order
    sweep_models: list[str]


@dataclass(frozen=True)
class Sweep:
    name: str  # as the user wrote it left of '=': "eta.hash_bits" or "long_len"
    key: str  # a model config key
    values: list
    labels: list[str]  # the entries it runs over


@dataclass(frozen=True)
class Run:
    label: str
    value: Any  # the sweep value; None in the main table
    seed: int
    config: Config
    folder: Path


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: build_config parses it back to the same value


def _rebuild(config: Config, overrides: list[str]) -> Config:
    return build_config(config.model_dump(mode="json"), overrides)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise EtarecError(f"{where} must be a mapping of dotted keys to values, e.g. {{train.epochs: 2}}")
    return value


def load_suite(path: str | Path, overrides: list[str] = ()) -> Suite:
    """Read and validate a suite: every entry's config is built here, so bad input fails before training.
    `overrides` (key=value) apply to every entry, after the suite's own settings."""
    path = Path(path)
    if not path.is_file():
        raise EtarecError(f"suite file {path} does not exist; pass a YAML file such as configs/suites/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise EtarecError(f"suite file {path} is not valid YAML; fix its syntax") from None
    if not isinstance(raw, dict) or not raw.get("base") or not raw.get("models"):
        raise EtarecError(f"suite file {path} needs `base` (a config file) and `models` (a list of entries)")
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise EtarecError(f"suite file {path}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(SUITE_KEYS))}")
    shared = [_override(k, v) for k, v in _mapping(raw.get("set"), f"{path}: `set`").items()]
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
        _known_entry(label, entries, f"suite file {path}: sweep_models")
    return Suite(path, entries, list(sweep_models))


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
        config = _rebuild(base, shared + [_override(k, v) for k, v in own.items()] + overrides
                          + [_override("model.name", name)])
    except EtarecError as error:
        raise EtarecError(f"suite file {path}: entry '{label}': {error}") from None
    return Entry(label, config)


def _known_entry(label: str, entries: dict, where: str) -> None:
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
        _known_entry(label, suite.entries, f"sweep '{spec}'")
    values = [yaml.safe_load(text) for text in texts]
    if len(set(map(json.dumps, values))) < len(values):
        raise EtarecError(f"sweep '{spec}' lists a value twice")
    return Sweep(name, key, values, [label] if label else suite.sweep_models)


def config_digest(config: Config) -> str:
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:10]


def plan_runs(suite: Suite, out: Path, seeds: int, sweep: Sweep | None = None) -> list[Run]:
    """Every (entry, sweep value, seed) run with its config and folder; validates each config."""
    runs = []
    for label in (sweep.labels if sweep else suite.entries):
        entry = suite.entries[label]
        for value in (sweep.values if sweep else [None]):
            config = entry.config
            if sweep:
                try:
                    config = _rebuild(config, [_override(f"model.{sweep.key}", value)])
                except EtarecError as error:
                    raise EtarecError(f"sweep {sweep.name}: entry '{label}' with {sweep.key}={value}: {error}") from None
            folder = out / "runs" / f"{label}-{config_digest(config)}"
            for i in range(seeds):
                seeded = _rebuild(config, [_override("train.seed", config.train.seed + i),
                                           _override("model.hash_seed", config.model.hash_seed + i)])
                runs.append(Run(label, value, seeded.train.seed, seeded, folder / f"seed-{seeded.train.seed}"))
    return runs


def finished_metrics(run: Run) -> dict | None:
    """The run's metrics.json when it exists and was written for exactly this config, else None."""
    try:
        metrics = json.loads((run.folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("config") == run.config.model_dump(mode="json") else None


def _continuable(run: Run, say) -> bool:
    """Whether the run's folder holds a usable state.pt of exactly this config (a run killed part-way)."""
    if not (run.folder / STATE_FILE).is_file():
        return False
    try:
        saved = load_state(run.folder)
    except EtarecError as error:
        say(f"{_where(run)}: training from the start, the saved state is unusable: {error}")
        return False
    return build_config(saved["config"]) == run.config


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
        target = model.embeddings.target(batch)  # [B, 2d]
        index, found = model.retrieve(batch, target)  # [B, K]
        keys = model.embeddings.items(batch.history_items, batch.history_categories)  # [B, L, 2d]
        exact, exact_found = inner_product_top_k(target, keys, batch.history_mask, index.shape[1])  # [B, K]
        choosing = batch.history_mask.sum(1) > index.shape[1]  # [B]
        retrieved = torch.zeros_like(batch.history_mask).scatter_(1, index, found)  # [B, L]
        hits += int((retrieved.gather(1, exact) & exact_found)[choosing].sum())
        total += int(exact_found[choosing].sum())
    return hits / total if total else None


def _recall(run: Run, data, metrics: dict) -> float | None:
    """Retrieval recall of a finished run (cached in its folder beside metrics.json); None for a
    model without a retrieve() step."""
    if not hasattr(model_class(run.config.model.name), "retrieve"):
        return None
    cache = run.folder / "retrieval.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("config") == metrics["config"]:
            return saved["recall"]
    except (OSError, json.JSONDecodeError):
        pass
    model, config, _ = load_checkpoint(run.folder, expected_model=run.config.model.name)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len)
    test = data.splits["test"]
    recall = retrieval_recall(model, builder, test, config.train.eval_batch_size)
    cache.write_text(json.dumps({"recall": recall, "test_samples": min(RECALL_SAMPLES, len(test)),
                                 "config": metrics["config"]}, indent=2))
    return recall


def _where(run: Run) -> str:
    return f"{run.label}{'' if run.value is None else f' ({run.value})'} seed {run.seed}"


def execute(runs: list[Run], data, progress: bool, log,
            train_missing: bool = True) -> tuple[list[tuple[Run, dict, float | None]], list[Run]]:
    """Train every run that is not finished (tqdm over runs), or with train_missing=False leave it
    out; return the finished runs, each with its metrics and recall, and the runs left out."""
    results, missing = [], []
    bar = tqdm(total=len(runs), desc="compare", unit="run", disable=not progress)
    say = tqdm.write if progress else log
    for run in runs:
        bar.set_postfix_str(_where(run))
        metrics = finished_metrics(run)
        if metrics is None and not train_missing:
            missing.append(run)
        elif metrics is None and _continuable(run, say):
            say(f"{_where(run)}: continuing from its saved state ({run.folder / STATE_FILE})")
            metrics = resume(run.folder, progress=False, log=say, data=data)
        elif metrics is None:
            metrics = train(run.config, run.folder, progress=False, log=say, data=data)
        else:
            say(f"{_where(run)}: finished earlier, kept ({run.folder})")
        if metrics is not None:
            results.append((run, metrics, _recall(run, data, metrics)))
        bar.update()
    bar.close()
    return results, missing


def _stats(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarise(results: list[tuple[Run, dict, float | None]]) -> list[dict]:
    """One row per (entry, sweep value): test metrics and costs as mean/std over its seeds."""
    groups: dict[tuple, list] = {}
    for run, metrics, recall in results:
        groups.setdefault((run.label, json.dumps(run.value)), []).append((run, metrics, recall))
    rows = []
    for group in groups.values():
        run, metrics, _ = group[0]
        column = lambda pick: _stats([pick(m) for _, m, _ in group])  # noqa: E731
        recalls = [recall for _, _, recall in group if recall is not None]
        rows.append({
            "name": run.label, "model": run.config.model.name, "value": run.value,
            "seeds": [r.seed for r, _, _ in group],
            "test_auc": column(lambda m: m["test"]["auc"]),
            "test_gauc": column(lambda m: m["test"]["gauc"]),
            "test_logloss": column(lambda m: m["test"]["logloss"]),
            "valid_auc": column(lambda m: m["valid"]["auc"]),
            "train_seconds_per_epoch": column(lambda m: m["train_seconds_per_epoch"]),
            "train_samples_per_second": column(lambda m: m["train_samples_per_second"]),
            "infer_samples_per_second": column(lambda m: m["test"]["infer_samples_per_second"]),
            "epochs": column(lambda m: m["epochs"]),
            "parameters": metrics["parameters"],
            "retrieval_recall": _stats(recalls) if recalls else None,
            "by_seed": {str(r.seed): {"test_auc": m["test"]["auc"], "train_seconds_per_epoch": m["train_seconds_per_epoch"],
                                      "infer_samples_per_second": m["test"]["infer_samples_per_second"]}
                        for r, m, _ in group},
            "top_k": run.config.model.top_k, "long_len": run.config.model.long_len,
            # relative to the suite's --out folder, so a summary can be copied anywhere
            "runs": [str(r.folder.relative_to(r.folder.parents[2])) for r, _, _ in group],
        })
    return rows


def paper_order(rows: list[dict]) -> list[dict]:
    rank = {label: i for i, label in enumerate(PAPER_ORDER)}
    return sorted(rows, key=lambda row: rank.get(row["name"], len(PAPER_ORDER)))  # stable: others keep suite order


def _pm(stats: dict | None, digits: int, seeds: int) -> str:
    if stats is None:
        return "–"
    spread = f" ± {stats['std']:.{digits}f}" if seeds > 1 else ""  # one seed has no spread to show
    return f"{stats['mean']:.{digits}f}{spread}"


def _table(rows: list[dict], first: list[str]) -> list[str]:
    """Markdown rows; `first` names the leading columns (name and, for sweeps, the value)."""
    header = first + ["test AUC", "test gAUC", "test logloss", "train s/epoch", "train samples/s",
                      "infer samples/s", "parameters", "epochs", "retrieval recall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["name"]] + ([] if len(first) == 1 else [json.dumps(row["value"])])
        n = len(row["seeds"])
        cells += [_pm(row["test_auc"], 4, n), _pm(row["test_gauc"], 4, n), _pm(row["test_logloss"], 4, n),
                  _pm(row["train_seconds_per_epoch"], 1, n), f"{row['train_samples_per_second']['mean']:,.0f}",
                  f"{row['infer_samples_per_second']['mean']:,.0f}", f"{row['parameters']:,}",
                  f"{row['epochs']['mean']:.1f}", _pm(row["retrieval_recall"], 3, n)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _paired(a: dict, b: dict, key: str, combine) -> dict | None:
    """combine(a's value, b's value) on every seed both rows ran, as mean/std and the count n; None
    without a common seed. Pairing by seed sets runs of one sitting against each other: a noisy
    machine's speed moves more between sittings than one model's cost differs from another's."""
    seeds = [seed for seed in a["by_seed"] if seed in b["by_seed"]]
    if not seeds:
        return None
    return {**_stats([combine(a["by_seed"][s][key], b["by_seed"][s][key]) for s in seeds]), "n": len(seeds)}


def _spread(stats: dict, digits: int) -> str:
    return f" ± {stats['std']:.{digits}f}" if stats["n"] > 1 else ""


def ordering_verdict(rows: list[dict]) -> list[str]:
    """Whether the paper's ordering holds on mean test AUC, naming each pair that breaks it with
    the per-seed difference (mean ± std) where there are several seeds to tell it from noise."""
    by_name = {row["name"]: row for row in rows}
    chain = [name for name in PAPER_CLAIM if name in by_name]
    if len(chain) < 2:
        return []
    auc = {name: by_name[name]["test_auc"]["mean"] for name in chain}

    def broken_pair(a: str, b: str) -> str:
        gap = _paired(by_name[b], by_name[a], "test_auc", lambda x, y: x - y)
        paired = f" ({b} - {a} by seed: {gap['mean']:+.4f}{_spread(gap, 4)}, {gap['n']} seeds)" if gap and gap["n"] > 1 else ""
        return f"{a} {auc[a]:.4f} vs {b} {auc[b]:.4f}{paired}"

    broken = [broken_pair(a, b) for a, b in zip(chain, chain[1:])
              if not (auc[a] <= auc[b] if (a, b) == ("eta", "full_attention") else auc[a] < auc[b])]
    claim = " < ".join(chain).replace("eta < full_attention", "eta <= full_attention")
    return [f"- Paper ordering ({claim}, mean test AUC): "
            + ("holds." if not broken else "does NOT hold: " + "; ".join(broken) + ".")]


def eta_vs_full(rows: list[dict], prefix: str = "") -> list[str]:
    """Every ETA entry against the full-attention entry of the same variant (eta_peer:
    full_attention_peer): the test AUC gap and the cost ratios, each taken seed by seed."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for name, eta in by_name.items():
        full = by_name.get("full_attention" + name.removeprefix("eta"))
        if eta["model"] != "eta" or not name.startswith("eta") or full is None:
            continue
        gap = _paired(eta, full, "test_auc", lambda x, y: x - y)
        if gap is None:
            continue
        cost = _paired(eta, full, "train_seconds_per_epoch", lambda x, y: x / y)
        speed = _paired(eta, full, "infer_samples_per_second", lambda x, y: x / y)
        seeds = f" (by seed, {gap['n']} seeds)" if gap["n"] > 1 else ""
        lines.append(f"- {prefix}{name} vs {full['name']}{seeds}: test AUC {gap['mean']:+.4f}{_spread(gap, 4)}; "
                     f"training time per epoch x{cost['mean']:.2f}{_spread(cost, 2)}; "
                     f"inference throughput x{speed['mean']:.2f}{_spread(speed, 2)}.")
    return lines


def sweep_verdicts(rows: list[dict], sweep: Sweep) -> list[str]:
    """ETA against full attention at each value of the sweep (the paper's Table 7 question: does
    ETA stay close in AUC while full attention's cost grows?)."""
    return [line for value in sweep.values
            for line in eta_vs_full([row for row in rows if row["value"] == value], f"{sweep.key}={value}: ")]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EtarecError("the plots need matplotlib; install it with pip install 'etarec[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_auc_vs_cost(rows: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20").colors
    for i, row in enumerate(rows):
        # a legend rather than labels at the points: models of one family land within 0.001 AUC
        x, y = row["train_seconds_per_epoch"], row["test_auc"]
        axes.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="osD^v<>"[i % 7], capsize=3,
                      color=colours[i % len(colours)], label=row["name"])
    axes.set_xlabel("training seconds per epoch")
    axes.set_ylabel("test AUC (mean ± std over seeds)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    atomic_write_bytes(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def plot_sweep(rows: list[dict], sweep: Sweep, path: Path, title: str) -> None:
    plt = _pyplot()
    panels = [("test_auc", "test AUC"), ("train_seconds_per_epoch", "training seconds per epoch")]
    if any(row["retrieval_recall"] for row in rows):
        panels.append(("retrieval_recall", "retrieval recall of the inner-product top-k"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in sweep.values)
    for axis, (key, label) in zip(axes[0], panels):
        for name in sweep.labels:
            points = [row for row in rows if row["name"] == name and row[key] is not None]
            if not points:
                continue
            xs = [row["value"] if numeric else str(row["value"]) for row in points]
            axis.errorbar(xs, [row[key]["mean"] for row in points], yerr=[row[key]["std"] for row in points],
                          marker="o", capsize=3, label=name)
        if numeric:
            axis.set_xscale("log", base=2)
            axis.set_xticks(sweep.values, [str(v) for v in sweep.values])
        axis.set_xlabel(sweep.key)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    atomic_write_bytes(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def _write(path: Path, text: str) -> Path:
    write_text_atomically(path, text)  # a killed suite leaves the previous table whole
    return path


def run_suite(suite_path: str | Path, out: str | Path, seeds: int = 1, sweeps: list[str] = (),
              overrides: list[str] = (), progress: bool = True, log=print, summary_only: bool = False) -> list[Path]:
    """Run the suite's main table, or each of `sweeps` instead; returns the files written.

    summary_only: train nothing; the tables cover the runs finished so far and name the others
    (a suite too long for one sitting can be reported on while it advances)."""
    if seeds < 1:
        raise EtarecError(f"--seeds {seeds}: need at least one seed")
    suite = load_suite(suite_path, overrides)
    parsed = [parse_sweep(spec, suite) for spec in sweeps]
    out = Path(out)
    plans = [(sweep, plan_runs(suite, out, seeds, sweep)) for sweep in parsed] or [(None, plan_runs(suite, out, seeds))]
    first = next(iter(suite.entries.values())).config
    data = ensure_prepared(first.data, log=log)
    out.mkdir(parents=True, exist_ok=True)
    heading = f"{suite.path.stem} on {data.meta['dataset']}, {seeds} seed(s) per model"
    written = []
    for sweep, runs in plans:
        results, missing = execute(runs, data, progress, log, train_missing=not summary_only)
        if not results:
            raise EtarecError(f"no run of {sweep.name if sweep else 'the main table'} has finished in {out} yet; "
                              "run the same command without --summary-only to train them")
        rows = summarise(results)
        pending = [f"- Not finished yet, left out: {', '.join(_where(run) for run in missing)}."] if missing else []
        if sweep is None:
            rows = paper_order(rows)
            document = {"suite": str(suite.path), "dataset": data.meta["dataset"], "seeds": seeds, "models": rows,
                        "missing": [_where(run) for run in missing]}
            lines = [f"# {heading}", "", *_table(rows, ["model"]), "", *ordering_verdict(rows), *eta_vs_full(rows), *pending]
            written += [_write(out / "summary.json", json.dumps(document, indent=2)),
                        _write(out / "summary.md", "\n".join(lines) + "\n")]
            plot_auc_vs_cost(rows, out / "auc_vs_cost.png", heading)
            written.append(out / "auc_vs_cost.png")
        else:
            stem = f"sweep_{sweep.name.replace('.', '_')}"  # eta.hash_bits -> sweep_eta_hash_bits.*
            document = {"suite": str(suite.path), "dataset": data.meta["dataset"], "seeds": seeds,
                        "sweep": sweep.name, "key": sweep.key, "values": sweep.values, "rows": rows,
                        "missing": [_where(run) for run in missing]}
            notes = sweep_verdicts(rows, sweep) + pending
            lines = [f"# {heading}: sweep of {sweep.name}", "", *_table(rows, ["model", sweep.key]),
                     *([""] + notes if notes else [])]
            written += [_write(out / f"{stem}.json", json.dumps(document, indent=2)),
                        _write(out / f"{stem}.md", "\n".join(lines) + "\n")]
            plot_sweep(rows, sweep, out / f"{stem}.png", f"{heading}: {sweep.name}")
            written.append(out / f"{stem}.png")
    return written
