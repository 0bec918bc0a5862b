"""Running the planned runs: a finished run is kept, a run killed part-way goes on from its
state.pt (the trainer's exact resume), any other is trained from the start."""
from __future__ import annotations

from tqdm import tqdm

from etarec.compare.plan import Result, Run, finished_metrics
from etarec.compare.recall import run_recall
from etarec.config import build_config
from etarec.errors import EtarecError
from etarec.train.state import STATE_FILE, load_state
from etarec.train.trainer import resume, train


def continuable(run: Run, say) -> bool:
    """Whether the run's folder holds a usable state.pt of exactly this config (a run killed part-way)."""
    if not (run.folder / STATE_FILE).is_file():
        return False
    try:
        saved = load_state(run.folder)
    except EtarecError as error:
        say(f"{run.describe()}: training from the start, the saved state is unusable: {error}")
        return False
    return build_config(saved["config"]) == run.config


def execute(runs: list[Run], data, progress: bool, log, train_missing: bool = True) -> tuple[list[Result], list[Run]]:
    """Train every run that is not finished (tqdm over runs), or with train_missing=False leave it
    out; return the finished runs, each with its metrics and recall, and the runs left out."""
    results, missing = [], []
    bar = tqdm(total=len(runs), desc="compare", unit="run", disable=not progress)
    say = tqdm.write if progress else log
    for run in runs:
        bar.set_postfix_str(run.describe())
        metrics = finished_metrics(run)
        if metrics is None and not train_missing:
            missing.append(run)
        elif metrics is None and continuable(run, say):
            say(f"{run.describe()}: continuing from its saved state ({run.folder / STATE_FILE})")
            metrics = resume(run.folder, progress=False, log=say, data=data)
        elif metrics is None:
            metrics = train(run.config, run.folder, progress=False, log=say, data=data)
        else:
            say(f"{run.describe()}: finished earlier, kept ({run.folder})")
        if metrics is not None:
            results.append((run, metrics, run_recall(run, data, metrics, say)))
        bar.update()
    bar.close()
    return results, missing
