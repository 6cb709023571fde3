#!/usr/bin/env bash
# Compile-checks the CUDA side of c2rope on a machine without a GPU, so a CUDA syntax
# error or warning fails CI even though the default build leaves CUDA off:
#   1. every csrc/cuda/*.cu alone with nvcc, for sm_80 and sm_90, warnings as errors,
#      with the half-precision macros torch's CUDAExtension passes;
#   2. csrc/torch/ops_cuda.cpp with `g++ -fsyntax-only` against torch's headers (the CPU
#      wheel ships c10/cuda) and the CUDA runtime headers next to nvcc;
#   3. the host emulation test (csrc/cuda/host_emulation/): the kernels' per-thread
#      bodies run on the CPU over an emulated grid and are compared with the formulas of
#      csrc/include/c2rope.h. This checks index math, vector paths and conversions, not
#      the GPU itself (see docs/cuda.md).
# Usage: scripts/check_cuda_compile.sh        (NVCC=/path/to/nvcc to pick a compiler)
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if ! "$NVCC" --version >/dev/null 2>&1; then
    echo "check_cuda_compile: nvcc not found (set NVCC)" >&2
    exit 1
fi
CXX=${CXX:-g++}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The flags torch.utils.cpp_extension gives nvcc that change what compiles.
TORCH_NVCC_FLAGS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
                  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
                  --expt-relaxed-constexpr)
WARN_FLAGS=(-Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror)

status=0
for arch in sm_80 sm_90; do
    for src in csrc/cuda/*.cu; do
        if "$NVCC" -c -std=c++17 -O3 -arch="$arch" -Icsrc/include "${TORCH_NVCC_FLAGS[@]}" \
            "${WARN_FLAGS[@]}" "$src" -o "$WORK/$(basename "$src").$arch.o"; then
            echo "ok    nvcc $arch $src"
        else
            echo "FAIL  nvcc $arch $src"
            status=1
        fi
    done
done

# Where nvcc's own cuda_runtime.h lives (nvcc may be a wrapper script on PATH).
CUDA_INC=$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
           sed -n 's/.*INCLUDES="\(.*\)".*/\1/p' | head -n1 | sed 's/-I//g' | awk '{print $1}')
if [ -z "$CUDA_INC" ] || [ ! -f "$CUDA_INC/cuda_runtime.h" ]; then
    CUDA_INC=$(dirname "$(readlink -f "$(dirname "$(readlink -f "$NVCC")")")")/include
fi
mapfile -t TORCH_INC < <(python -c "from torch.utils import cpp_extension as c; print('\n'.join(c.include_paths()))")
ISYSTEM=()
for d in "${TORCH_INC[@]}" "$CUDA_INC"; do ISYSTEM+=(-isystem "$d"); done
# The CPU wheel lacks the one CMake-generated c10/cuda header (it only sets an export
# macro): C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it, as HIP builds do.
for src in csrc/torch/*_cuda.cpp; do
    if "$CXX" -fsyntax-only -std=c++17 -Wall -Wextra -Werror -DC2ROPE_WITH_CUDA=1 \
        -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
        -Icsrc/include -Icsrc/torch "${ISYSTEM[@]}" "$src"; then
        echo "ok    $CXX -fsyntax-only $src"
    else
        echo "FAIL  $CXX -fsyntax-only $src"
        status=1
    fi
done

# Host emulation of the kernel bodies (nvcc compiles the host side; nothing runs on a GPU).
if "$NVCC" -std=c++17 -O1 -Icsrc/include -Icsrc/cuda "${TORCH_NVCC_FLAGS[@]}" "${WARN_FLAGS[@]}" \
    -Xcompiler -ffp-contract=off csrc/cuda/host_emulation/emulate.cu -o "$WORK/emulate"; then
    if "$WORK/emulate"; then
        echo "ok    host emulation of the CUDA kernels"
    else
        echo "FAIL  host emulation of the CUDA kernels"
        status=1
    fi
else
    echo "FAIL  nvcc csrc/cuda/host_emulation/emulate.cu"
    status=1
fi
exit $status
