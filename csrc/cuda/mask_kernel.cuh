// mask_kernel.cuh -- the Chebyshev causal mask (c2rope_chebyshev_mask_cuda): the shared checks,
// launch plan and per-thread body, shared by mask.cu and the host emulation.
//
// The output [B, 1, Q, K] is cut into tiles of kMaskRows query rows by one block-width
// of keys. A thread owns V consecutive keys of a tile (V * element size = 16 bytes on
// the vector path): it reads their valid/image/ring entries once, then for each row of
// the tile computes a V-bit "allowed" word and writes it as one 16-byte store, so a
// warp writes 512 contiguous bytes per row. Rows whose query is text, or whose image
// does not occur among the thread's keys, reduce to (causal prefix & key valid): a few
// integer operations per 16 bytes. Every output element is written exactly once.
#pragma once

#include "c2rope_checks.h"
#include "common.cuh"

namespace c2rope_cuda {

constexpr int64_t kMaskRows = 32;

// Output element size and bit patterns, and the parameter rules: c2rope_checks.h, shared
// with the CPU kernel.
using MaskFormat = c2rope_mask_format;

inline bool mask_format(c2rope_dtype t, MaskFormat *f) { return c2rope_mask_format_of(t, f) != 0; }

inline c2rope_status mask_validate(const c2rope_mask_params *p) { return c2rope_check_mask_params(p); }

inline bool mask_has_work(const c2rope_mask_params *p) { return p->batch > 0 && p->q_len > 0; }

struct MaskPlan {
    int vec;        // keys per thread: 16 bytes of output, or 1 (K not a multiple)
    int threads;    // block size
    int64_t blocks; // grid size (grid-stride loop over tiles beyond it)
};

// Expects a validated struct with work to do.
inline MaskPlan mask_plan(const c2rope_mask_params *p) {
    MaskFormat f{};
    mask_format(p->out_dtype, &f);
    MaskPlan plan{};
    int64_t vec = 16 / f.elem_size;
    if (p->kv_len % vec != 0 || !aligned_to(p->out, 16)) vec = 1;
    // A block spans the keys of a row when they are few, in whole warps.
    int64_t threads = ceil_div(ceil_div(p->kv_len, vec), 32) * 32;
    threads = threads < 32 ? 32 : (threads > kBlockThreads ? kBlockThreads : threads);
    const int64_t n_col = ceil_div(p->kv_len, threads * vec);
    const int64_t n_row = ceil_div(p->q_len, kMaskRows);
    plan.vec = int(vec);
    plan.threads = int(threads);
    plan.blocks = clamp_blocks(p->batch * n_row * n_col);
    return plan;
}

// Keys j0 .. j0 + V - 1 that are at or before query i (j <= i), as a V-bit prefix.
template <int V>
C2R_HD uint32_t causal_bits(int64_t i, int64_t j0) {
    const int64_t d = i - j0;
    if (d < 0) return 0u;
    if (d >= V - 1) return V >= 32 ? ~0u : (1u << V) - 1u;
    return (1u << (d + 1)) - 1u;
}

// One thread of the mask kernel; `block`/`n_blocks` are blockIdx.x/gridDim.x, `tid`
// threadIdx.x and `n_threads` blockDim.x. U is the output element's bit type.
template <typename U, int V>
C2R_HD void mask_thread(const c2rope_mask_params &p, U allow, U deny, int64_t block,
                        int64_t n_blocks, int tid, int n_threads) {
    const int64_t K = p.kv_len, Q = p.q_len;
    const int64_t chunk = int64_t(n_threads) * V;
    const int64_t n_col = (K + chunk - 1) / chunk;
    const int64_t n_row = (Q + kMaskRows - 1) / kMaskRows;
    const int64_t n_tiles = p.batch * n_row * n_col;
    const bool ring_rule = p.mode != C2ROPE_MASK_CAUSAL;
    const bool inward = p.mode == C2ROPE_MASK_INWARD;

    for (int64_t tile = block; tile < n_tiles; tile += n_blocks) {
        const int64_t col = tile % n_col;
        const int64_t rest = tile / n_col;
        const int64_t row_group = rest % n_row;
        const int64_t b = rest / n_row;
        const int64_t j0 = col * chunk + int64_t(tid) * V;
        if (j0 >= K) continue; // K is a multiple of V, so all V keys exist past this
        const uint8_t *valid = p.valid + b * K;
        const int32_t *image_id = p.image_id + b * K;
        const int32_t *ring = p.ring + b * K;

        uint32_t key_valid = 0;
        int32_t key_image[V], key_ring[V];
        int32_t image_lo = INT32_MAX, image_hi = INT32_MIN; // ids of the images among the keys
C2R_UNROLL
        for (int e = 0; e < V; ++e) {
            key_valid |= uint32_t(valid[j0 + e] != 0) << e;
            key_image[e] = image_id[j0 + e];
            key_ring[e] = ring[j0 + e];
            if (key_image[e] >= 0) {
                image_lo = key_image[e] < image_lo ? key_image[e] : image_lo;
                image_hi = key_image[e] > image_hi ? key_image[e] : image_hi;
            }
        }

        const int64_t r_begin = row_group * kMaskRows;
        const int64_t r_end = r_begin + kMaskRows < Q ? r_begin + kMaskRows : Q;
        for (int64_t r = r_begin; r < r_end; ++r) {
            const int64_t i = p.q_offset + r;
            uint32_t bits;
            if (!valid[i]) {
                // A padding query attends to itself only, so its softmax stays finite.
                bits = (i >= j0 && i < j0 + V) ? 1u << (i - j0) : 0u;
            } else {
                const int32_t q_image = image_id[i];
                const uint32_t causal = causal_bits<V>(i, j0);
                if (!ring_rule || q_image < 0 || q_image < image_lo || q_image > image_hi) {
                    bits = causal & key_valid;
                } else {
                    const int32_t q_ring = ring[i];
                    bits = 0;
C2R_UNROLL
                    for (int e = 0; e < V; ++e) {
                        const bool ok = key_image[e] == q_image
                                            ? (inward ? key_ring[e] >= q_ring : key_ring[e] <= q_ring)
                                            : ((causal >> e) & 1u) != 0;
                        bits |= uint32_t(ok) << e;
                    }
                    bits &= key_valid;
                }
            }
            Vec<U, V> out;
C2R_UNROLL
            for (int e = 0; e < V; ++e) out.v[e] = ((bits >> e) & 1u) ? allow : deny;
            store_raw<U, V>(static_cast<U *>(p.out) + ((b * Q + r) * K + j0), out);
        }
    }
}

// Calls f.template run<U, V>(allow, deny) for the output dtype and the plan's width.
template <typename U, typename F>
c2rope_status mask_dispatch_width(const MaskPlan &plan, const MaskFormat &fmt, F &f) {
    constexpr int kVec = int(16 / sizeof(U));
    const U allow = U(fmt.allow), deny = U(fmt.deny);
    return plan.vec == 1 ? f.template run<U, 1>(allow, deny) : f.template run<U, kVec>(allow, deny);
}

template <typename F>
c2rope_status mask_dispatch(const c2rope_mask_params &p, const MaskPlan &plan, F &f) {
    MaskFormat fmt;
    if (!mask_format(p.out_dtype, &fmt)) return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    switch (fmt.elem_size) {
    case 1: return mask_dispatch_width<uint8_t>(plan, fmt, f);
    case 2: return mask_dispatch_width<uint16_t>(plan, fmt, f);
    default: return mask_dispatch_width<uint32_t>(plan, fmt, f);
    }
}

}  // namespace c2rope_cuda
