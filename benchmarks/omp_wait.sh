#!/bin/bash
# How OpenMP's wait setting shows in `etarec train`, quiet and beside one busy process.
# Each setting in turn trains STEPS steps of one epoch of CFG (a config) and prints the epoch's
# samples/s and the host's stolen CPU ticks during the run (/proc/stat: over ~5% the pair is noise).
#   bash benchmarks/omp_wait.sh                                   # ML-1M ETA, the settings below
#   VARIANTS="OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=2000" LOADS="quiet quiet" bash benchmarks/omp_wait.sh
#   CFG=.bench/pipeline.yaml EXTRA="--set model.long_len=4096" STEPS=40 bash benchmarks/omp_wait.sh
#     (.bench/pipeline.yaml: the peer workload's config, written by benchmarks/pipeline.py)
# GOMP_SPINCOUNT is libgomp's busy-wait before a waiting thread sleeps (PASSIVE: 0, unset: 300,000).
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${CFG:-configs/ml1m_eta.yaml}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for load in ${LOADS:-quiet loaded}; do
  for setting in ${VARIANTS:-OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=2000 GOMP_SPINCOUNT=30000 OMP_WAIT_POLICY=ACTIVE}; do
    busy=
    if [ "$load" = loaded ]; then yes > /dev/null & busy=$!; fi
    steal_before=$(awk '/^cpu /{print $9}' /proc/stat)
    # shellcheck disable=SC2086  # EXTRA is a list of arguments
    line=$(env "$setting" .venv/bin/etarec train --config "$cfg" --out "$out/run" --set "train.max_steps_per_epoch=${STEPS:-200}" \
           --set train.epochs=1 ${EXTRA:-} --no-progress 2>&1 | grep "^epoch 1" | sed 's/.*(\(.*\)).*/\1/')
    steal_after=$(awk '/^cpu /{print $9}' /proc/stat)
    if [ -n "$busy" ]; then kill "$busy"; fi
    rm -rf "$out/run"
    echo "$load $setting: $line, host steal $((steal_after - steal_before)) ticks"
  done
done
