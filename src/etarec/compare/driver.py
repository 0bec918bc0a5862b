"""`etarec compare` as one call: load the suite, plan, run what is not finished, write the tables,
the verdicts and the plots."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from etarec.atomic import write_text_atomically
from etarec.compare.lengths import add_length_columns, gains_for_plot, length_tables, run_by_length
from etarec.compare.plan import plan_runs
from etarec.compare.plots import plot_auc_vs_cost, plot_gain_by_length, plot_sweep
from etarec.compare.runs import execute
from etarec.compare.suite import load_suite, parse_sweep
from etarec.compare.tables import markdown_table, summarise
from etarec.compare.verdicts import ordering_verdict, sweep_verdicts, versus_verdicts
from etarec.data.prepare import ensure_prepared
from etarec.errors import EtarecError
from etarec.train.metrics import length_edges


def run_suite(suite_path: str | Path, out: str | Path, seeds: int = 1, sweeps: list[str] = (),
              overrides: list[str] = (), progress: bool = True, log=print, summary_only: bool = False,
              length_buckets=None, models: list[str] | None = None) -> list[Path]:
    """Run the suite's main table, or each of `sweeps` instead; returns the files written.

    summary_only: train nothing; the tables cover the runs finished so far and name the others
    (a suite too long for one sitting can be reported on while it advances).
    length_buckets: edges of the by-length tables ("50,200,1000"), instead of the suite's
    `length_buckets` (default 50, 200, 1000). models: only these entries (names), in the
    suite's order; the claims' lines cover those present. The main table's by_length.png (each model's AUC
    gain over DIN per bucket) is among the files returned when it could be drawn; when not, `log`
    says why."""
    if seeds < 1:
        raise EtarecError(f"--seeds {seeds}: need at least one seed")
    suite = load_suite(suite_path, overrides, only=models)
    edges = length_edges(length_buckets) if length_buckets is not None else suite.length_edges
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
        say = tqdm.write if progress else log
        found = {run.folder: run_by_length(run, data, metrics, edges, say) for run, metrics, _ in results}
        has_lengths = add_length_columns(rows, results, found, edges)
        document = {"suite": str(suite.path), "dataset": data.meta["dataset"], "seeds": seeds}
        left_out = [run.describe() for run in missing]
        pending = [f"- Not finished yet, left out: {', '.join(left_out)}."] if missing else []
        if sweep is None:
            stem, title, first_columns = "summary", heading, ["model"]
            document |= {"models": rows, "missing": left_out}
            notes = ordering_verdict(rows, suite.paper) + versus_verdicts(rows, suite.paper) + pending
        else:
            stem, title, first_columns = f"sweep_{sweep.name.replace('.', '_')}", f"{heading}: {sweep.name}", ["model", sweep.key]
            document |= {"sweep": sweep.name, "key": sweep.key, "values": sweep.values, "rows": rows, "missing": left_out}
            notes = sweep_verdicts(rows, sweep, suite.paper) + pending
        # a killed suite leaves the previous tables whole
        lines = [f"# {heading}" + ("" if sweep is None else f": sweep of {sweep.name}"), "",
                 *markdown_table(rows, first_columns), *([""] + notes if notes else []),
                 *length_tables(rows, with_value=sweep is not None)]
        write_text_atomically(out / f"{stem}.json", json.dumps(document, indent=2))
        write_text_atomically(out / f"{stem}.md", "\n".join(lines) + "\n")
        written += [out / f"{stem}.json", out / f"{stem}.md"]
        if sweep is None and has_lengths and _plot_gains(rows, out / "by_length.png",
                                                         f"{heading}: test AUC gain over din by history length", log):
            written.append(out / "by_length.png")
        if sweep is None:
            png = out / "auc_vs_cost.png"
            plot_auc_vs_cost(rows, png, title)
        else:
            png = out / f"{stem}.png"
            plot_sweep(rows, sweep, png, title)
        written.append(png)
    return written


def _plot_gains(rows: list[dict], png: Path, title: str, log) -> bool:
    """Draw by_length.png (True), or say in one line why it is skipped (no DIN entry, no matplotlib)."""
    buckets, series = gains_for_plot(rows)
    if not series:
        log(f"skipped {png.name}: no din entry with metrics by history length to take the gains over")
        return False
    try:
        plot_gain_by_length(buckets, series, png, title)
    except EtarecError as error:
        log(f"skipped {png.name}: {error}")
        return False
    log(f"wrote {png}")
    return True
