"""End-to-end training speed as users meet it: `etarec train` itself, batch building included.

Each point is one fresh `etarec train` process (the CLI, fixed steps: 1 epoch of
train.max_steps_per_epoch steps of batch 256, no mid-epoch state, the peer's model configuration)
on the peer generator's long workload, at each L, for each model, once quiet and once beside one
competing busy process (`yes > /dev/null`) that this script starts before the point and kills
after it, whatever happens. The two conditions alternate point by point (quiet, loaded, then
loaded, quiet in the next repetition) so drift hits both alike. Per point, from the run's
metrics.json: the loop's samples/s (batch building included), the step-only samples/s (null where
the trainer does not report it), valid/test inference samples/s; from os.wait4: the peak RSS of
that `etarec train` process alone; and the wall seconds. Slow points get fewer steps: a (model, L)
whose training would take longer than --point-seconds (estimated from the model's quiet figure at
the previous L, cost taken as linear in L, or from a rough prior) runs fewer steps, at least
--min-steps; the steps used are recorded, and are the same in both conditions and every rep.

Beside etarec's eta points at L=4096, under the same two conditions and interleaved with them:
FuxiCTR's ETA (the peer's own bench.py, what `run.sh --models ETA --L 4096 --reps 1` runs) and
etarec's model step on the identical workload and batches (`benchmarks/train_cost.py --point`),
both through benchmarks/side_by_side.py's helpers: the like-for-like etarec / FuxiCTR ratio.

    python ../shared/peers/fuxictr/gen_data.py --out .bench/synth_long16k --min-hist 16384   # done if missing
    bash ../shared/peers/fuxictr/run.sh --setup-only                  # peer venv + workload, done if missing
    python benchmarks/pipeline.py                                     # all: eta, full_attention, din x 4 L x 2
    python benchmarks/pipeline.py --reps 3 --resume                   # adds reps 1, 2 to the JSON
    python benchmarks/pipeline.py --models eta --L 256,16384 --no-peer
    python benchmarks/pipeline.py --quick    # smoke test: eta at L=256,1024, 10 steps, no peer -> .bench/pipeline-quick.json
    python benchmarks/pipeline.py --models eta --L 256 --steps 10 --peer-L 256 --out /tmp/p.json   # smoke test, peer too

full_attention at long L evaluates in batches of 256 (train.eval_batch_size; 1,024 x 16,384 windows
and their projections would need ~13 GB), recorded per point. On 2 quiet cores the full run
(--reps 1, 56 points) takes about 25 minutes; full_attention is half of it, L=16,384 alone ~5 min
(10 steps at ~35 samples/s, then 10,000 valid + test samples at ~90 samples/s, twice).

This machine is a virtual one whose host runs other guests: at times a third of its CPU time goes
elsewhere (the `st` column of vmstat), which no quiet process table shows. Each point records the
share stolen while it ran (/proc/stat), and a point above --max-steal (5%) is taken again, up to
--steal-retries times; the summary shows the largest share among the points kept.

Writes benchmarks/results/speed/pipeline.json after every point (--resume skips the points it
already holds), pipeline.png (end-to-end samples/s against L) and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRATCH = ROOT / ".bench"  # gitignored: configs, workloads, run folders
OUT = HERE / "results" / "speed" / "pipeline.json"
QUICK_OUT = SCRATCH / "pipeline-quick.json"  # smoke tests stay out of results/
PEER_MODEL = {"embedding_dim": 32, "short_len": 50, "hash_bits": 64, "top_k": 64, "heads": 2, "attention_dim": 64,
              "mlp": [200, 80], "use_user_id": True, "use_profile": False, "use_time": False, "use_action": False}
PEER_L = 4096
# rough quiet samples/s x L of a training step on 2 cores, for the steps of a (model, L) with no
# smaller L measured yet; models missing here are fast enough for the full steps
PRIOR_SPS_TIMES_L = {"full_attention": 6e5}
BIG_EVAL_ELEMENTS = 2**22  # eval_batch_size x L above this: full_attention evaluates in batches of 256


sys.path.insert(0, str(HERE))
import side_by_side  # noqa: E402  (peer helpers: run_peer, run_etarec, PEER, PEER_PYTHON, WORKLOAD)


# ---- workload and config --------------------------------------------------------------------


def ensure_long_workload(workload: Path) -> Path:
    """The peer generator's long workload (generated if missing) and etarec's prepared copy of it."""
    if not (workload / "meta.json").is_file():
        print(f"generating {workload} (gen_data.py --min-hist 16384)", file=sys.stderr)
        subprocess.run([sys.executable, str(side_by_side.PEER / "gen_data.py"), "--out", str(workload),
                        "--min-hist", "16384"], check=True, stdout=sys.stderr)
    from etarec.config import DataConfig
    from etarec.data.prepare import prepared_folder

    return prepared_folder(DataConfig(**data_section(workload)), log=lambda m: print(m, file=sys.stderr))


def ensure_peer_setup() -> None:
    if not side_by_side.PEER_PYTHON.is_file() or not (side_by_side.WORKLOAD / "meta.json").is_file():
        print("setting up the peer venv and workload (run.sh --setup-only, ~2 min once)", file=sys.stderr)
        subprocess.run(["bash", str(side_by_side.PEER / "run.sh"), "--setup-only"], check=True, stdout=sys.stderr)


def data_section(workload: Path) -> dict:
    return {"dataset": "longctr", "path": str(workload), "prepared_dir": str(SCRATCH / f"prepared-{workload.name}")}


def write_config(workload: Path, batch_size: int) -> Path:
    config = {"data": data_section(workload), "model": {"name": "eta", **PEER_MODEL},
              "train": {"batch_size": batch_size, "epochs": 1, "state_every_steps": None}}
    path = SCRATCH / "pipeline.yaml"  # `etarec train --config .bench/pipeline.yaml` repeats a point
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- the competing process and the children -------------------------------------------------


@contextlib.contextmanager
def condition(loaded: bool, busy: str):
    """Quiet, or one busy process beside the point: started before it, killed after it whatever happens."""
    command = {"yes": ["yes"], "python": [sys.executable, "-c", "while True: pass"]}[busy]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL) if loaded else None
    try:
        if process is not None:
            time.sleep(0.5)  # let it take its core
        yield
    finally:
        if process is not None:
            process.kill()
            process.wait()


def run_measured(command: list[str]) -> tuple[int, str, float, float]:
    """(exit status, output, wall seconds, peak RSS MB) of one child; os.wait4 gives its own rusage."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    reaped = False
    try:
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        reaped = True
    finally:
        if not reaped:  # interrupted (Ctrl-C, SIGTERM): stop the child too
            process.kill()
            process.wait()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    process.stdout.close()
    return process.returncode, output, time.perf_counter() - started, usage.ru_maxrss / 1024


def etarec_cli() -> list[str]:
    script = Path(sys.executable).parent / "etarec"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "etarec"]


# ---- the three kinds of point ---------------------------------------------------------------


def eval_batch_size(model: str, length: int) -> int | None:
    """None: the CLI's default (1024). full_attention at long L holds [B, L, d] windows and their
    projections in evaluation: 1024 x 16384 would be ~13 GB, so it evaluates 256 at a time there."""
    return 256 if model == "full_attention" and 1024 * length > BIG_EVAL_ELEMENTS else None


def train_point(config: Path, model: str, length: int, steps: int) -> dict:
    run_dir = SCRATCH / "pipeline-runs" / f"{model}-{length}"
    eval_batch = eval_batch_size(model, length)
    command = etarec_cli() + ["train", "--config", str(config), "--out", str(run_dir), "--overwrite", "--no-progress",
                              "--set", f"model.name={model}", "--set", f"model.long_len={length}",
                              "--set", f"model.top_k={min(64, length)}", "--set", f"train.max_steps_per_epoch={steps}"]
    if eval_batch:
        command += ["--set", f"train.eval_batch_size={eval_batch}"]
    status, output, seconds, peak_mb = run_measured(command)
    point = {"command": " ".join(command), "wall_seconds": seconds, "peak_rss_mb": peak_mb, "eval_batch_size": eval_batch or 1024}
    if status != 0:
        return point | {"error": output.strip().splitlines()[-1:] or [f"exit {status}"]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return point | {"train_sps": metrics["train_samples_per_second"],
                    "train_step_sps": metrics.get("train_step_samples_per_second"),
                    "valid_infer_sps": metrics["valid"]["infer_samples_per_second"],
                    "test_infer_sps": metrics["test"]["infer_samples_per_second"],
                    "train_seconds": metrics.get("train_seconds"), "threads": metrics.get("threads"),
                    "test_auc": metrics["test"]["auc"]}


def peer_point(length: int) -> dict:
    """FuxiCTR's ETA (L=4096 by default) on its default workload: its own bench.py, in its venv."""
    started = time.perf_counter()
    result = side_by_side.run_peer(length, "ETA")
    return {"command": f"bash {side_by_side.PEER / 'run.sh'} --models ETA --L {length} --reps 1",
            "wall_seconds": time.perf_counter() - started, **peer_fields(result)}


def step_point(prepared_peer: Path, length: int) -> dict:
    """etarec's ETA model step on the peer's workload and batches (train_cost.py --point)."""
    started = time.perf_counter()
    result = side_by_side.run_etarec(length, prepared_peer, sparse=False)
    return {"command": f"{sys.executable} {HERE / 'train_cost.py'} --workload {side_by_side.WORKLOAD} "
                       f"--point eta,{length},{prepared_peer}",
            "wall_seconds": time.perf_counter() - started, **peer_fields(result)}


def peer_fields(result: dict) -> dict:
    keys = ("train_sps", "infer_sps", "peak_rss_mb", "train_ms_per_step", "infer_ms_per_step", "train_steps", "infer_steps")
    return {key: result.get(key) for key in keys}


# ---- plan: which points, in which order, how many steps -------------------------------------


def plan_points(models: list[str], lengths: list[int], reps: int, conditions: list[bool], peer_length: int | None) -> list[dict]:
    """Rep-major; per (model, L) both conditions back to back, their order flipped every rep; the
    peer and etarec-step pairs (peer_length; None: none) right after eta's pair at that L."""
    plan = []
    for rep in range(reps):
        order = conditions if rep % 2 == 0 else conditions[::-1]
        for model in models:
            for length in lengths:
                kinds = ["train"] + (["peer", "step"] if model == "eta" and length == peer_length else [])
                for kind in kinds:
                    for loaded in order:
                        plan.append({"kind": kind, "model": "eta" if kind != "train" else model, "L": length,
                                     "rep": rep, "loaded": loaded})
    if peer_length and not any(p["kind"] == "peer" for p in plan):  # no eta at that L asked for: the pairs alone
        plan += [{"kind": kind, "model": "eta", "L": peer_length, "rep": rep, "loaded": loaded}
                 for rep in range(reps) for kind in ("peer", "step")
                 for loaded in (conditions if rep % 2 == 0 else conditions[::-1])]
    return plan


def key(point: dict) -> tuple:
    return point["kind"], point["model"], point["L"], point["rep"], point["loaded"]


def steps_for(model: str, length: int, points: list[dict], args) -> tuple[int, str]:
    """The steps of a (model, L): the ones already used for it, else as many as fit --point-seconds."""
    used = [p["steps"] for p in points if p["kind"] == "train" and p["model"] == model and p["L"] == length]
    if used:
        return used[0], "as in the earlier points of this (model, L)"
    measured = [p for p in points if p["kind"] == "train" and p["model"] == model and not p["loaded"]
                and p["L"] < length and p.get("train_sps")]
    if measured:
        nearest = max(measured, key=lambda p: p["L"])
        estimate, source = nearest["train_sps"] * nearest["L"] / length, f"quiet L={nearest['L']} x {nearest['L']}/{length}"
    elif model in PRIOR_SPS_TIMES_L:
        estimate, source = PRIOR_SPS_TIMES_L[model] / length, "prior"
    else:
        return args.steps, "full"
    fit = int(args.point_seconds * estimate / args.batch_size)
    if fit >= args.steps:
        return args.steps, "full"
    steps = max(args.min_steps, fit)
    return steps, f"~{args.point_seconds:.0f} s of training at an estimated {estimate:,.0f} samples/s ({source})"


# ---- record ---------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "python": platform.python_version(), "torch": torch.__version__,
            "git_commit": git("rev-parse", "HEAD"), "git_modified": git("status", "--porcelain", "--", "src").splitlines(),
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "KMP_", "ETAREC_"))},
            "loadavg_at_start": os.getloadavg()}


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, all) CPU ticks of the whole machine so far (Linux /proc/stat; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    return fields[7], sum(fields)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time the hypervisor gave to other guests between two readings:
    on a shared virtual machine a point can be slow because its cores were elsewhere."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # paths relative to the checkout (../ for its neighbours, ~ for the home folder), so the
    # committed JSON names no machine's folders
    text = json.dumps(record, indent=2).replace(f"{ROOT}/", "").replace(f"{ROOT.parent}/", "../")
    tmp.write_text(text.replace(f"{Path.home()}/", "~/"))
    tmp.replace(path)


def earlier_points(path: Path, settings: dict) -> list[dict]:
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    if record.get("settings", {}).get("batch_size") != settings["batch_size"] or \
            record.get("settings", {}).get("workload") != settings["workload"]:
        sys.exit(f"--resume: {path} was made with other settings ({record.get('settings')}); drop --resume or use --out")
    return [p for p in record.get("points", []) if "kind" in p and "error" not in p]


# ---- summary and plot -----------------------------------------------------------------------


def median(points: list[dict], field: str, **match) -> float | None:
    values = [p[field] for p in points if p.get(field) is not None and all(p.get(k) == v for k, v in match.items())]
    return float(np.median(values)) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def summarize(points: list[dict]) -> tuple[list[dict], list[dict], str]:
    """Medians per (model, L, condition) -> rows, peer rows, and the Markdown of both."""
    rows, peer_rows = [], []
    trains = [p for p in points if p["kind"] == "train"]
    for model in dict.fromkeys(p["model"] for p in trains):
        for length in sorted({p["L"] for p in trains if p["model"] == model}):
            row = {"model": model, "L": length,
                   "steps": median(trains, "steps", model=model, L=length),
                   "reps": len({p["rep"] for p in trains if p["model"] == model and p["L"] == length})}
            for name, loaded in (("quiet", False), ("loaded", True)):
                at = {"model": model, "L": length, "loaded": loaded}
                row |= {f"{field}_{name}": median(trains, field, **at)
                        for field in ("train_sps", "train_step_sps", "valid_infer_sps", "test_infer_sps",
                                      "peak_rss_mb", "wall_seconds")}
                row[f"loop_over_step_{name}"] = ratio(row[f"train_sps_{name}"], row[f"train_step_sps_{name}"])
                row[f"over_L256_{name}"] = ratio(row[f"train_sps_{name}"], median(trains, "train_sps", model=model, L=256, loaded=loaded))
            row["train_slowdown"] = ratio(row["train_sps_quiet"], row["train_sps_loaded"])
            row["infer_slowdown"] = ratio(row["valid_infer_sps_quiet"], row["valid_infer_sps_loaded"])
            shares = [p["steal_share"] for p in trains if p["model"] == model and p["L"] == length
                      and p.get("steal_share") is not None]
            row["max_steal_share"] = max(shares) if shares else None
            rows.append(row)
    for kind, library in (("peer", "FuxiCTR ETA (bench.py)"), ("step", "etarec ETA step (train_cost --point)")):
        mine = [p for p in points if p["kind"] == kind]
        if mine:
            row = {"library": library, "kind": kind, "L": mine[0]["L"]}
            for name, loaded in (("quiet", False), ("loaded", True)):
                row |= {f"{field}_{name}": median(mine, field, loaded=loaded)
                        for field in ("train_sps", "infer_sps", "peak_rss_mb")}
            row["train_slowdown"] = ratio(row["train_sps_quiet"], row["train_sps_loaded"])
            row["infer_slowdown"] = ratio(row["infer_sps_quiet"], row["infer_sps_loaded"])
            peer_rows.append(row)
    return rows, peer_rows, markdown(rows, peer_rows)


def markdown(rows: list[dict], peer_rows: list[dict]) -> str:
    lines = ["`etarec train` end to end (quiet / one busy process beside), medians:", "",
             "| model | L | steps | loop samples/s | step-only samples/s | loop / step | vs L=256 (loop) | "
             "loaded slowdown train / infer | valid infer samples/s | peak RSS MB | wall s | CPU stolen (max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def pair(field, spec=",.0f", suffix=""):
            return f"{fmt(r[field + '_quiet'], spec, suffix)} / {fmt(r[field + '_loaded'], spec, suffix)}"
        lines.append(f"| {r['model']} | {r['L']:,} | {fmt(r['steps'], '.0f')} | {pair('train_sps')} | "
                     f"{pair('train_step_sps')} | {pair('loop_over_step', '.2f')} | {pair('over_L256', '.2f')} | "
                     f"{fmt(r['train_slowdown'], '.2f', 'x')} / {fmt(r['infer_slowdown'], '.2f', 'x')} | "
                     f"{pair('valid_infer_sps')} | {pair('peak_rss_mb')} | {pair('wall_seconds', '.0f')} | "
                     f"{fmt(r.get('max_steal_share'), '.0%')} |")
    if peer_rows:
        lines += ["", f"Model step alone at L={peer_rows[0]['L']:,} on the peer's workload (6 batches of 256 cycled), "
                      "quiet / one busy process beside:", "",
                  "| library | train samples/s | infer samples/s | loaded slowdown train / infer | peak RSS MB |",
                  "|---|---|---|---|---|"]
        for r in peer_rows:
            lines.append(f"| {r['library']} | {fmt(r['train_sps_quiet'])} / {fmt(r['train_sps_loaded'])} | "
                         f"{fmt(r['infer_sps_quiet'])} / {fmt(r['infer_sps_loaded'])} | "
                         f"{fmt(r['train_slowdown'], '.2f', 'x')} / {fmt(r['infer_slowdown'], '.2f', 'x')} | "
                         f"{fmt(r['peak_rss_mb_quiet'])} / {fmt(r['peak_rss_mb_loaded'])} |")
        by_kind = {r["kind"]: r for r in peer_rows}
        if {"peer", "step"} <= by_kind.keys():
            peer, step = by_kind["peer"], by_kind["step"]
            lines.append("| **etarec / FuxiCTR** | " + " | ".join(
                f"{fmt(ratio(step[f'{field}_quiet'], peer[f'{field}_quiet']), '.1f', 'x')} / "
                f"{fmt(ratio(step[f'{field}_loaded'], peer[f'{field}_loaded']), '.1f', 'x')}"
                for field in ("train_sps", "infer_sps")) + " | | |")
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    trains = [p for p in points if p["kind"] == "train"]
    values = [p["train_sps"] for p in trains if p.get("train_sps")]
    wide = bool(values) and max(values) / min(values) >= 10  # a log axis only where it spans a decade
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, model in enumerate(dict.fromkeys(p["model"] for p in trains)):
        for loaded in (False, True):
            lengths = sorted({p["L"] for p in trains if p["model"] == model and p["loaded"] == loaded})
            if lengths:
                axis.plot(lengths, [median(trains, "train_sps", model=model, L=L, loaded=loaded) for L in lengths],
                          "--" if loaded else "-", color=f"C{index}", marker="o",
                          label=f"{model}, {'one busy process beside' if loaded else 'quiet'}")
    axis.set(xscale="log", yscale="log" if wide else "linear", xlabel="history window L",
             ylabel="samples/s (etarec train, batch building included)",
             title=f"etarec train end to end, {os.cpu_count()} cores")
    axis.set_xticks(sorted({p["L"] for p in trains}), [f"{L:,}" for L in sorted({p["L"] for p in trains})])
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    if wide:
        axis.yaxis.set_minor_formatter(ticker.FuncFormatter(  # 2, 3 and 5 x 10^n labelled too
            lambda value, _: f"{value:,.0f}" if f"{value:.0e}"[0] in "235" else ""))
    else:
        axis.set_ylim(bottom=0)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, default=SCRATCH / "synth_long16k", help="gen_data.py --min-hist 16384 folder")
    parser.add_argument("--models", default="eta,full_attention,din")
    parser.add_argument("--L", default="256,1024,4096,16384")
    parser.add_argument("--steps", type=int, default=60, help="train.max_steps_per_epoch of a point (at most)")
    parser.add_argument("--point-seconds", type=float, default=60.0, help="fewer steps where training would take longer")
    parser.add_argument("--min-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--conditions", default="quiet,loaded", help="quiet,loaded (both, the default), quiet or loaded")
    parser.add_argument("--quiet-only", action="store_true", help="= --conditions quiet")
    parser.add_argument("--busy", default="yes", choices=["yes", "python"], help="the competing process")
    parser.add_argument("--peer-L", type=int, default=PEER_L, help="L of the FuxiCTR and etarec-step pairs")
    parser.add_argument("--no-peer", action="store_true", help="skip FuxiCTR and the etarec step at L=4096")
    parser.add_argument("--quick", action="store_true", help="eta at L=256,1024, 10 steps, no peer, to .bench/pipeline-quick.json")
    parser.add_argument("--resume", action="store_true", help="keep the points already in --out, run the rest")
    parser.add_argument("--out", type=Path, default=None, help=f"default {OUT.relative_to(ROOT)}")
    parser.add_argument("--max-steal", type=float, default=0.05,
                        help="take a point again when more of the machine's CPU time than this went to other guests")
    parser.add_argument("--steal-retries", type=int, default=3, help="at most this many more tries of a point")
    args = parser.parse_args()
    if args.quiet_only:
        args.conditions = "quiet"
    if args.quick:
        args.models, args.L, args.steps, args.no_peer = "eta", "256,1024", 10, True
    args.out = args.out or (QUICK_OUT if args.quick else OUT)
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s: the busy process dies too
    from tqdm import tqdm

    models, lengths = args.models.split(","), sorted(map(int, args.L.split(",")))
    conditions = [{"quiet": False, "loaded": True}[c] for c in args.conditions.split(",")]
    settings = {"workload": args.workload.name, "batch_size": args.batch_size, "max_steps": args.steps,
                "point_seconds": args.point_seconds, "min_steps": args.min_steps, "busy": args.busy,
                "model_config": PEER_MODEL, "peer_L": None if args.no_peer else args.peer_L, "peer_workload": side_by_side.WORKLOAD.name}
    points = earlier_points(args.out, settings) if args.resume else []
    done = {key(p) for p in points}

    ensure_long_workload(args.workload)
    config = write_config(args.workload, args.batch_size)
    plan = plan_points(models, lengths, args.reps, conditions, None if args.no_peer else args.peer_L)
    prepared_peer = None
    if any(p["kind"] != "train" for p in plan if key(p) not in done):
        ensure_peer_setup()
        from train_cost import prepare_workload

        prepared_peer = prepare_workload(side_by_side.WORKLOAD, SCRATCH)
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": settings,
              "config_file": yaml.safe_load(config.read_text()), "machine": machine_info(), "points": points}

    if os.getloadavg()[0] > 0.5:
        print(f"warning: the machine is not quiet (load average {os.getloadavg()[0]:.2f} before the first point); "
              "every point records loadavg_before", file=sys.stderr)
    progress = tqdm([p for p in plan if key(p) not in done], desc="points", unit="point")
    for todo in progress:
        progress.set_postfix_str(f"{todo['kind']} {todo['model']} L={todo['L']} {'loaded' if todo['loaded'] else 'quiet'}")
        steps, steps_rule = steps_for(todo["model"], todo["L"], points, args) if todo["kind"] == "train" else (None, None)
        stolen = []  # the steal share of each try: a point taken while the host ran others is taken again
        while True:
            loadavg, ticks = os.getloadavg(), cpu_ticks()
            with condition(todo["loaded"], args.busy):
                try:
                    if todo["kind"] == "train":
                        measured = train_point(config, todo["model"], todo["L"], steps) | {"steps": steps, "steps_rule": steps_rule}
                    elif todo["kind"] == "peer":
                        measured = peer_point(todo["L"])
                    else:
                        measured = step_point(prepared_peer, todo["L"])
                except RuntimeError as error:  # side_by_side's helpers raise on a failed child
                    measured = {"error": str(error)}
            stolen.append(steal_share(ticks, cpu_ticks()))
            if stolen[-1] is None or stolen[-1] <= args.max_steal or len(stolen) > args.steal_retries:
                break
            tqdm.write(f"{todo['kind']} {todo['model']} L={todo['L']}: {stolen[-1]:.0%} of the CPU time stolen "
                       f"by the host, taking the point again")
        point = todo | measured | {"loadavg_before": loadavg, "steal_share": stolen[-1], "steal_shares": stolen}
        if "error" in point:
            tqdm.write(f"failed: {todo}: {point['error']}")
        points.append(point)
        record["points"] = points
        write_json(args.out, record)

    ok = [p for p in points if "error" not in p]
    rows, peer_rows, table = summarize(ok)
    record["summary"], record["peer_summary"] = rows, peer_rows
    write_json(args.out, record)
    if any(p["kind"] == "train" for p in ok):
        plot(ok, args.out.with_suffix(".png"))
    print(table)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
