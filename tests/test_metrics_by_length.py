"""Metrics by real history length: train/metrics.py `metrics_by_length` against a slow, obviously
correct reference (a loop over buckets, sklearn per bucket); one-class and empty buckets get None
with a reason; `etarec evaluate --length-buckets` and `etarec compare` carry the buckets into the
JSON, the Markdown and by_length.png."""
import json
import types

import numpy as np
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score

import etarec.compare.driver
from etarec.cli import main
from etarec.compare import load_suite, plan_runs, run_suite
from etarec.config import build_config
from etarec.data.prepare import ensure_prepared
from etarec.errors import EtarecError
from etarec.train.metrics import bucket_names, length_edges, metrics_by_length


def reference_by_length(users, labels, scores, lengths, edges):
    """A python loop: for each bucket, the rows with low <= length < high, sklearn's AUC and
    logloss on them, and a per-user loop of sklearn AUCs weighted by the user's rows for gAUC."""
    bounds = [0] + list(edges) + [float("inf")]
    out = []
    for low, high in zip(bounds, bounds[1:]):
        rows = [i for i in range(len(labels)) if low <= lengths[i] < high]
        y = np.array([labels[i] for i in rows])
        p = np.array([scores[i] for i in rows])
        u = np.array([users[i] for i in rows])
        entry = {"samples": len(rows), "auc": None, "gauc": None, "logloss": None}
        if rows:
            entry["logloss"] = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])
            if len(set(y.tolist())) == 2:
                entry["auc"] = roc_auc_score(y, p)
            total = weight = 0.0
            for user in sorted(set(u.tolist())):
                mine = u == user
                if len(set(y[mine].tolist())) == 2:
                    total += roc_auc_score(y[mine], p[mine]) * mine.sum()
                    weight += mine.sum()
            entry["gauc"] = total / weight if weight else None
        out.append(entry)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_metrics_by_length_equal_sklearn_on_each_buckets_rows(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    lengths = np.concatenate([rng.integers(0, 3000, n - 4), [49, 50, 200, 1000]])  # edges belong to the upper bucket
    users = rng.integers(0, 80, n)
    labels = (rng.random(n) < 0.4).astype(np.float32)
    scores = np.round(rng.random(n), 2)  # ties
    edges = (50, 200, 1000)
    got = metrics_by_length(users, labels, scores, lengths, edges)
    want = reference_by_length(users, labels, scores, lengths, edges)
    assert got["edges"] == [50, 200, 1000]
    assert [b["bucket"] for b in got["buckets"]] == ["< 50", "50-200", "200-1000", ">= 1000"]
    assert sum(b["samples"] for b in got["buckets"]) == n
    for mine, ref in zip(got["buckets"], want):
        assert mine["samples"] == ref["samples"]
        for key in ("auc", "gauc", "logloss"):
            assert mine[key] == pytest.approx(ref[key], abs=1e-12), key


def test_a_bucket_with_one_class_or_no_samples_has_null_metrics_with_a_reason():
    lengths = np.array([10, 20, 30, 60, 70, 80, 90])
    labels = np.array([1, 1, 1, 0, 1, 0, 1], dtype=np.float32)  # bucket < 50: positives only
    users = np.array([1, 1, 2, 3, 3, 4, 4])
    scores = np.linspace(0.1, 0.9, 7)
    got = metrics_by_length(users, labels, scores, lengths, (50, 200))
    one_class, mixed, empty = got["buckets"]
    assert one_class["auc"] is None and one_class["gauc"] is None and one_class["logloss"] is not None
    assert one_class["why_null"] == {"auc": "one class only (all positive)", "gauc": "no user with both classes in this bucket"}
    assert mixed["auc"] == pytest.approx(roc_auc_score(labels[3:], scores[3:]))
    assert "why_null" not in mixed
    assert empty["samples"] == 0 and empty["auc"] is None and empty["why_null"]["auc"] == "no samples"
    json.dumps(got, allow_nan=False)  # valid JSON: no NaN anywhere


def test_length_edges_parse_and_refuse_in_one_line():
    assert length_edges("50,200,1000") == (50, 200, 1000)
    assert length_edges([100]) == (100,)
    assert bucket_names((100,)) == ["< 100", ">= 100"]
    for bad in ("200,50", "0,10", "a,b", "", "50,50"):
        with pytest.raises(EtarecError, match="strictly increasing"):
            length_edges(bad)


TINY = ["model.long_len=32", "model.short_len=8", "model.top_k=8", "model.hash_bits=16", "train.epochs=1",
        "train.max_steps_per_epoch=5", "train.eval_batch_size=4096", "train.batch_size=128"]


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    ensure_prepared(build_config({"data": {"prepared_dir": str(folder)}}).data, log=lambda *_: None)
    return folder


@pytest.mark.slow
def test_train_records_buckets_and_evaluate_takes_other_edges(prepared_dir, tmp_path, capsys):
    out = tmp_path / "eta"
    sets = [f"data.prepared_dir={prepared_dir}", *TINY]
    assert main(["train", "--config", "configs/quickstart_eta.yaml", "--out", str(out), "--no-progress",
                 *[item for s in sets for item in ("--set", s)]]) == 0
    written = json.loads((out / "metrics.json").read_text())
    recorded = written["test"]["by_length"]
    assert recorded["edges"] == [50, 200, 1000]
    assert sum(b["samples"] for b in recorded["buckets"]) > 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--no-progress", "--length-buckets", "100,400"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["by_length"]["edges"] == [100, 400]
    assert [b["bucket"] for b in evaluated["by_length"]["buckets"]] == ["< 100", "100-400", ">= 400"]
    assert sum(b["samples"] for b in evaluated["by_length"]["buckets"]) == sum(b["samples"] for b in recorded["buckets"])
    assert main(["evaluate", "--checkpoint", str(out), "--length-buckets", "400,100"]) == 1
    assert "strictly increasing" in capsys.readouterr().err


def _record(run, aucs: list, seconds: float = 1.0) -> None:
    """A finished run's metrics.json with buckets (edges 50, 200), written by hand."""
    run.folder.mkdir(parents=True)
    buckets = [{"bucket": name, "samples": 10 * (i + 1), "auc": auc, "gauc": auc, "logloss": 0.5}
               for i, (name, auc) in enumerate(zip(["< 50", "50-200", ">= 200"], aucs))]
    test = {"auc": 0.7, "gauc": 0.6, "logloss": 0.5, "infer_samples_per_second": 100.0,
            "by_length": {"edges": [50, 200], "buckets": buckets}}
    metrics = {"config": run.config.model_dump(mode="json"), "model": run.label, "parameters": 10, "epochs": 1,
               "train_seconds_per_epoch": seconds, "train_samples_per_second": 1.0, "valid": {"auc": 0.7}, "test": test}
    (run.folder / "metrics.json").write_text(json.dumps(metrics))


def test_compare_tables_give_buckets_and_gains_over_din_seed_by_seed(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"name": "eta", "long_len": 32, "short_len": 8,
                                                                   "top_k": 8}}))
    suite = {"base": "base.yaml", "models": ["din", "eta"], "length_buckets": [50, 200]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "results"
    aucs = {("din", 2024): [0.60, 0.70, None], ("din", 2025): [0.62, 0.70, 0.80],
            ("eta", 2024): [0.61, 0.75, 0.90], ("eta", 2025): [0.61, 0.74, 0.86]}
    for run in plan_runs(load_suite(tmp_path / "suite.yaml"), out, seeds=2):
        _record(run, aucs[run.label, run.seed])
    monkeypatch.setattr(etarec.compare.driver, "ensure_prepared", lambda *_, **__: types.SimpleNamespace(meta={"dataset": "x"}))
    lines = []
    written = run_suite(tmp_path / "suite.yaml", out, seeds=2, summary_only=True, progress=False, log=lines.append)
    assert [p.name for p in written] == ["summary.json", "summary.md", "by_length.png", "auc_vs_cost.png"]
    rows = {row["name"]: row for row in json.loads((out / "summary.json").read_text())["models"]}
    eta = rows["eta"]["test_by_length"]["buckets"]
    assert [cell["samples"] for cell in eta] == [10, 20, 30]
    assert eta[1]["auc"]["mean"] == pytest.approx(0.745) and eta[1]["auc"]["std"] == pytest.approx(np.std([0.75, 0.74], ddof=1))
    # gains by seed: bucket 0: +0.01, -0.01; bucket 2: only seed 2025 has a din AUC (+0.06)
    assert eta[0]["auc_gain_over_din"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert eta[2]["auc_gain_over_din"] == {"mean": pytest.approx(0.06), "std": 0.0, "n": 1}
    assert rows["din"]["test_by_length"]["buckets"][2]["auc"]["n"] == 1
    table = (out / "summary.md").read_text()
    assert "## Test metrics by real history length" in table and "| model | < 50 (n=10) | 50-200 (n=20) | >= 200 (n=30) |" in table
    assert "| eta | 0.6100 ± 0.0000 | 0.7450 ± 0.0071 | 0.8800 ± 0.0283 |" in table
    assert "| eta | +0.0000 ± 0.0141 | +0.0450 ± 0.0071 | +0.0600 |" in table
    assert (out / "by_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out / 'by_length.png'}" in lines

    # other edges than the recorded ones and no weights: the runs drop out of the by-length tables, one line each
    lines.clear()
    written = run_suite(tmp_path / "suite.yaml", out, seeds=2, summary_only=True, progress=False, log=lines.append,
                        length_buckets="100")
    assert "by_length.png" not in [p.name for p in written]
    assert "Test metrics by real history length" not in (out / "summary.md").read_text()
    assert sum("no metrics by history length" in line for line in lines) == 4
    assert any(line.startswith("skipped by_length.png") for line in lines) is False  # no rows: no plot, no line


def test_a_bad_length_buckets_key_is_one_line(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"name": "din"}}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "models": ["din"],
                                                         "length_buckets": [200, 50]}))
    with pytest.raises(EtarecError, match="length_buckets.*strictly increasing"):
        load_suite(tmp_path / "suite.yaml")
