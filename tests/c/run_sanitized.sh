#!/usr/bin/env bash
# Build every tests/c/test_*.c together with all CPU kernels (csrc/cpu/*.c) under
# AddressSanitizer + UndefinedBehaviorSanitizer and run them. Any sanitizer report
# aborts the program (-fno-sanitize-recover=all), so a clean exit means no error.
#
# Usage: tests/c/run_sanitized.sh            (CC=clang to use clang; OMP_NUM_THREADS
#                                              controls the kernels' thread count)
set -euo pipefail
cd "$(dirname "$0")/../.."
CC=${CC:-gcc}
OUT=tests/c/build
mkdir -p "$OUT"
CFLAGS=(-std=c11 -O1 -g -fno-omit-frame-pointer -fopenmp -Wall -Wextra
        -fsanitize=address,undefined -fno-sanitize-recover=all
        -Icsrc/include -Icsrc/cpu)
# OpenMP's runtime keeps thread-local allocations until exit: not ours to report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

status=0
shopt -s nullglob
tests=(tests/c/test_*.c)
if [ ${#tests[@]} -eq 0 ]; then
    echo "no tests/c/test_*.c found" >&2
    exit 1
fi
# Each test runs twice: with the kernels as shipped (run-time dispatch to an AVX2 clone
# where the CPU has it) and with -DC2ROPE_NO_CLONES (the baseline code path only).
for src in "${tests[@]}"; do
    name=$(basename "$src" .c)
    for variant in dispatch baseline; do
        extra=()
        [ "$variant" = baseline ] && extra=(-DC2ROPE_NO_CLONES)
        echo "== $name ($variant)"
        "$CC" "${CFLAGS[@]}" "${extra[@]}" "$src" csrc/cpu/*.c -o "$OUT/$name-$variant" -lm
        if ! "$OUT/$name-$variant"; then
            echo "FAILED: $name ($variant)" >&2
            status=1
        fi
    done
done
exit $status
