#!/usr/bin/env bash
# Every GPU figure of the project in one call of a lent GPU machine (issue #20), inside a hard wall-clock budget.
#
#   OUT=/path/to/results benchmarks/gpu_suite.sh                  # on a CUDA machine, from the repository root
#   SMOKE=1 SUITE_SECONDS=400 OUT=/tmp/suite benchmarks/gpu_suite.sh  # the same steps at toy sizes on the CPU
#
# The budget: the suite ends within SUITE_SECONDS (default 540, for a device call of at most 600 s). Each step
# has its own time limit, clipped to the time left minus a 10 s reserve (for the report and the archive); a step
# that would get under 20 s is skipped and recorded as such. A step that hangs or runs out of memory costs only
# its own limit.
#   Phase 1, in parallel (correctness checks and the class-count sweep, not timings): the CUDA-only tests
#     (cuda_tests), the Triton head compiled for the GPU (triton_tests), one compilation of the Triton head's
#     kernels so that the timed processes below find them in Triton's on-disk cache (triton_warmup, CUDA only),
#     and the class-count sweep's first GPU-only row (scale).
#   Phase 2, one at a time, most important first: bench pfc at 1M, 10M, 4M classes (bench_pfc), the whole step
#     at batch 256 (bench_step_256), the 20M bf16 store (bench_pfc_bf16), the data pipeline (bench_data), the
#     whole step at batch 128 (bench_step_128).
# Outputs: each step's stdout and stderr in $OUT/steps/NAME.out and .err (Python unbuffered, so a step killed at
# its limit keeps what it printed), one line per step in $OUT/steps.jsonl (exit code, or "skipped"; seconds;
# limit), the sweep in $OUT/scale/, the machine in $OUT/machine.txt, and benchmarks/suite_report.py's
# $OUT/gpu_results.md (the Markdown tables that go into benchmarks/RESULTS.md). After every step everything
# under $OUT is packed again into $OUT/suite.tgz (through a temporary file, so a kill mid-pack keeps the last
# archive): a device call brings back only a few files, and that one holds them all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT/steps"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1
SMOKE="${SMOKE:-0}"
SUITE_SECONDS="${SUITE_SECONDS:-540}"
RESERVE=10    # seconds kept at the end for the report and the last archive
MIN_STEP=20   # a step that would get fewer seconds than this is skipped
DEADLINE=$(( $(date +%s) + SUITE_SECONDS ))
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu; PFC_CLASSES=(--classes 20000 --classes 40000); BF16_CLASSES=(--classes 50000)
    STEP=(--backbone tiny --input-size 32 --classes 5000 --repeats 2); STEP_BATCH_LARGE=32; STEP_BATCH_SMALL=32
    REPEATS=2; DATA_IMAGES=256; SCALE=(--quick --classes 300)
else
    DEVICE=cuda; PFC_CLASSES=(--classes 1000000 --classes 10000000 --classes 4000000); BF16_CLASSES=(--classes 20000000)
    STEP=(--repeats 10); STEP_BATCH_LARGE=256; STEP_BATCH_SMALL=128
    REPEATS=5; DATA_IMAGES=8192
    SCALE=(--quick --classes 100000)  # the class-count sweep's first GPU-only row; a rerun on the same OUT resumes it
fi

record() {  # record NAME RC SECONDS LIMIT: one line of steps.jsonl (one short append, safe from parallel steps)
    echo "{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3, \"limit\": $4}" >> "$OUT/steps.jsonl"
}

pack() {  # everything under $OUT but the archive into $OUT/suite.tgz, through a temporary file; not the sweep's
    # generated data and checkpoints (hundreds of MB at 10^5 classes: a file from a device call is at most 16 MiB)
    local tmp="$OUT/.suite.tgz.$BASHPID" rc
    tar -czf "$tmp" -C "$OUT" --exclude=./suite.tgz --exclude='./.suite.tgz.*' --exclude=./scale/data \
        --exclude='*.pt' --exclude='*.npy' . 2> /dev/null
    rc=$?  # 1: a file changed while it was read (a step still writing); the archive is whole
    if [ "$rc" -le 1 ]; then mv -f "$tmp" "$OUT/suite.tgz"; else rm -f "$tmp"; fi
}

skip() {  # skip NAME WHY: record a step that does not run
    record "$1" '"skipped"' 0 0
    echo "== $1 skipped: $2"
}

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it within the budget, keep its output and how it ended, pack
    local name=$1 limit=$2; shift 2
    local start left rc
    start=$(date +%s)
    left=$(( DEADLINE - start - RESERVE ))
    if (( left < MIN_STEP )); then
        skip "$name" "$(( DEADLINE - start )) s of the suite's ${SUITE_SECONDS} s left"
        pack
        return
    fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit} s): $*"
    timeout -k 5 "$limit" "$@" > "$OUT/steps/$name.out" 2> "$OUT/steps/$name.err"
    rc=$?
    record "$name" "$rc" "$(( $(date +%s) - start ))" "$limit"
    echo "   $name: rc=$rc in $(( $(date +%s) - start )) s"
    pack
}

{ timeout 30 nvidia-smi || true
  timeout 60 "$PYTHON" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda,
      torch.cuda.is_available())"; } > "$OUT/machine.txt" 2>&1
: > "$OUT/steps.jsonl"

# Phase 1, in parallel. The tests that skip without a GPU (no host sync in a step, the compiled backbone, CUDA
# center stores and samplers, fp16 on CUDA); the Triton head compiled for the device (the other tests run its
# kernels interpreted, on CPU tensors); its kernels compiled once for the timed steps below; the sweep's GPU row.
step cuda_tests 120 "$PYTHON" -m pytest -q tests/core/test_trainer.py tests/core/center_store \
    tests/dcq/test_sampler.py tests/core/test_loss_scaling.py -k "cuda or host or compiled" &
step triton_tests 120 env TRITON_INTERPRET=0 "$PYTHON" -m pytest -q tests/core/test_triton_head_cuda.py &
if [ "$SMOKE" = 1 ]; then
    skip triton_warmup "SMOKE: no GPU to compile the Triton head for"
else
    # TRITON_PRINT_AUTOTUNING: the tile each kernel's autotuning picks goes into the step's output
    step triton_warmup 120 env TRITON_PRINT_AUTOTUNING=1 "$PYTHON" -c "import torch; \
from benchmarks.pfc_head import check_fused_head; \
print({str(gemm): check_fused_head(torch.device('$DEVICE'), batch=512, gemm_dtype=gemm) \
       for gemm in (torch.float32, torch.bfloat16)})" &
fi
step scale 120 "$PYTHON" cli.py experiment scale --device "$DEVICE" "${SCALE[@]}" --out "$OUT/scale" \
    --doc "$OUT/scale/SCALING.md" &
wait
pack

# Phase 2, one at a time (timings), most important first.
step bench_pfc 150 "$PYTHON" cli.py bench pfc --device "$DEVICE" --batch-size 512 "${PFC_CLASSES[@]}" \
    --repeats "$REPEATS" --json --profile
step bench_step_256 150 "$PYTHON" cli.py bench step --device "$DEVICE" --method pfc --no-compile "${STEP[@]}" \
    --batch-size "$STEP_BATCH_LARGE" --json
step bench_pfc_bf16 75 "$PYTHON" cli.py bench pfc --device "$DEVICE" --batch-size 512 "${BF16_CLASSES[@]}" \
    --center-dtype bfloat16 --repeats "$REPEATS" --json
step bench_data 40 "$PYTHON" cli.py bench data --size 112 --workers 0 --workers 8 --images "$DATA_IMAGES"
step bench_step_128 120 "$PYTHON" cli.py bench step --device "$DEVICE" --method pfc --no-compile "${STEP[@]}" \
    --batch-size "$STEP_BATCH_SMALL" --json

timeout "$RESERVE" "$PYTHON" -m benchmarks.suite_report "$OUT" && echo "Wrote $OUT/gpu_results.md"
pack
echo "Packed $OUT/suite.tgz; the suite took $(( SUITE_SECONDS - DEADLINE + $(date +%s) )) s"
