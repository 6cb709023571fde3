// common.cuh -- element types, conversions and vector access shared by the CUDA kernels.
//
// Every kernel body is a __host__ __device__ function of (block, thread) indices with no
// shared memory and no barriers, so csrc/cuda/host_emulation/ can run the exact same
// code on the CPU over an emulated grid (this project's CI has no GPU). Keep it that
// way: anything device-only goes behind __CUDA_ARCH__.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "c2rope.h"

#define C2R_HD __host__ __device__ __forceinline__

// Loop unrolling for the device pass only (host compilers warn about the pragma).
#ifdef __CUDA_ARCH__
#define C2R_UNROLL _Pragma("unroll")
#else
#define C2R_UNROLL
#endif

namespace c2rope_cuda {

// Threads per block the launchers aim for; also the cap of every block dimension.
constexpr int kBlockThreads = 256;
// CUDA's limit on blockDim.z (x and y allow 1024, more than kBlockThreads).
constexpr int64_t kMaxBlockZ = 64;
// Grid-stride loops cover anything beyond this many blocks.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// ---- element types ---------------------------------------------------------------

// Arithmetic type: float32 for f32/f16/bf16 data, double for f64 (gradcheck).
template <typename T> struct MathOf { using type = float; };
template <> struct MathOf<double> { using type = double; };

C2R_HD float widen(float x) { return x; }
C2R_HD double widen(double x) { return x; }
C2R_HD float widen(__half x) { return __half2float(x); }
C2R_HD float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

// Rounds once, to nearest even, into the destination's type (the intrinsics, not the
// conversion operators, which torch's build flags disable).
C2R_HD void round_to(float x, float &out) { out = x; }
C2R_HD void round_to(float x, __half &out) { out = __float2half_rn(x); }
C2R_HD void round_to(float x, __nv_bfloat16 &out) { out = __float2bfloat16_rn(x); }
C2R_HD void round_to(double x, double &out) { out = x; }

// Products and sums that are never contracted into an FMA: float32 results then round
// like PyTorch's eager `q * cos + rotate_half(q) * sin` (and like the CPU kernels).
C2R_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
C2R_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
C2R_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
C2R_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

// ---- vector access ---------------------------------------------------------------

constexpr int min_int(int a, int b) { return a < b ? a : b; }

// N consecutive elements moved as one access: the alignment is that of the whole
// vector up to 16 bytes, so a 16-byte Vec compiles to one 128-bit load/store and a
// 32- or 64-byte one to two or four.
template <typename T, int N>
struct alignas(min_int(16, int(sizeof(T)) * N)) Vec {
    T v[N];
};

// Element-wise loads with any stride (cos/sin when they are not vector-aligned).
template <typename T, int N, typename M>
C2R_HD void load_strided(const T *p, int64_t stride, M (&dst)[N]) {
C2R_UNROLL
    for (int e = 0; e < N; ++e) dst[e] = static_cast<M>(widen(p[e * stride]));
}

template <typename T, int N>
C2R_HD void store_raw(T *p, const Vec<T, N> &v) {
    *reinterpret_cast<Vec<T, N> *>(p) = v;
}

template <typename T, int N>
C2R_HD Vec<T, N> load_raw(const T *p) {
    return *reinterpret_cast<const Vec<T, N> *>(p);
}

// ---- host-side helpers --------------------------------------------------------------

inline bool aligned_to(const void *p, size_t bytes) {
    return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t clamp_blocks(int64_t n) {
    return n < 1 ? 1 : (n > kMaxBlocks ? kMaxBlocks : n);
}

// A launch is checked right after it is issued; asynchronous faults surface at the
// next synchronising call, as for any CUDA op.
inline c2rope_status launch_status() {
    return cudaGetLastError() == cudaSuccess ? C2ROPE_OK : C2ROPE_ERR_CUDA;
}

}  // namespace c2rope_cuda
