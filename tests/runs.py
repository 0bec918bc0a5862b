"""Helpers of the scale-out tests: tiny configs on the bundled data, launching real `etarec` and
torchrun processes, reading a run's saved state. Not a test module."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600
# a crash of a launched process shows its Python stack instead of only a return code
ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def tiny_raw(prepared_dir: Path, **train) -> dict:
    """A small ETA run on ml-latest-small: seconds per epoch on 2 cores."""
    return {
        "data": {"dataset": "ml-latest-small", "prepared_dir": str(prepared_dir)},
        "model": {"name": "eta", "long_len": 32, "short_len": 8, "top_k": 8, "hash_bits": 16, "embedding_dim": 16,
                  "use_time": True, "use_action": True, "mlp": [64, 32]},
        "train": {"epochs": 2, "batch_size": 256, "eval_batch_size": 4096, "seed": 11, "threads": 1, **train},
    }


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def etarec(*args: str) -> list[str]:
    return [sys.executable, "-m", "etarec", *args]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    """A torchrun command line: a rendezvous on a free local port, `processes` workers."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def progress(out: Path) -> dict | None:
    """The loop position saved in out/state.pt, or None while there is none."""
    try:
        return torch.load(out / "state.pt", weights_only=True)["progress"]
    except FileNotFoundError:
        return None


def kill_when(process: subprocess.Popen, out: Path, ready, victim=None) -> dict:
    """SIGKILL the process (or the pid victim() returns) once ready(progress) holds; returns the
    progress that was on disk just before the kill."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        state = progress(out)
        if state is not None and ready(state):
            os.kill(victim() if victim else process.pid, signal.SIGKILL)
            process.wait(timeout=TIMEOUT)
            return state
        assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr.read()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError("the run never reached the point to kill it at")


def children(pid: int) -> list[int]:
    """Pids of the live child processes of `pid` (from /proc: torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(after_name[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "state.pt", weights_only=True)["model"]


def killed_and_resumed_two_process_run(config: Path, reference: Path, killed: Path) -> None:
    """Train `config` on 2 processes into `reference` uninterrupted, and into `killed` with one
    worker SIGKILLed mid-epoch (torchrun then stops the other and fails) and `--resume`d."""
    run(torchrun("-m", "etarec", "train", "--config", str(config), "--out", str(reference), "--no-progress"))
    launcher = subprocess.Popen(torchrun("-m", "etarec", "train", "--config", str(config), "--out", str(killed),
                                         "--no-progress"), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    at_kill = kill_when(launcher, killed, lambda p: 0 < p["step"], victim=lambda: children(launcher.pid)[0])
    assert not at_kill["done"] and launcher.returncode != 0
    assert not (killed / "metrics.json").exists()
    resumed = run(torchrun("-m", "etarec", "train", "--resume", str(killed), "--no-progress"))
    assert "resuming" in resumed.stdout


def assert_same_metrics(got_run: Path, expected_run: Path) -> None:
    """The two runs' metrics.json agree exactly: epochs, best epoch, every epoch's train loss,
    valid and test metrics."""
    got = json.loads((got_run / "metrics.json").read_text())
    expected = json.loads((expected_run / "metrics.json").read_text())
    assert (got["epochs"], got["best_epoch"]) == (expected["epochs"], expected["best_epoch"])
    assert [e["train_loss"] for e in got["history"]] == [e["train_loss"] for e in expected["history"]]
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            assert got[split][metric] == expected[split][metric], (split, metric)
