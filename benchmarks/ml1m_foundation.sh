#!/usr/bin/env bash
# The foundation issue's ML-1M runs: ETA and DIN (all features), ETA with the peer's features and
# budget, and the peak-RSS check at L=1024. Each run's metrics.json, wall time and peak RSS
# (/usr/bin/time -v) land in benchmarks/results/ml1m/.
#   bash benchmarks/ml1m_foundation.sh [all|main|peer|rss]   (needs ML-1M: ../shared/data or $ETAREC_DATA_ROOT)
set -euo pipefail
cd "$(dirname "$0")/.."
ETAREC=${ETAREC:-.venv/bin/etarec}
RESULTS=benchmarks/results/ml1m
mkdir -p "$RESULTS" runs

run() {  # name, then etarec train arguments
  local name=$1; shift
  /usr/bin/time -v "$ETAREC" train "$@" --out "runs/$name" --no-progress 2> "runs/$name.time" | tee "runs/$name.log"
  cp "runs/$name/metrics.json" "$RESULTS/$name.metrics.json"
  python3 - "$name" "runs/$name.time" "$RESULTS/$name.resources.json" <<'PY'
import json, re, sys
name, time_file, out = sys.argv[1:]
text = open(time_file).read()
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
json.dump({"run": name, "wall_seconds": seconds, "peak_rss_mb": rss_kb / 1024}, open(out, "w"), indent=2)
print(f"{name}: wall {seconds:.0f} s, peak RSS {rss_kb / 1024:.0f} MB")
PY
}

case "${1:-all}" in
  all|main)
    run ml1m_eta --config configs/ml1m_eta.yaml
    run ml1m_din --config configs/ml1m_din.yaml ;;&
  all|peer)
    run ml1m_eta_peer --config configs/peer/ml1m_eta_peer.yaml ;;&
  all|rss)
    # peak RSS of ML-1M training at L = 1024: 500 steps, then the full valid/test evaluation
    run ml1m_eta_L1024 --config configs/ml1m_eta.yaml --set model.long_len=1024 --set train.epochs=1 \
      --set train.max_steps_per_epoch=500 ;;
esac
"$ETAREC" report $(ls -d runs/ml1m_eta runs/ml1m_din runs/ml1m_eta_peer runs/ml1m_eta_L1024 2>/dev/null)
