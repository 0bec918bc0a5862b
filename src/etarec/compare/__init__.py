"""`etarec compare`: every model of a suite, for every seed, on one prepared dataset under one budget;
then summary tables, plots and the checks of a paper's claims (e.g. the ETA paper's Table 4, its
hash-bit figure and Table 7).

A suite is a YAML file:

    base: ../ml1m_eta.yaml              # a train config, relative to the suite file
    set: {train.epochs: 8}              # the shared budget: overrides applied to every entry
    models:                             # the entries, in the order of the tables
      - name: sim_hard+time             # a label (also a folder name); the model is `model`, else the name
        model: sim_hard
        set: {model.use_time: true}     # the entry's own overrides (model.* and train.*)
    sweep_models: [eta, full_attention] # the entries a sweep without an entry name runs over (default: all)
    paper:                              # optional: claims checked under the tables (none without it)
      ordering: avg_pool < din < eta <= full_attention   # worst first, on mean test AUC
      versus: [eta vs full_attention]   # AUC gap and cost ratios seed by seed (also at each sweep value)
    length_buckets: [50, 200, 1000]     # optional: edges of the test-metrics-by-history-length tables

Seed i (0-based) of a run sets train.seed and model.hash_seed to the config's values + i, so the
spread over seeds covers the weights, the data order and the hash projection. The output folder:

    runs/<entry>-<config digest>/seed-<seed>/   one trainer run each (config.yaml, model.pt, metrics.json)
    summary.json, summary.md, auc_vs_cost.png   the main table (and its metrics by history length)
    by_length.png                               each model's test AUC gain over DIN per length bucket
    sweep_<entry>_<key>.json / .md / .png       one set per --sweep (sweep_long_len.*: no entry named)

A run whose metrics.json exists and holds the run's config is finished and never redone; a run
killed part-way goes on from its state.pt (the trainer's exact resume), so an interrupted suite
loses at most the steps since the last saved state. A sweep value equal to the main table's
setting reuses the main table's runs (same config, same folder).

Modules, in the order a suite flows through them: suite (read and validate), plan (runs, their
folders, which are finished), runs (train / resume / keep), recall (retrieval recall of a run),
tables (summary rows, Markdown), lengths (metrics by history length), verdicts (the `paper:` claims), plots, driver (run_suite).
"""
from etarec.compare.driver import run_suite
from etarec.compare.plan import Run, config_digest, plan_runs
from etarec.compare.recall import retrieval_recall
from etarec.compare.suite import Paper, Suite, Sweep, load_suite, parse_sweep

__all__ = ["Paper", "Run", "Suite", "Sweep", "config_digest", "load_suite", "parse_sweep", "plan_runs",
           "retrieval_recall", "run_suite"]
