// cos_sin_kernel.cuh -- HF-format cos/sin tables from multi-axis positions
// (c2rope_cos_sin_cuda): checks, launch plan and per-thread body, shared by cos_sin.cu
// and the host emulation.
//
// One thread per (token, frequency slot): it computes the float32 angle exactly as HF
// does (one product), then cosf/sinf (precise, never fast-math: HF's CUDA path calls
// the same functions), the float32 scaling, and writes both halves of cos and sin.
// Consecutive threads take consecutive slots, so the stores are coalesced.
#pragma once

#include <math.h>

#include "c2rope_checks.h"
#include "common.cuh"

namespace c2rope_cuda {

// c2rope_checks.h: c2rope_cos_sin_cpu's rules, except that `axis` lives in device
// memory and cannot be read here: an out-of-range entry makes the kernel write NaN for
// that slot instead (the torch glue range-checks CPU tables; device tables would need a
// synchronisation).
inline c2rope_status cos_sin_validate(const c2rope_cos_sin_params *p) { return c2rope_check_cos_sin_params(p); }

inline bool cos_sin_has_work(const c2rope_cos_sin_params *p) {
    return p->batch > 0 && p->seq > 0 && p->half_dim > 0;
}

// Flat grid of kBlockThreads-thread blocks over batch * seq * half_dim slots.
inline int64_t cos_sin_blocks(const c2rope_cos_sin_params *p) {
    return clamp_blocks(ceil_div(p->batch * p->seq * p->half_dim, kBlockThreads));
}

C2R_HD float cos_of(float a) { return cosf(a); }
C2R_HD float sin_of(float a) { return sinf(a); }

// One (token, slot) per iteration; `first`/`step` are the global thread index and count.
template <typename OT>
C2R_HD void cos_sin_thread(const c2rope_cos_sin_params &p, int64_t first, int64_t step) {
    const int64_t h = p.half_dim;
    const int64_t n = p.batch * p.seq * h;
    OT *cos_out = static_cast<OT *>(p.cos);
    OT *sin_out = static_cast<OT *>(p.sin);
    for (int64_t idx = first; idx < n; idx += step) {
        const int64_t tok = idx / h;
        const int64_t k = idx - tok * h;
        const int64_t b = tok / p.seq;
        const int64_t s = tok - b * p.seq;
        const int32_t axis = p.axis[k];
        const int64_t o = tok * 2 * h + k;
        OT c_out, s_out;
        if (axis < 0 || axis >= p.n_axes) {
            round_to(static_cast<typename MathOf<OT>::type>(NAN), c_out);
            s_out = c_out;
        } else {
            const float pos =
                p.positions[b * p.pos_stride[0] + s * p.pos_stride[1] + axis * p.pos_stride[2]];
            const float angle = mul_rn(pos, p.inv_freq[k]);
            if (sizeof(OT) == sizeof(double)) {
                // F64 tables: the same float32 angle, trigonometry in double.
                const double sc = double(p.attention_scaling);
                round_to(static_cast<typename MathOf<OT>::type>(cos(double(angle)) * sc), c_out);
                round_to(static_cast<typename MathOf<OT>::type>(sin(double(angle)) * sc), s_out);
            } else {
                const float sc = p.attention_scaling;
                round_to(static_cast<typename MathOf<OT>::type>(mul_rn(cos_of(angle), sc)), c_out);
                round_to(static_cast<typename MathOf<OT>::type>(mul_rn(sin_of(angle), sc)), s_out);
            }
        }
        cos_out[o] = c_out;
        cos_out[o + h] = c_out;
        sin_out[o] = s_out;
        sin_out[o + h] = s_out;
    }
}

template <typename F>
c2rope_status cos_sin_dispatch(const c2rope_cos_sin_params &p, F &f) {
    switch (p.out_dtype) {
    case C2ROPE_F32: return f.template run<float>();
    case C2ROPE_F16: return f.template run<__half>();
    case C2ROPE_BF16: return f.template run<__nv_bfloat16>();
    case C2ROPE_F64: return f.template run<double>();
    default: return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    }
}

}  // namespace c2rope_cuda
