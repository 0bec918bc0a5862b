#!/usr/bin/env bash
# The GPU run of issue 18: one script, one GPU, under 8 minutes; everything lands in
# benchmarks/results/gpu/ (and in $OUT when that is set), gpu.json holding all of it.
#
#   1. device   torch, Triton, the GPU (name, memory, driver); fails in one line without a GPU
#   2. tests    pytest -m cuda over the device tests (tests/test_devices.py, test_models.py,
#               test_retrieval.py): summary line, counts and the log
#   3. syncs    host syncs per phase of an ETA training step and of an evaluation forward
#               (torch.cuda.set_sync_debug_mode), each with the etarec line that caused it
#   4. retrieval  benchmarks/retrieval.py --device cuda: B=256, L in 4096,16384,65536, m=64,
#               against the device's copy bandwidth (CUDA events)
#   5. train_cost benchmarks/train_cost.py --device cuda: eta and full_attention at L = 256,
#               1024, 4096, 16384 on the peer's workload (gen_data.py --min-hist 16384, as RESULTS.md)
#   6. serving  benchmarks/serving.py --parts scorer --device cuda: Scorer p50/p99 at
#               (L=1024, B=1024) and (L=10000, B=1000)
#   7. gpu.json the parts, each part's seconds and exit status, and the issue's acceptance
#               figures with pass/fail
#
# Each part has its own time limit (PART_LIMITS below, 450 s in all): a part that fails or runs
# out is recorded as such and the next one runs.
#
# On the CPU machine, before the device call (the device has PyTorch but not pydantic, and
# ../shared does not travel):
#   bash benchmarks/gpu.sh --wheels          # pydantic & co. as wheels into .whl/ (git-ignored)
#   mkdir -p .bench && cp ../shared/peers/fuxictr/gen_data.py .bench/
# then on the device, carrying [".whl", ".bench/gen_data.py"]:
#   bash benchmarks/gpu.sh
# Local dry run of the pieces at tiny sizes on the CPU: bash benchmarks/gpu.sh --cpu-smoke
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
RESULTS=benchmarks/results/gpu

if [[ "${1:-}" == "--wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    pins=$("${PY}" - <<'EOF'
import importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
                                               "typing-extensions")))
EOF
)
    platforms=()
    for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    exec "${PY}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl ${pins}
fi

SMOKE=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    SMOKE=1
    RESULTS=.bench/gpu-smoke
fi
DEVICE=cuda
[[ $SMOKE == 1 ]] && DEVICE=cpu
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu.log"
: > "$LOG"
started_all=$(date +%s)

if [[ $SMOKE == 0 ]] && ls .whl/*.whl >/dev/null 2>&1; then  # wheels for the device's Python 3.12
    "${PY}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/etarec-site \
        .whl/*.whl >>"$LOG" 2>&1 || { echo "gpu.sh: installing .whl/*.whl failed (see $LOG)" >&2; exit 3; }
    export PYTHONPATH="/tmp/etarec-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 ETAREC_CACHE=${ETAREC_CACHE:-/tmp/etarec-cache}

if [[ $SMOKE == 0 ]]; then
    if ! "${PY}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
        echo "gpu.sh: no CUDA device visible (torch.cuda.is_available() is False); run it on a machine with one GPU" >&2
        exit 2
    fi
fi
"${PY}" -c "import pydantic, pyarrow, pandas, yaml, tqdm" 2>>"$LOG" || {
    echo "gpu.sh: etarec's dependencies are missing here (pydantic?); make .whl/ with 'bash benchmarks/gpu.sh --wheels' and carry it" >&2
    exit 3; }

# seconds each part may take: tests, syncs, retrieval, train_cost, serving
declare -A PART_LIMITS=([tests]=170 [syncs]=30 [retrieval]=50 [train_cost]=150 [serving]=50)
declare -A PART_RC PART_SECONDS
part() {  # part NAME COMMAND...: run it under its limit, log it, note its status and seconds
    local name=$1; shift
    local t0; t0=$(date +%s)
    echo "=== $name: $*" | tee -a "$LOG"
    timeout --kill-after=10 "${PART_LIMITS[$name]}" "$@" 2>&1 | tee -a "$LOG"
    PART_RC[$name]=${PIPESTATUS[0]}
    PART_SECONDS[$name]=$(( $(date +%s) - t0 ))
    echo "=== $name: exit ${PART_RC[$name]} after ${PART_SECONDS[$name]} s" | tee -a "$LOG"
}

# 1. the device
"${PY}" - "$RESULTS/device.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, platform, subprocess, sys
import torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "gpu": None, "triton": None}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    pass
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
                   "count": torch.cuda.device_count()}
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
EOF

# 2. the CUDA tests (the CPU smoke runs the same files' CPU cases, fast ones only)
if [[ $SMOKE == 1 ]]; then
    part tests "${PY}" -m pytest -q -p no:cacheprovider -m "not slow" -k "cpu and not brute_force" \
        tests/test_devices.py tests/test_models.py tests/test_retrieval.py --junitxml="$RESULTS/tests.xml"
else
    part tests "${PY}" -m pytest -q -p no:cacheprovider -m cuda -rfEs \
        tests/test_devices.py tests/test_models.py tests/test_retrieval.py --junitxml="$RESULTS/tests.xml"
fi

# 3. host syncs in a training step and an evaluation forward
part syncs "${PY}" - "$DEVICE" "$RESULTS/syncs.json" <<'EOF'
"""Each phase runs once under torch.cuda.set_sync_debug_mode('warn') after warm-up steps; every
synchronizing CUDA call is recorded with the innermost etarec line of the Python stack."""
import json, sys, traceback, warnings
import torch
from conftest import VOCAB, synthetic_batch
from etarec.config import build_config
from etarec.models import build_model
from etarec.train.optim import clip_gradients, make_optimizer

device = torch.device(sys.argv[1])
config = build_config({"model": {"name": "eta", "long_len": 1024, "short_len": 50, "top_k": 64, "hash_bits": 64}})
torch.manual_seed(0)
model = build_model(config.model, VOCAB).to(device)
optimizer = make_optimizer(model, config.train)
host = synthetic_batch(batch=256, long_len=1024, short_len=50)
if device.type == "cuda":
    host = host.pin_memory()
state = {}

def copy(): state["batch"] = host.to(device)
def forward():
    model.train()
    state["loss"] = torch.nn.functional.binary_cross_entropy_with_logits(model(state["batch"]), state["batch"].labels)
def backward(): optimizer.zero_grad(set_to_none=True); state["loss"].backward()
def clip(): clip_gradients(list(model.parameters()), 10.0)
def step(): optimizer.step()
def evaluate():
    model.eval()
    with torch.no_grad():
        model(state["batch"], state.setdefault("cache", model.item_cache()))

phases = [("copy", copy), ("forward", forward), ("backward", backward), ("clip_gradients", clip),
          ("optimizer", step), ("eval_forward_with_cache", evaluate)]
for _ in range(3):  # warm-up: compiling, allocator, the cache's first fill
    for _, fn in phases:
        fn()
found = {}
original = warnings.showwarning
for name, fn in phases:
    calls = []
    def record(message, category, filename, lineno, file=None, line=None):
        ours = [f"{f.filename.split('src/')[-1]}:{f.lineno}" for f in traceback.extract_stack() if "/etarec/" in f.filename]
        calls.append(f"{str(message).splitlines()[0][:80]} at {ours[-1] if ours else f'{filename}:{lineno}'}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    warnings.showwarning = record
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    found[name] = calls
warnings.showwarning = original
json.dump({"device": str(device), "syncs": found, "counts": {k: len(v) for k, v in found.items()}},
          open(sys.argv[2], "w"), indent=2)
for name, calls in found.items():
    print(f"{name}: {len(calls)} sync(s)" + "".join(f"\n    {call}" for call in calls))
EOF

# 4. retrieval against the copy bandwidth
if [[ $SMOKE == 1 ]]; then
    part retrieval "${PY}" benchmarks/retrieval.py --device cpu --B 8 --L 256,1024 --bits 64 --items 5000 --reps 1 \
        --out "$RESULTS/retrieval.json"
else
    part retrieval "${PY}" benchmarks/retrieval.py --device cuda --B 256 --L 4096,16384,65536 --bits 64 --reps 5 \
        --out "$RESULTS/retrieval.json"
fi

# 5. training cost as L grows (workload: the peer's generator, as benchmarks/RESULTS.md)
WORKLOAD=${WORKLOAD:-.bench/synth_long16k}
if [[ ! -f "$WORKLOAD/meta.json" ]]; then
    if [[ -f .bench/gen_data.py ]]; then
        if [[ $SMOKE == 1 ]]; then
            WORKLOAD=.bench/synth_smoke
            "${PY}" .bench/gen_data.py --out "$WORKLOAD" --min-hist 1024 --n-users 50 --n-samples 2000 --n-eval 200 \
                --no-npz 2>&1 | tee -a "$LOG"
        else
            "${PY}" .bench/gen_data.py --out "$WORKLOAD" --min-hist 16384 --no-npz 2>&1 | tee -a "$LOG"
        fi
    else
        echo "gpu.sh: no workload at $WORKLOAD and no .bench/gen_data.py to make one (cp ../shared/peers/fuxictr/gen_data.py .bench/)" | tee -a "$LOG"
    fi
fi
if [[ $SMOKE == 1 ]]; then
    part train_cost "${PY}" benchmarks/train_cost.py --device cpu --workload "$WORKLOAD" --models eta,full_attention \
        --L 64,256 --cache .bench --out "$RESULTS/train_cost.json"
else
    part train_cost "${PY}" benchmarks/train_cost.py --device cuda --workload "$WORKLOAD" --models eta,full_attention \
        --L 256,1024,4096,16384 --cache .bench --out "$RESULTS/train_cost.json"
fi

# 6. the Scorer on the device
if [[ $SMOKE == 1 ]]; then
    part serving "${PY}" benchmarks/serving.py --parts scorer --device cpu --threads 1 --requests 12 \
        --out "$RESULTS/serving.json"
else
    part serving "${PY}" benchmarks/serving.py --parts scorer --device cuda --threads 1 --requests 200 \
        --out "$RESULTS/serving.json"
fi

# 7. gpu.json
rcs="" secs=""
for name in tests syncs retrieval train_cost serving; do
    rcs+="$name=${PART_RC[$name]:-none} "; secs+="$name=${PART_SECONDS[$name]:-0} "
done
"${PY}" - "$RESULTS" "$rcs" "$secs" "$(( $(date +%s) - started_all ))" "$0 $*" <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys
import xml.etree.ElementTree as ET
from pathlib import Path

results, rcs, secs, total, command = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
def read(name):
    try:
        return json.loads((results / name).read_text())
    except (OSError, ValueError):
        return None
parts = {}
for item in rcs.split():
    name, rc = item.split("=")
    parts[name] = {"exit": None if rc == "none" else int(rc)}
for item in secs.split():
    name, s = item.split("=")
    parts[name]["seconds"] = int(s)
log = (results / "gpu.log").read_text(errors="replace")
tests = {"summary": None}
summaries = re.findall(r"^(?:=+ )?(\d+ (?:passed|failed|skipped|deselected|errors?)\b[^=\n]*?)(?: =+)?$", log, re.M)
if summaries:
    tests["summary"] = summaries[0]
try:
    suite = ET.parse(results / "tests.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    tests |= {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    tests["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                       if case.find("failure") is not None or case.find("error") is not None]
    tests["skipped_reasons"] = sorted({(case.find("skipped").get("message") or "")[:120] for case in suite.iter("testcase")
                                       if case.find("skipped") is not None})
except (OSError, ET.ParseError):
    pass

retrieval, train_cost, serving = read("retrieval.json"), read("train_cost.json"), read("serving.json")
checks = {}
def check(name, value, limit, ok):
    checks[name] = {"value": value, "limit": limit, "pass": None if value is None else bool(ok(value))}
eta = {p["L"]: p for p in (train_cost or {}).get("points", []) if p.get("model") == "eta" and "train_sps" in p}
check("eta_train_samples_per_s_at_L4096", eta.get(4096, {}).get("train_sps"), ">= 200000", lambda v: v >= 200_000)
ratio = eta[16384]["train_sps"] / eta[256]["train_sps"] if 16384 in eta and 256 in eta else None
check("eta_train_L16384_over_L256", ratio, ">= 0.5", lambda v: v >= 0.5)
points = {p["L"]: p for p in (retrieval or {}).get("points", []) if p.get("m") == 64}
check("retrieval_L16384_over_bandwidth_floor", points.get(16384, {}).get("packed_over_floor"), "<= 3", lambda v: v <= 3)
scorer = [r for r in (serving or {}).get("results", []) if r.get("L") == 10000 and r.get("B") == 1000]
check("scorer_p99_ms_at_L10000_B1000", scorer[0]["p99_ms"] if scorer else None, "<= 5", lambda v: v <= 5)
report = {"command": command, "total_seconds": total, "device": read("device.json"), "parts": parts, "tests": tests,
          "acceptance": checks, "syncs": read("syncs.json"), "retrieval": retrieval, "train_cost": train_cost,
          "serving": serving}
(results / "gpu.json").write_text(json.dumps(report, indent=2))
print(json.dumps({"total_seconds": total, "parts": parts, "tests": tests.get("summary"),
                  "acceptance": {k: (v["value"], v["pass"]) for k, v in checks.items()}}, indent=1))
print(f"wrote {results / 'gpu.json'}")
EOF

if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then  # the device tool brings back what is under $OUT
    cp "$RESULTS"/gpu.json "$RESULTS"/gpu.log "$RESULTS"/tests.xml "$OUT"/ 2>/dev/null
    cp "$RESULTS"/train_cost.png "$OUT"/ 2>/dev/null
fi
exit 0
