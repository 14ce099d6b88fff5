#!/usr/bin/env bash
# Every GPU figure of the project in one run, for the rare, short sessions with a GPU (issue #20).
#
#   OUT=/path/to/results benchmarks/gpu_suite.sh            # on a CUDA machine, from the repository root
#   SMOKE=1 OUT=/tmp/suite benchmarks/gpu_suite.sh           # the same steps at toy sizes on the CPU, to check it
#
# Each step has its own time limit, so one that hangs or runs out of memory costs only its
# share of the budget (about 8 minutes in all on an H100/H200) and the others still run.
# Each writes its JSON lines (or text) under $OUT; benchmarks/suite_report.py then writes
# $OUT/gpu_results.md, the Markdown tables that go into benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT"
SMOKE="${SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu; PFC_CLASSES=(--classes 20000 --classes 40000); BF16_CLASSES=(--classes 50000)
    STEP=(--backbone tiny --input-size 32 --classes 5000 --batch-size 32 --repeats 2); REPEATS=2; DATA_IMAGES=256
    SCALE=(--quick --classes 300)
else
    DEVICE=cuda; PFC_CLASSES=(--classes 1000000 --classes 4000000 --classes 10000000); BF16_CLASSES=(--classes 20000000)
    STEP=(--batch-size 128 --batch-size 256 --repeats 10); REPEATS=5; DATA_IMAGES=8192
    SCALE=(--quick --classes 100000)  # the class-count sweep's first GPU-only row; a rerun on the same OUT resumes it
fi

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it, keep its output and how it ended
    local name=$1 limit=$2; shift 2
    local start; start=$(date +%s)
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    local rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}" >> "$OUT/steps.jsonl"
    echo "   rc=$rc in $(( $(date +%s) - start )) s"
}

{ nvidia-smi || true
  python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"; } \
    > "$OUT/machine.txt" 2>&1
: > "$OUT/steps.jsonl"
# The tests that skip without a GPU: no host sync in a step, CUDA center stores and samplers, fp16 on CUDA;
# then the Triton head compiled for the device (the other tests run its kernels interpreted, on CPU tensors).
step cuda_tests 120 python -m pytest -q -x tests/core/test_trainer.py tests/core/center_store tests/dcq/test_sampler.py \
    tests/core/test_loss_scaling.py
step triton_tests 90 env TRITON_INTERPRET=0 python -m pytest -q -x tests/core/test_triton_head_cuda.py
step bench_pfc 150 python cli.py bench pfc --device "$DEVICE" --batch-size 512 "${PFC_CLASSES[@]}" \
    --repeats "$REPEATS" --json
step bench_pfc_bf16 60 python cli.py bench pfc --device "$DEVICE" --batch-size 512 "${BF16_CLASSES[@]}" \
    --center-dtype bfloat16 --repeats "$REPEATS" --json
step bench_step 150 python cli.py bench step --device "$DEVICE" --no-compile "${STEP[@]}" --json
step bench_data 45 python cli.py bench data --size 112 --workers 0 --workers 8 --images "$DATA_IMAGES"
step scale 90 python cli.py experiment scale --device "$DEVICE" "${SCALE[@]}" --out "$OUT/scale" --doc "$OUT/SCALING.md"
python -m benchmarks.suite_report "$OUT" && echo "Wrote $OUT/gpu_results.md"
