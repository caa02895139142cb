#!/usr/bin/env bash
# GPU checks for issue 19, in one go (< 10 minutes on one GPU: the steps' limits add up to 9.8 min);
# numbers go to one file.
#
#   bash benchmarks/gpu_check.sh [RESULT_FILE]      # default benchmarks/gpu_check-<host>-<time>.txt
#
# 1. bench_trial_loop.py at 224 px on efficientnet_lite0: plain fp32 reference, the fair reference
#    (--fair: AMP, channels_last, pinned memory, warm-up) and autotransfer cold/warm, f = 0, half, all.
#    Then the same on torchvision's ResNet-50 (f = 0 and all, fewer steps): its ImageNet weights
#    when this machine has them offline (torch hub cache), else random weights, said in the result
#    file (throughput is the same; the accuracies then mean nothing).
# 2. The embedded demo (`tune` with no target) with --device cuda: wall time and exit status.
# 3. A 4-worker study on one GPU (`tune ... --workers 4 --device cuda`), with nvidia-smi memory and
#    utilisation sampled every 2 s while it runs.
# Every step has its own time limit; a failed step is recorded (its exit status and the tail of its
# log) and the script goes on. Runs from the repository root; PYTHON overrides the interpreter.
# Not yet run on a GPU. GPU_CHECK_SMOKE=1 runs every step on the CPU at toy sizes (32 px, a few
# steps): it checks the script's plumbing (flags, paths, the result file), not the GPU; session 9
# ran it so, on a machine without a GPU.
set -u

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
STAMP=$(date +%Y%m%d-%H%M%S)
RESULT=${1:-$ROOT/benchmarks/gpu_check-$(hostname -s)-$STAMP.txt}
case $RESULT in /*) ;; *) RESULT=$ROOT/$RESULT ;; esac
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
export AUTOTRANSFER_CACHE=$WORK/cache   # cold caches: every step pays its decoding and resizing
export PYTHONUNBUFFERED=1

log() { echo "$*" | tee -a "$RESULT"; }

# the sizes of each step: the GPU check's, or toy ones on the CPU (GPU_CHECK_SMOKE=1)
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
    DEV=cpu
    LOOP="--size 32 --batch-size 16 --steps 6 --views 2 --threads 2 --workers 2"
    LITE_N=300 R50_N=200 WARM=1
    DEMO_EXTRA="--trials 2 --steps 12"
    WORKERS_EXTRA="--n 200 --trials 4 --resolution 32 --steps 12"
else
    DEV=cuda
    LOOP="--size 224 --batch-size 64 --views 4 --threads 8 --workers 8"
    LITE_N=2000 R50_N=1000 WARM=""
    DEMO_EXTRA=""
    WORKERS_EXTRA="--n 600 --trials 12"
fi

# step NAME LIMIT_S COMMAND...: run in $WORK/NAME, its output to $WORK/NAME.log, time and status
# to the result file.
step() {
    local name=$1 limit=$2
    shift 2
    mkdir -p "$WORK/$name"
    log ""
    log "== $name (limit ${limit}s): $*"
    local start=$(date +%s.%N) rc
    (cd "$WORK/$name" && timeout --kill-after=10 "$limit" "$@") >"$WORK/$name.log" 2>&1
    rc=$?
    local end=$(date +%s.%N)
    log "$(awk -v s="$start" -v e="$end" -v rc="$rc" 'BEGIN { printf "exit %d, wall %.1f s", rc, e - s }')"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then log "TIMED OUT"; fi
    log "-- last lines of $name.log:"
    tail -n 25 "$WORK/$name.log" | tee -a "$RESULT" >/dev/null
    cp "$WORK/$name.log" "${RESULT%.txt}-$name.log" 2>/dev/null || true
    return 0
}

: >"$RESULT"
log "gpu_check $STAMP on $(hostname), python $PY, work dir $WORK"
log "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 | tee -a "$RESULT" >/dev/null
"$PY" - <<'PY' 2>&1 | tee -a "$RESULT" >/dev/null
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported(),
          "free/total GiB", [round(v / 2**30, 1) for v in torch.cuda.mem_get_info()])
PY

# 1. trial loop at 224 px on lite0 (estimated 2-3 min; never run on a GPU yet): 1500 train / 500 val images, batch 64, 150 steps
# shellcheck disable=SC2086 # LOOP is a list of flags
step trial_loop_224 210 "$PY" "$ROOT/benchmarks/bench_trial_loop.py" \
    --device $DEV --model efficientnet_lite0 --data builtin:animals --n $LITE_N --steps 150 $LOOP \
    --freeze 0,half,all --fair --warmup ${WARM:-10} --json "$WORK/trial_loop_224.json"
cp "$WORK/trial_loop_224.json" "${RESULT%.txt}-trial_loop_224.json" 2>/dev/null || true

# 1b. trial loop at 224 px on torchvision's ResNet-50 (estimated 1-2 min): 750 train / 250 val, 80 steps
if "$PY" -c 'import sys; from autotransfer.backbones.catalog import weights_offline
sys.exit(0 if weights_offline("tv:resnet50") else 1)' 2>/dev/null; then
    R50_WEIGHTS=""
    log "resnet50: torchvision's ImageNet weights (found offline)"
else
    R50_WEIGHTS="--random-weights"
    log "resnet50: RANDOM weights (no offline copy of torchvision's here): throughput only, accuracies mean nothing"
fi
# shellcheck disable=SC2086 # R50_WEIGHTS is one flag or nothing; LOOP a list of flags
step trial_loop_224_resnet50 120 "$PY" "$ROOT/benchmarks/bench_trial_loop.py" \
    --device $DEV --model tv:resnet50 $R50_WEIGHTS --data builtin:animals --n $R50_N --steps 80 $LOOP \
    --freeze 0,all --fair --warmup ${WARM:-5} --json "$WORK/trial_loop_224_resnet50.json"
cp "$WORK/trial_loop_224_resnet50.json" "${RESULT%.txt}-trial_loop_224_resnet50.json" 2>/dev/null || true

# 2. the embedded demo on the GPU (2.5 min on 2 CPU cores)
# shellcheck disable=SC2086 # DEMO_EXTRA is a list of flags or nothing
step demo_cuda 130 "$PY" -m autotransfer.cli tune --device $DEV $DEMO_EXTRA \
    --storage "sqlite:///$WORK/demo_cuda/demo.db"

# 3. four workers sharing one GPU, memory and utilisation sampled meanwhile
SMI_LOG=$WORK/workers4-smi.csv
nvidia-smi --query-gpu=timestamp,memory.used,memory.total,utilization.gpu --format=csv -l 2 >"$SMI_LOG" 2>&1 &
SMI_PID=$!
# shellcheck disable=SC2086 # WORKERS_EXTRA is a list of flags
step workers4 130 env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" \
    "$PY" -m autotransfer.cli tune builtin:animals $WORKERS_EXTRA --workers 4 --device $DEV \
    --study gpu-check-workers4 --storage "sqlite:///$WORK/workers4/study.db"
kill "$SMI_PID" 2>/dev/null
wait "$SMI_PID" 2>/dev/null
log "-- nvidia-smi while 4 workers ran (peak memory used, MiB; peak utilisation, %):"
awk -F', ' 'NR > 1 { m = $2 + 0; u = $4 + 0; if (m > pm) pm = m; if (u > pu) pu = u }
            END { printf "peak memory.used %d MiB, peak utilization %d %%\n", pm, pu }' "$SMI_LOG" \
    | tee -a "$RESULT" >/dev/null
cp "$SMI_LOG" "${RESULT%.txt}-workers4-smi.csv" 2>/dev/null || true
# the workers write to the step's log (launched without log_dir), kept beside the result file

log ""
log "done: results in $RESULT (step logs beside it); work dir $WORK"
