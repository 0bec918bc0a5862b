"""`etarec compare` end to end on a tiny suite: summaries equal a numpy reduction of the runs'
metrics.json, finished runs are never redone, sweeps reuse equal runs, the committed ML-1M tables
come back byte for byte from their run records, a suite's `paper:` claims are checked as written,
bad input is one line."""
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import etarec.compare.driver
import etarec.compare.runs
import etarec.train.trainer
from etarec.cli import main
from etarec.compare import Paper, Sweep, load_suite, plan_runs, retrieval_recall, run_suite
from etarec.compare.plan import finished_metrics
from etarec.compare.verdicts import ordering_verdict, sweep_verdicts, versus_verdicts
from etarec.config import build_config
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared
from etarec.models import build_model
from etarec.nn.embeddings import Vocab

BASE = {"model": {"name": "eta", "long_len": 32, "short_len": 8, "top_k": 8, "hash_bits": 16, "embedding_dim": 8,
                  "attention_dim": 16, "mlp": [32]},
        "train": {"epochs": 1, "max_steps_per_epoch": 4, "batch_size": 128, "eval_batch_size": 4096, "threads": 1}}
QUIET = {"progress": False, "log": lambda *_: None}
REPO = Path(__file__).resolve().parents[1]
ML1M = REPO / "benchmarks" / "results" / "ml1m"
ETA_PAPER = "avg_pool < din < sim_hard < eta <= full_attention"


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    ensure_prepared(build_config({"data": {"prepared_dir": str(folder)}}).data, log=lambda *_: None)
    return folder


@pytest.fixture
def suite(tmp_path, prepared_dir):
    """A suite of two models, eta listed first: the tables keep the suite's order."""
    base = {**BASE, "data": {"prepared_dir": str(prepared_dir)}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    suite = {"base": "base.yaml", "set": {"train.lr": 0.002}, "models": [{"name": "eta"}, {"name": "din"}],
             "paper": {"ordering": "din < eta"}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    return tmp_path / "suite.yaml"


@pytest.fixture
def trained(monkeypatch):
    """The run folders the suite trains, in order (the real trainer still runs)."""
    folders = []
    real_train = etarec.compare.runs.train

    def counting_train(config, out, **kwargs):
        folders.append(out)
        return real_train(config, out, **kwargs)

    monkeypatch.setattr(etarec.compare.runs, "train", counting_train)
    return folders


@pytest.mark.slow
def test_summary_equals_the_runs_metrics_and_a_rerun_redoes_nothing(suite, tmp_path, trained):
    out = tmp_path / "results"
    written = run_suite(suite, out, seeds=2, **QUIET)
    assert [p.name for p in written] == ["summary.json", "summary.md", "by_length.png", "auc_vs_cost.png"]
    assert len(trained) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"] for row in summary["models"]] == ["eta", "din"]
    for row in summary["models"]:
        assert row["seeds"] == [2024, 2025]
        runs = [json.loads((out / folder / "metrics.json").read_text()) for folder in row["runs"]]
        assert [m["config"]["train"]["seed"] for m in runs] == [2024, 2025]
        assert [m["config"]["model"]["hash_seed"] for m in runs] == [0, 1]
        assert all(m["config"]["train"]["lr"] == 0.002 and m["model"] == row["name"] for m in runs)
        for key, pick in {"test_auc": lambda m: m["test"]["auc"], "test_gauc": lambda m: m["test"]["gauc"],
                          "test_logloss": lambda m: m["test"]["logloss"],
                          "train_seconds_per_epoch": lambda m: m["train_seconds_per_epoch"],
                          "train_samples_per_second": lambda m: m["train_samples_per_second"],
                          "infer_samples_per_second": lambda m: m["test"]["infer_samples_per_second"]}.items():
            values = np.array([pick(m) for m in runs])
            assert row[key]["mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert row[key]["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert row["parameters"] == runs[0]["parameters"]
        recall = row["retrieval_recall"]
        assert (recall is None) == (row["name"] == "din")
        assert recall is None or 0.0 <= recall["mean"] <= 1.0
    table = (out / "summary.md").read_text()
    assert table.index("| eta |") < table.index("| din |") and "±" in table
    assert "- Paper ordering (din < eta, mean test AUC): " in table
    assert (out / "auc_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = (out / "summary.json").read_text()
    run_suite(suite, out, seeds=2, **QUIET)
    assert len(trained) == 4, "a finished run was trained again"
    assert (out / "summary.json").read_text() == before

    # a run whose metrics.json was written for another config is not finished: it is redone, alone
    stale = out / summary["models"][0]["runs"][0] / "metrics.json"
    metrics = json.loads(stale.read_text())
    metrics["config"]["train"]["lr"] = 0.5
    stale.write_text(json.dumps(metrics))
    (stale.parent / "state.pt").unlink()
    run_suite(suite, out, seeds=2, **QUIET)
    assert trained[4:] == [stale.parent]


@pytest.mark.slow
def test_a_run_killed_part_way_goes_on_from_its_saved_state(suite, tmp_path, trained, monkeypatch):
    """The first run dies between two saved states; the next `compare` continues it from the
    first state (not from the start) and ends with the uninterrupted run's metrics."""
    raw = yaml.safe_load(suite.read_text())
    raw["set"]["train.state_every_steps"] = 2
    suite.write_text(yaml.safe_dump(raw))
    reference, out = tmp_path / "reference", tmp_path / "results"
    run_suite(suite, reference, seeds=1, **QUIET)

    real_step, steps = etarec.train.trainer._step, []

    def dying_step(*args):
        steps.append(1)
        if len(steps) == 3:  # after the state of step 2 was saved, before the one of step 4
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(etarec.train.trainer, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, seeds=1, **QUIET)
    killed = trained[-1]
    assert not (killed / "metrics.json").exists() and (killed / "state.pt").is_file()
    monkeypatch.setattr(etarec.train.trainer, "_step", real_step)
    trained.clear()
    lines = []
    run_suite(suite, out, seeds=1, progress=False, log=lines.append)
    assert killed not in trained, "the killed run was trained again from the start"
    assert any("continuing from its saved state" in line for line in lines)

    expected = json.loads((reference / killed.relative_to(out) / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    assert [e["train_loss"] for e in got["history"]] == [e["train_loss"] for e in expected["history"]]
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            assert got[split][metric] == expected[split][metric], (split, metric)


@pytest.mark.slow
def test_sweep_writes_its_table_and_reuses_the_main_tables_runs(suite, tmp_path, trained):
    out = tmp_path / "results"
    run_suite(suite, out, seeds=1, **QUIET)
    main_table = len(trained)
    written = run_suite(suite, out, seeds=1, sweeps=["eta.hash_bits=4,16"], **QUIET)
    assert [p.name for p in written] == ["sweep_eta_hash_bits.json", "sweep_eta_hash_bits.md", "sweep_eta_hash_bits.png"]
    assert len(trained) == main_table + 1, "hash_bits=16 is the main table's eta run and must be reused"
    sweep = json.loads((out / "sweep_eta_hash_bits.json").read_text())
    assert [(row["name"], row["value"]) for row in sweep["rows"]] == [("eta", 4), ("eta", 16)]
    for row in sweep["rows"]:
        assert 0.0 <= row["retrieval_recall"]["mean"] <= 1.0
        config = json.loads((out / row["runs"][0] / "metrics.json").read_text())["config"]
        assert config["model"]["hash_bits"] == row["value"]
    assert "| eta | 4 |" in (out / "sweep_eta_hash_bits.md").read_text()


@pytest.mark.slow
def test_summary_only_reports_the_finished_runs_and_names_the_rest(suite, tmp_path, trained, capsys):
    out = tmp_path / "results"
    args = ["compare", "--suite", str(suite), "--out", str(out), "--no-progress", "--seeds", "2", "--summary-only"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no run of the main table has finished" in error and "without --summary-only" in error
    run_suite(suite, out, seeds=1, **QUIET)
    trained.clear()
    run_suite(suite, out, seeds=2, summary_only=True, **QUIET)
    assert trained == [], "--summary-only trained a run"
    summary = json.loads((out / "summary.json").read_text())
    assert [(row["name"], row["seeds"]) for row in summary["models"]] == [("eta", [2024]), ("din", [2024])]
    assert summary["missing"] == ["eta seed 2025", "din seed 2025"]
    assert "- Not finished yet, left out: eta seed 2025, din seed 2025." in (out / "summary.md").read_text()


@pytest.mark.slow
def test_models_runs_only_the_named_entries_and_the_whole_suite_reuses_them(suite, tmp_path, trained):
    out = tmp_path / "results"
    assert main(["compare", "--suite", str(suite), "--out", str(out), "--no-progress", "--models", "din"]) == 0
    assert [folder.parent.name.split("-")[0] for folder in trained] == ["din"]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"] for row in summary["models"]] == ["din"]
    run_suite(suite, out, seeds=1, **QUIET)
    assert [folder.parent.name.split("-")[0] for folder in trained] == ["din", "eta"], "the part's din run was not reused"


def _row(name: str, auc: float, seconds: float = 1.0, infer: float = 1.0, value=None, seed: int = 2024) -> dict:
    return {"name": name, "value": value, "test_auc": {"mean": auc, "std": 0.0},
            "train_seconds_per_epoch": {"mean": seconds, "std": 0.0}, "infer_samples_per_second": {"mean": infer, "std": 0.0},
            "by_seed": {str(seed): {"test_auc": auc, "train_seconds_per_epoch": seconds, "infer_samples_per_second": infer}}}


def _seeds(*rows: dict) -> dict:
    """One row from one-seed rows of the same entry (seeds 2024, 2025, ...), means as summarise() takes them."""
    merged = {**rows[0], "by_seed": {str(2024 + i): row["by_seed"]["2024"] for i, row in enumerate(rows)}}
    for key in ("test_auc", "train_seconds_per_epoch", "infer_samples_per_second"):
        merged[key] = {"mean": float(np.mean([row[key]["mean"] for row in rows])), "std": 0.0}
    return merged


def _paper(tmp_path, paper: dict | None, models=("avg_pool", "din", "din_long", "sim_hard", "eta", "eta_peer",
                                               "eta_inner_product", "full_attention", "full_attention_peer")) -> Paper | None:
    """The `paper:` section as load_suite reads it from a suite YAML of these entries."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    suite = {"base": "base.yaml", "models": [{"name": name, "model": name.removesuffix("_peer")} for name in models]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite if paper is None else {**suite, "paper": paper}))
    return load_suite(tmp_path / "suite.yaml").paper


def test_a_suites_paper_section_is_read_as_its_claims(tmp_path):
    paper = _paper(tmp_path, {"ordering": ETA_PAPER, "versus": ["eta vs full_attention", "eta_peer vs full_attention_peer"]})
    assert paper == Paper(["avg_pool", "din", "sim_hard", "eta", "full_attention"], [True, True, True, False],
                          [("eta", "full_attention"), ("eta_peer", "full_attention_peer")])
    assert _paper(tmp_path, None) is None


def test_without_a_paper_section_there_are_no_verdict_lines(tmp_path):
    rows = [_row("din", 0.81), _row("eta", 0.80), _row("full_attention", 0.82)]
    paper = _paper(tmp_path, None)
    sweep = Sweep("long_len", "long_len", [None], ["eta", "full_attention"])
    assert ordering_verdict(rows, paper) == versus_verdicts(rows, paper) == sweep_verdicts(rows, sweep, paper) == []


def test_ordering_verdict_names_each_pair_that_breaks_the_papers_order(tmp_path):
    paper = _paper(tmp_path, {"ordering": ETA_PAPER})
    rows = [_row("avg_pool", 0.80), _row("din", 0.81), _row("din_long", 0.70), _row("sim_hard", 0.815),
            _row("eta", 0.816), _row("full_attention", 0.816)]
    assert ordering_verdict(rows, paper) == ["- Paper ordering (avg_pool < din < sim_hard < eta <= full_attention, "
                                             "mean test AUC): holds."]  # din_long is not in the claim; eta may equal full
    rows[3], rows[5] = _row("sim_hard", 0.817), _row("full_attention", 0.8159)
    assert ordering_verdict(rows, paper)[0].endswith("does NOT hold: sim_hard 0.8170 vs eta 0.8160; "
                                                     "eta 0.8160 vs full_attention 0.8159.")
    assert ordering_verdict([_row("eta", 0.8)], paper) == []
    # an entry without a row leaves the claim; its two links join, strict when either was
    assert ordering_verdict(rows[:3] + rows[5:], paper) == [
        "- Paper ordering (avg_pool < din < full_attention, mean test AUC): holds."]
    assert ordering_verdict([_row("eta", 0.8), _row("full_attention", 0.8)], paper)[0].endswith(": holds.")
    assert ordering_verdict([_row("din", 0.8), _row("full_attention", 0.8)], paper) == [
        "- Paper ordering (din < full_attention, mean test AUC): does NOT hold: din 0.8000 vs full_attention 0.8000."]
    # with several seeds a broken pair shows its per-seed difference, to be told from noise
    rows[3] = _seeds(_row("sim_hard", 0.817), _row("sim_hard", 0.815), _row("sim_hard", 0.816))
    rows[4] = _seeds(_row("eta", 0.816), _row("eta", 0.814), _row("eta", 0.8165))
    assert ordering_verdict(rows, paper)[0].endswith(  # differences -0.001, -0.001, +0.0005
        "NOT hold: sim_hard 0.8160 vs eta 0.8155 (eta - sim_hard by seed: -0.0005 ± 0.0009, 3 seeds).")


def test_each_versus_pair_is_set_against_its_reference_seed_by_seed(tmp_path):
    paper = _paper(tmp_path, {"versus": ["eta vs full_attention", "eta_peer vs full_attention_peer"]})
    rows = [_row("eta", 0.8160, 80.0, 3000.0), _row("eta_peer", 0.79, 60.0, 900.0),
            _row("eta_inner_product", 0.9), _row("full_attention", 0.8159, 260.0, 1000.0),
            _row("full_attention_peer", 0.7905, 200.0, 300.0)]
    assert versus_verdicts(rows, paper) == [
        "- eta vs full_attention: test AUC +0.0001; training time per epoch x0.31; inference throughput x3.00.",
        "- eta_peer vs full_attention_peer: test AUC -0.0005; training time per epoch x0.30; inference throughput x3.00."]
    assert ordering_verdict(rows, paper) == []  # a paper section without an ordering claims none
    sweep = Sweep("long_len", "long_len", [64, 1024], ["eta", "full_attention"])
    rows = [_row("eta", 0.81, 10.0, 100.0, 64), _row("full_attention", 0.81, 10.0, 100.0, 64),
            _row("eta", 0.82, 20.0, 100.0, 1024), _row("full_attention", 0.83, 80.0, 25.0, 1024)]
    assert sweep_verdicts(rows, sweep, paper) == [
        "- long_len=64: eta vs full_attention: test AUC +0.0000; training time per epoch x1.00; inference throughput x1.00.",
        "- long_len=1024: eta vs full_attention: test AUC -0.0100; training time per epoch x0.25; inference throughput x4.00."]
    # costs are set against each other seed by seed (one sitting each), not as ratios of means
    eta = _seeds(_row("eta", 0.816, 80.0, 3000.0), _row("eta", 0.815, 120.0, 2000.0))
    full = _seeds(_row("full_attention", 0.815, 240.0, 1000.0), _row("full_attention", 0.815, 400.0, 500.0))
    assert versus_verdicts([eta, full], paper) == [
        "- eta vs full_attention (by seed, 2 seeds): test AUC +0.0005 ± 0.0007; training time per epoch x0.32 ± 0.02; "
        "inference throughput x3.50 ± 0.71."]


def _record(run, auc: float, seconds: float, infer: float) -> None:
    """A finished run's metrics.json (and retrieval.json), written by hand."""
    run.folder.mkdir(parents=True)
    config = run.config.model_dump(mode="json")
    metrics = {"config": config, "model": run.label, "parameters": 1000, "epochs": 1, "train_seconds_per_epoch": seconds,
               "train_samples_per_second": 1.0, "valid": {"auc": auc},
               "test": {"auc": auc, "gauc": auc, "logloss": 0.5, "infer_samples_per_second": infer}}
    (run.folder / "metrics.json").write_text(json.dumps(metrics))
    (run.folder / "retrieval.json").write_text(json.dumps({"recall": 0.5, "config": config}))


@pytest.mark.parametrize("paper,notes", [
    (None, []),
    ({"ordering": "din < eta <= full_attention", "versus": ["eta vs full_attention"]},
     # mean AUC: din 0.805 < eta 0.815 <= full 0.8175; eta - full by seed: 0, -0.005; cost 10/40, 30/40;
     # throughput 300/100, 400/100
     ["- Paper ordering (din < eta <= full_attention, mean test AUC): holds.",
      "- eta vs full_attention (by seed, 2 seeds): test AUC -0.0025 ± 0.0035; training time per epoch x0.50 ± 0.35; "
      "inference throughput x3.50 ± 0.71."]),
])
def test_summary_md_checks_the_suites_paper_claims_on_the_recorded_runs(tmp_path, monkeypatch, paper, notes):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    suite = {"base": "base.yaml", "models": ["din", "eta", "full_attention"], **({"paper": paper} if paper else {})}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "results"
    by_seed = {"din": [(0.80, 1.0, 1.0), (0.81, 1.0, 1.0)], "eta": [(0.82, 10.0, 300.0), (0.81, 30.0, 400.0)],
               "full_attention": [(0.82, 40.0, 100.0), (0.815, 40.0, 100.0)]}
    for run in plan_runs(load_suite(tmp_path / "suite.yaml"), out, seeds=2):
        _record(run, *by_seed[run.label][run.seed - 2024])
    monkeypatch.setattr(etarec.compare.driver, "ensure_prepared", lambda *_, **__: types.SimpleNamespace(meta={"dataset": "x"}))
    run_suite(tmp_path / "suite.yaml", out, seeds=2, summary_only=True, **QUIET)
    lines = (out / "summary.md").read_text().splitlines()
    table_end = max(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[table_end + 1:] == ([""] + notes if notes else [])


def test_the_committed_ml1m_tables_come_back_byte_for_byte_from_their_run_records(tmp_path, monkeypatch):
    """The config digest of every run and the tables' format are unchanged: `--summary-only` over
    the committed run records (a copy) finds every run finished and writes the committed files."""
    out = tmp_path / "ml1m"
    shutil.copytree(ML1M / "runs", out / "runs")
    monkeypatch.chdir(REPO)  # summary.json names the suite as given: configs/suites/ml1m.yaml
    suite = load_suite("configs/suites/ml1m.yaml")
    unfinished = [str(run.folder.relative_to(out)) for run in plan_runs(suite, out, seeds=3) if finished_metrics(run) is None]
    assert unfinished == [], "these committed runs are no longer found: a changed config digest or config"
    monkeypatch.setattr(etarec.compare.driver, "ensure_prepared", lambda *_, **__: types.SimpleNamespace(meta={"dataset": "ml-1m"}))
    run_suite("configs/suites/ml1m.yaml", out, seeds=3, summary_only=True, **QUIET)
    run_suite("configs/suites/ml1m.yaml", out, seeds=1, sweeps=["long_len=64,256,1024,2048"], summary_only=True, **QUIET)
    for name in ("summary.json", "summary.md", "sweep_long_len.json", "sweep_long_len.md"):
        assert (out / name).read_text() == (ML1M / name).read_text(), name


def test_inner_product_retrieval_has_recall_one_and_simhash_at_most_one(prepared_dir):
    config = build_config({**BASE, "data": {"prepared_dir": str(prepared_dir)}})
    data = ensure_prepared(config.data, log=lambda *_: None)
    builder = BatchBuilder(data, 32, 8)
    recalls = {}
    for name in ("eta_inner_product", "eta", "sim_hard"):
        torch.manual_seed(0)
        model = build_model(config.model.model_copy(update={"name": name}), Vocab.from_meta(data.meta))
        recalls[name] = retrieval_recall(model, builder, data.splits["test"], 1024, max_samples=3000)
    assert recalls["eta_inner_product"] == 1.0
    assert 0.0 < recalls["eta"] < 1.0 and 0.0 <= recalls["sim_hard"] < 1.0


@pytest.mark.parametrize("change,args,message", [
    ({"models": [{"name": "etaa"}]}, [], "entry 'etaa': unknown model 'etaa'; did you mean 'eta'?"),
    ({"models": [{"name": "x", "model": "nope"}]}, [], "entry 'x': unknown model 'nope'"),
    ({"models": [{"name": "eta", "set": {"model.top_kk": 3}}]}, [], "unknown config key 'model.top_kk'"),
    ({"models": [{"name": "eta", "set": {"data.dataset": "ml-1m"}}]}, [], "overrides data.*"),
    ({"models": ["eta", "eta"]}, [], "two entries are named 'eta'"),
    ({"models": None}, [], "needs `base`"),
    ({}, ["--sweep", "eta.hash_bits"], "sweep 'eta.hash_bits' is malformed"),
    ({}, ["--sweep", "eta.hash_bits=4,,8"], "is malformed"),
    ({}, ["--sweep", "eta.hash_bitz=4,8"], "'hash_bitz' is not a model config key; did you mean 'hash_bits'?"),
    ({}, ["--sweep", "etta.hash_bits=4,8"], "no entry named 'etta'; did you mean 'eta'?"),
    ({}, ["--sweep", "eta.top_k=8,64"], "sweep eta.top_k: entry 'eta' with top_k=64: invalid config"),
    ({}, ["--seeds", "0"], "need at least one seed"),
    ({}, ["--models", "din,etaa"], "--models din,etaa: no entry named 'etaa'; did you mean 'eta'?"),
    ({"paper": {"ordering": "din < etaa"}}, [], "paper: no entry named 'etaa'; did you mean 'eta'?"),
    ({"paper": {"ordering": "eta"}}, [], "`ordering` must be a chain of entries"),
    ({"paper": {"versus": ["eta vs"]}}, [], "`versus` must be a list of 'ENTRY vs REFERENCE'"),
    ({"paper": {"order": "din < eta"}}, [], "paper: unknown key 'order'"),
])
def test_bad_suite_or_sweep_is_one_clear_line(suite, tmp_path, capsys, change, args, message):
    raw = {**yaml.safe_load(suite.read_text()), **change}
    suite.write_text(yaml.safe_dump(raw))
    assert main(["compare", "--suite", str(suite), "--out", str(tmp_path / "out"), "--no-progress", *args]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("etarec compare: error: ") and message in error, error
    assert not (tmp_path / "out" / "runs").exists(), "nothing may be trained before the input is validated"
