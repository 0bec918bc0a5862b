"""Exact resume: a training run killed with SIGKILL at any point and continued with
`etarec train --resume DIR` ends exactly where the uninterrupted run ends; a folder without a
usable state is refused with one line that names the problem and the fix."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from etarec.cli import main
from etarec.config import build_config
from etarec.data.prepare import ensure_prepared
from etarec.errors import EtarecError
from etarec.train.trainer import train
from runs import ENV, REPO, assert_same_metrics, etarec, final_weights, kill_when, run, tiny_raw, write_config

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    ensure_prepared(build_config(tiny_raw(folder)).data, log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def finished_run(prepared_dir, tmp_path_factory):
    """A finished 1-epoch run folder (config.yaml, model.pt, state.pt, metrics.json)."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    train(build_config(tiny_raw(prepared_dir, epochs=1, max_steps_per_epoch=3)), out, **QUIET)
    return out


@pytest.mark.slow
def test_sigkill_twice_then_resume_ends_with_the_uninterrupted_metrics(prepared_dir, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(prepared_dir, epochs=3, max_steps_per_epoch=20,
                                                           state_every_steps=2, patience=5))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run(etarec("train", "--config", str(config), "--out", str(reference), "--no-progress"))

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(etarec("train", *args, "--no-progress"), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    # killed mid-epoch 1, resumed, killed again once epoch 2 is under way, resumed to the end
    first = kill_when(start("--config", str(config), "--out", str(killed)), killed, lambda p: p["step"] > 0)
    assert first["epoch"] == 0 and 0 < first["step"] < 20
    second = kill_when(start("--resume", str(killed)), killed, lambda p: p["epoch"] >= 1 and p["step"] > 0)
    assert 0 < second["step"] < 20 and not second["done"]
    assert not (killed / "metrics.json").exists()
    run(etarec("train", "--resume", str(killed), "--no-progress"))

    assert_same_metrics(killed, reference)
    for name, weight in final_weights(reference).items():
        assert torch.equal(final_weights(killed)[name], weight), name
    assert not list(killed.glob(".*tmp*")), "a killed write's temp file was left behind"


def test_resuming_a_finished_run_only_evaluates_again(finished_run, prepared_dir, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(finished_run, out)
    before = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    after = json.loads((out / "metrics.json").read_text())
    assert after["test"]["auc"] == before["test"]["auc"] and after["history"] == before["history"]


def resume_error(capsys, folder, *words, extra=()) -> None:
    assert main(["train", "--resume", str(folder), *extra, "--no-progress"]) == 1
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert line.count("\n") == 0 and line.startswith("etarec train: error:"), captured.err
    for word in words:
        assert word in line, (word, line)


def copy_of(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def test_resume_without_a_state(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    resume_error(capsys, tmp_path / "empty", "no training state", "state.pt", "--config")
    resume_error(capsys, tmp_path / "missing", "no training state", "--config")


def test_resume_with_a_truncated_state(finished_run, capsys, tmp_path):
    out = copy_of(finished_run, tmp_path)
    data = (out / "state.pt").read_bytes()
    (out / "state.pt").write_bytes(data[: len(data) // 2])
    resume_error(capsys, out, "state.pt", "truncated or corrupt", "start the run again")


def test_resume_with_another_runs_state(finished_run, prepared_dir, capsys, tmp_path):
    other = tmp_path / "other"
    raw = tiny_raw(prepared_dir, epochs=1, max_steps_per_epoch=3)
    raw["model"]["long_len"] = 16
    (other).mkdir()
    write_config(other / "config.yaml", raw)
    shutil.copy(finished_run / "state.pt", other / "state.pt")
    resume_error(capsys, other, "belongs to another run", "model.long_len", "32", "16")


def test_resume_with_a_file_that_is_not_a_state(finished_run, capsys, tmp_path):
    out = copy_of(finished_run, tmp_path)
    shutil.copy(out / "model.pt", out / "state.pt")
    resume_error(capsys, out, "not an etarec training state")


def test_resume_with_another_number_of_processes_or_other_data(finished_run, capsys, tmp_path):
    out = copy_of(finished_run, tmp_path)
    payload = torch.load(out / "state.pt", weights_only=True)
    torch.save({**payload, "world_size": 2}, out / "state.pt")
    resume_error(capsys, out, "written by 2 process(es)", "this run has 1", "--nproc_per_node")
    torch.save({**payload, "data": {**payload["data"], "num_events": 1}}, out / "state.pt")
    resume_error(capsys, out, "prepared data differs")


def test_resume_takes_no_config(finished_run, capsys, tmp_path):
    resume_error(capsys, finished_run, "drop --config", extra=("--config", "configs/quickstart_eta.yaml"))


def test_a_new_run_in_a_folder_drops_the_old_state_first(finished_run, tmp_path):
    """A fresh start that dies before its first save must not leave the old run's state behind
    for a later --resume to continue by mistake."""
    out = copy_of(finished_run, tmp_path)
    raw = tiny_raw(tmp_path / "not-prepared", epochs=1)
    raw["data"]["path"] = str(tmp_path / "no-such-data")
    with pytest.raises(EtarecError, match="does not exist"):
        train(build_config(raw), out, **QUIET)
    assert not (out / "state.pt").exists()
