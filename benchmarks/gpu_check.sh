#!/usr/bin/env bash
# One-shot verification of c2rope's CUDA kernels on a bare GPU machine (torch with
# CUDA, transformers and nvcc preinstalled; no network needed).
#
#   benchmarks/gpu_check.sh [OUT_DIR]          (default: $OUT, else out/gpu_check)
#
# Steps, in order of how much they say about the CUDA code (run a subset with
# STEPS="build graphs ..."; each has its own time limit, TIMEOUT_<STEP>=seconds):
#   info      GPU, driver, torch, nvcc, compute-sanitizer versions
#   liger     pip-installs Liger-Kernel from a local wheel if LIGER_WHEEL=path is set
#   build     C2ROPE_CUDA=1 build_ext --inplace for this GPU's arch; checks built_with_cuda
#   sanitize  benchmarks/gpu_sanitize_cases.py (every kernel path vs the CPU kernels,
#             outputs poisoned first), then the same under compute-sanitizer memcheck
#             with the caching allocator off; initcheck is reported, not fatal. No
#             racecheck: the kernels use no shared memory.
#   graphs    tests/test_cuda_graphs.py (capture/replay of every op)
#   bench     benchmarks/bench_gpu.py (rotation and mask vs copy/write bandwidth)
#   test      the whole pytest suite (CUDA cases appear through the device fixture)
# Every step's output goes to OUT_DIR/<step>.log; OUT_DIR/summary.md is rewritten after
# each step, so a run cut short still leaves its results. Exit status: 0 when every
# step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-${OUT:-out/gpu_check}}
mkdir -p "$OUT_DIR"
STEPS=${STEPS:-"info liger build sanitize graphs bench test"}
PY=${PYTHON:-python}
SUMMARY="$OUT_DIR/summary.md"
printf '# c2rope GPU check (%s)\n\n| step | status | seconds |\n|---|---|---|\n' "$(date -u +%FT%TZ)" > "$SUMMARY"
failed=0

run_step() {  # run_step NAME DEFAULT_TIMEOUT COMMAND...
    local name=$1 limit_var="TIMEOUT_${1^^}" limit
    limit=${!limit_var:-$2}
    shift 2
    echo "=== $name (limit ${limit}s)"
    local start rc
    start=$(date +%s)
    # bash -c so that the exported step_* functions can run under timeout too.
    timeout --kill-after=15 "$limit" bash -c '"$@"' _ "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - start ))
    local status="ok"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT"; elif [ $rc -ne 0 ]; then status="FAILED (rc $rc)"; fi
    [ "$status" = ok ] || failed=1
    echo "| $name | $status | $secs |" >> "$SUMMARY"
    tail -n 25 "$OUT_DIR/$name.log"
    echo "=== $name: $status in ${secs}s"
}

step_info() {
    nvidia-smi || true
    "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
    "$PY" -c "import transformers; print('transformers', transformers.__version__)" || true
    nvcc --version || true
    command -v ninja >/dev/null && echo "ninja: $(ninja --version)" || echo "ninja: missing (slower serial build)"
    sanitizer --version || true
}

sanitizer() {
    local s
    s=$(command -v compute-sanitizer || true)
    [ -n "$s" ] || for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer /opt/nvidia/compute-sanitizer; do
        [ -x "$d/compute-sanitizer" ] && s="$d/compute-sanitizer" && break
    done
    if [ -z "$s" ]; then echo "compute-sanitizer not found" >&2; return 127; fi
    "$s" "$@"
}

step_liger() {
    if [ -z "${LIGER_WHEEL:-}" ]; then echo "LIGER_WHEEL not set: Liger-Kernel rows will be left out"; return 0; fi
    "$PY" -m pip install --no-deps --no-index "$LIGER_WHEEL"
}

step_build() {
    local arch
    arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    C2ROPE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-16}" \
        "$PY" setup.py -q build_ext --inplace || return 1
    "$PY" -c "import c2rope, torch; assert torch.ops.c2rope.built_with_cuda(), 'built without CUDA'; print('built_with_cuda: True')"
}

step_sanitize() {
    local rc=0
    "$PY" benchmarks/gpu_sanitize_cases.py || rc=1
    echo "--- memcheck"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
        "$PY" benchmarks/gpu_sanitize_cases.py --quick || rc=1
    echo "--- initcheck (informational: torch itself may leave padding uninitialised)"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitizer --tool initcheck --print-limit 10 \
        "$PY" benchmarks/gpu_sanitize_cases.py --quick || echo "initcheck reported issues (not fatal)"
    return $rc
}

export PY OUT_DIR
export -f step_info sanitizer step_liger step_build step_sanitize

for step in $STEPS; do
    case $step in
    info) run_step info 60 step_info ;;
    liger) run_step liger 120 step_liger ;;
    build) run_step build 420 step_build ;;
    sanitize) run_step sanitize 240 step_sanitize ;;
    graphs) run_step graphs 120 "$PY" -m pytest tests/test_cuda_graphs.py -v -p no:cacheprovider ;;
    bench) run_step bench 300 "$PY" benchmarks/bench_gpu.py --out "$OUT_DIR" ;;
    test) run_step test 420 "$PY" -m pytest tests -q -rfE -p no:cacheprovider --junitxml="$OUT_DIR/pytest.xml" ;;
    *) echo "unknown step $step" >&2; failed=1 ;;
    esac
done
[ -f "$OUT_DIR/bench_gpu.md" ] && { echo; cat "$OUT_DIR/bench_gpu.md"; } >> "$SUMMARY"
cat "$SUMMARY"
exit $failed
