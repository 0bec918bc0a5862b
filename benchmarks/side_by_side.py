"""etarec ETA vs FuxiCTR 2.3.10 ETA, side by side on the identical workload, interleaved.

Each point runs in a fresh process: the peer's own harness (../shared/peers/fuxictr/bench.py, in
its venv made by `run.sh --setup-only`) and benchmarks/train_cost.py's point for etarec, with the
same batches (train rows 0..1535 in 6 batches of 256, cycled), configuration and measurement
loop. Order alternates per repetition (A B, then B A) so drift on this noisy machine hits both.

    bash ../shared/peers/fuxictr/run.sh --setup-only     # once: peer venv + workload
    python benchmarks/side_by_side.py --L 256,1024,4096 --reps 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEER = Path(os.environ.get("PEER_DIR", HERE.parents[1] / "shared" / "peers" / "fuxictr"))
PEER_PYTHON = Path(os.environ.get("PEER_VENV", Path.home() / ".cache" / "etarec-peer-venv")) / "bin" / "python"
WORKLOAD = Path(os.environ.get("PEER_CACHE", Path.home() / ".cache" / "etarec-peer-data")) / "synth_i100000_s2024"
OUT = HERE / "results" / "speed"


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def run_peer(length: int, model: str) -> dict:
    command = [str(PEER_PYTHON), str(PEER / "bench.py"), "--model", model, "--L", str(length), "--data-dir", str(WORKLOAD)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"peer bench failed at L={length}: {result.stderr.strip().splitlines()[-1:]}")
    return last_json(result.stdout)


def run_etarec(length: int, prepared: Path, sparse: bool) -> dict:
    command = [sys.executable, str(HERE / "train_cost.py"), "--workload", str(WORKLOAD), "--point",
               f"eta,{length},{prepared}"] + (["--sparse"] if sparse else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"etarec point failed at L={length}: {result.stderr.strip().splitlines()[-1:]}")
    return last_json(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", default="256,1024,4096")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--sparse", action="store_true", help="etarec with sparse embedding updates")
    parser.add_argument("--out", type=Path, default=OUT / "side_by_side.json")
    args = parser.parse_args()
    if not PEER_PYTHON.is_file() or not (WORKLOAD / "meta.json").is_file():
        sys.exit(f"peer venv or workload missing; run: bash {PEER}/run.sh --setup-only")
    sys.path.insert(0, str(HERE))
    from train_cost import SCRATCH, prepare_workload

    prepared = prepare_workload(WORKLOAD, SCRATCH)
    rows = []
    for rep in range(args.reps):
        for length in map(int, args.L.split(",")):
            runners = [("fuxictr", lambda: run_peer(length, "ETA")), ("etarec", lambda: run_etarec(length, prepared, args.sparse))]
            for library, runner in (runners if rep % 2 == 0 else runners[::-1]):
                point = runner()
                row = {"library": library, "L": length, "rep": rep, "train_sps": point["train_sps"],
                       "infer_sps": point["infer_sps"], "peak_rss_mb": point["peak_rss_mb"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = []
    print("\n| L | FuxiCTR ETA train / infer samples/s | etarec ETA train / infer samples/s | ratio train | ratio infer | peak RSS MB FuxiCTR / etarec |")
    print("|---|---|---|---|---|---|")
    for length in map(int, args.L.split(",")):
        def median(library, key):
            return float(np.median([r[key] for r in rows if r["library"] == library and r["L"] == length]))
        entry = {"L": length, **{f"{lib}_{key}": median(lib, key) for lib in ("fuxictr", "etarec")
                                 for key in ("train_sps", "infer_sps", "peak_rss_mb")}}
        entry["train_ratio"] = entry["etarec_train_sps"] / entry["fuxictr_train_sps"]
        entry["infer_ratio"] = entry["etarec_infer_sps"] / entry["fuxictr_infer_sps"]
        summary.append(entry)
        print(f"| {length} | {entry['fuxictr_train_sps']:,.0f} / {entry['fuxictr_infer_sps']:,.0f} | "
              f"{entry['etarec_train_sps']:,.0f} / {entry['etarec_infer_sps']:,.0f} | {entry['train_ratio']:.1f}x | "
              f"{entry['infer_ratio']:.1f}x | {entry['fuxictr_peak_rss_mb']:,.0f} / {entry['etarec_peak_rss_mb']:,.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sparse_embeddings": args.sparse, "rows": rows, "summary": summary}, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
