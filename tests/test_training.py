"""End to end on the bundled data: determinism, checkpoints, evaluate == train's test metrics."""
import json

import pytest

from etarec.cli import main
from etarec.config import build_config
from etarec.data.prepare import ensure_prepared
from etarec.train.trainer import train

TINY = {"model": {"long_len": 32, "short_len": 8, "top_k": 8, "hash_bits": 16, "use_time": True, "use_action": True},
        "train": {"epochs": 2, "max_steps_per_epoch": 15, "eval_batch_size": 4096, "batch_size": 128}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    config = build_config({"data": {"prepared_dir": str(tmp_path_factory.mktemp("prepared") / "ml-latest-small")}})
    return config.data, ensure_prepared(config.data, log=lambda *_: None)


def tiny_config(data_config, name="eta", seed=7):
    raw = {**TINY, "data": data_config.model_dump(mode="json"),
           "model": {**TINY["model"], "name": name}, "train": {**TINY["train"], "seed": seed}}
    return build_config(raw)


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_another_seed_does_not(data, tmp_path):
    data_config, prepared = data
    quiet = {"progress": False, "log": lambda *_: None, "data": prepared}
    first = train(tiny_config(data_config), tmp_path / "a", **quiet)
    second = train(tiny_config(data_config), tmp_path / "b", **quiet)
    other = train(tiny_config(data_config, seed=8), tmp_path / "c", **quiet)
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            assert first[split][metric] == second[split][metric]
    assert first["test"]["auc"] != other["test"]["auc"]
    assert 0.5 < first["test"]["auc"] < 1.0  # it learned something from 30 steps


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eta", "din"])
def test_cli_train_then_evaluate_reproduces_test_metrics(data, tmp_path, capsys, name):
    data_config, _ = data
    out = tmp_path / name
    overrides = [f"data.prepared_dir={data_config.prepared_dir}", f"model.name={name}", "train.epochs=1",
                 "train.max_steps_per_epoch=10", "model.long_len=32", "model.short_len=8", "model.top_k=8",
                 "train.eval_batch_size=4096"]
    args = ["train", "--config", "configs/quickstart_eta.yaml", "--out", str(out), "--no-progress"]
    assert main(args + [item for o in overrides for item in ("--set", o)]) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["model"] == name and (out / "config.yaml").is_file() and (out / "model.pt").is_file()
    assert not list(out.glob(".*tmp*")), "a temp file was left behind"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--split", "test", "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for metric in ("auc", "gauc", "logloss"):
        assert evaluated[metric] == pytest.approx(written["test"][metric], abs=1e-9)
