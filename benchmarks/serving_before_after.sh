#!/usr/bin/env bash
# Scorer latency of an earlier commit against this checkout, in one run on one machine, alternating
# (before, after, before, after) so that drift in the machine's load hits both alike.
#   bash benchmarks/serving_before_after.sh [COMMIT]   # default 20e6f36: the last commit with serve/request_model.py
# Writes benchmarks/results/serving/before_after/{before,after}_{1,2}.json; prints each run's table.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=${1:-20e6f36}
python=${PYTHON:-.venv/bin/python}
before=$(mktemp -d /tmp/etarec-before-XXXX)
git worktree add --detach "$before" "$commit" >/dev/null
trap 'git worktree remove --force "$before"' EXIT
out=benchmarks/results/serving/before_after
mkdir -p "$out"
for round in 1 2; do
  (cd "$before" && PYTHONPATH=src "$OLDPWD/$python" benchmarks/serving.py --parts scorer --requests 300 --threads 2 1 \
      --out "$OLDPWD/$out/before_$round.json")
  PYTHONPATH=src "$python" benchmarks/serving.py --parts scorer --requests 300 --threads 2 1 --out "$out/after_$round.json"
done
