// rotary_kernel.cuh -- the rotate-half rotation of q and k (c2rope_rotary_cuda): checks,
// launch plan and the per-thread body, shared by rotary.cu and the host emulation.
//
// Work decomposition: a block owns tokens (b, s) and walks all Hq + Hk heads of each,
// so a token's cos/sin are read from memory once and kept in registers for every head.
// Block shape (tx, ty, tz): tx threads cover one row's "tasks" (a task is V rotation
// pairs (i .. i+V-1, i+h .. i+h+V-1), or V pass-through elements of a partial rotary),
// ty threads split the heads (kHeadsPerStep per thread and step, all loaded before
// the first store), tz tokens share a block when rows are short. Every pair is read completely by the thread that writes it, so in-place
// operation (q_out == q) is safe.
#pragma once

#include "c2rope_checks.h"
#include "common.cuh"

namespace c2rope_cuda {

inline size_t float_elem_size(c2rope_dtype t) { return c2rope_float_elem_size(t); }

// c2rope_checks.h: the same rules as c2rope_rotary_cpu.
inline c2rope_status rotary_validate(const c2rope_rotary_params *p) { return c2rope_check_rotary_params(p); }

inline bool rotary_has_work(const c2rope_rotary_params *p) {
    return p->batch > 0 && p->seq > 0 && (p->n_heads_q > 0 || p->n_heads_k > 0);
}

// Heads a thread loads before it stores (see rotary_thread), and the block size the
// plan aims for. Tuning notes (sm_90, bf16, V = 8): 4 heads per step take ~160
// registers, so 80-128-thread blocks let 3-4 blocks share an SM, about 40 KB of loads
// in flight per SM. Not yet tuned on a GPU (docs/cuda.md).
constexpr int kHeadsPerStep = 4;
constexpr int64_t kRotaryBlockThreads = 128;

struct RotaryPlan {
    int vec;        // elements per q/k access: 16 bytes' worth, or 1 (any strides)
    bool cs_vec;    // cos/sin chunks can be loaded as vectors as well
    int tx, ty, tz; // block shape: row tasks x heads x tokens
    int64_t blocks; // grid size (grid-stride loop over tokens beyond it)
};

// A stride only matters when its dimension has more than one index.
inline bool stride_multiple(int64_t size, int64_t stride, int64_t vec) {
    return size <= 1 || stride % vec == 0;
}

// Whether one tensor (q or k, input or output side) allows V-element accesses.
inline bool rows_vectorizable(const void *data, const int64_t *stride, int64_t batch,
                              int64_t heads, int64_t seq, int64_t vec) {
    return aligned_to(data, 16) && stride[3] == 1 && stride_multiple(batch, stride[0], vec) &&
           stride_multiple(heads, stride[1], vec) && stride_multiple(seq, stride[2], vec);
}

// Expects a validated struct with work to do.
inline RotaryPlan rotary_plan(const c2rope_rotary_params *p) {
    RotaryPlan plan{};
    const int64_t es = int64_t(float_elem_size(p->dtype));
    const int64_t cs_es = int64_t(float_elem_size(p->cs_dtype));
    const int64_t h = p->rot_dim / 2;
    int64_t vec = 16 / es;
    bool ok = h % vec == 0 && (p->head_dim - p->rot_dim) % vec == 0;
    if (ok && p->n_heads_q > 0)
        ok = rows_vectorizable(p->q, p->q_stride, p->batch, p->n_heads_q, p->seq, vec) &&
             rows_vectorizable(p->q_out, p->q_out_stride, p->batch, p->n_heads_q, p->seq, vec);
    if (ok && p->n_heads_k > 0)
        ok = rows_vectorizable(p->k, p->k_stride, p->batch, p->n_heads_k, p->seq, vec) &&
             rows_vectorizable(p->k_out, p->k_out_stride, p->batch, p->n_heads_k, p->seq, vec);
    if (!ok) vec = 1;
    plan.vec = int(vec);
    if (vec > 1) {
        const size_t cs_align = size_t(vec * cs_es < 16 ? vec * cs_es : 16);
        plan.cs_vec = p->cs_stride[2] == 1 && stride_multiple(p->batch, p->cs_stride[0], vec) &&
                      stride_multiple(p->seq, p->cs_stride[1], vec) &&
                      aligned_to(p->cos, cs_align) && aligned_to(p->sin, cs_align);
    }
    const int64_t n_task = h / vec + (p->head_dim - p->rot_dim) / vec;
    const int64_t n_heads = p->n_heads_q + p->n_heads_k;
    const int64_t n_tok = p->batch * p->seq;
    const int64_t tx = n_task < kRotaryBlockThreads ? n_task : kRotaryBlockThreads;
    // Each y-thread takes kHeadsPerStep heads per step; spread the steps evenly over as
    // few passes as the block size allows.
    const int64_t ty_max = kRotaryBlockThreads / tx;
    const int64_t steps = ceil_div(n_heads, kHeadsPerStep);
    const int64_t passes = ceil_div(steps, ty_max);
    const int64_t ty = ceil_div(steps, passes);
    int64_t tz = kRotaryBlockThreads / (tx * ty);
    if (tz > n_tok) tz = n_tok;
    if (tz > kMaxBlockZ) tz = kMaxBlockZ;
    if (tz < 1) tz = 1;
    plan.tx = int(tx);
    plan.ty = int(ty);
    plan.tz = int(tz);
    plan.blocks = clamp_blocks(ceil_div(n_tok, tz));
    return plan;
}

// Row x of head `hd` (q heads first, then k heads) at token (b, s).
template <typename T>
struct RowRef {
    const T *in;
    T *out;
    int64_t in_stride, out_stride; // last-dim strides
};

template <typename T>
C2R_HD RowRef<T> row_at(const c2rope_rotary_params &p, int64_t hd, int64_t b, int64_t s) {
    const bool is_q = hd < p.n_heads_q;
    const int64_t head = is_q ? hd : hd - p.n_heads_q;
    const int64_t *is = is_q ? p.q_stride : p.k_stride;
    const int64_t *os = is_q ? p.q_out_stride : p.k_out_stride;
    RowRef<T> r;
    r.in = static_cast<const T *>(is_q ? p.q : p.k) + (b * is[0] + head * is[1] + s * is[2]);
    r.out = static_cast<T *>(is_q ? p.q_out : p.k_out) + (b * os[0] + head * os[1] + s * os[2]);
    r.in_stride = is[3];
    r.out_stride = os[3];
    return r;
}

// V elements at index i of a row; V > 1 only on plans where the last stride is 1 and
// the address is 16-byte aligned.
template <typename T, int V>
C2R_HD Vec<T, V> load_row(const T *row, int64_t i, int64_t stride) {
    if (V == 1) {
        Vec<T, V> v;
        v.v[0] = row[i * stride];
        return v;
    }
    return load_raw<T, V>(row + i);
}

template <typename T, int V>
C2R_HD void store_row(T *row, int64_t i, int64_t stride, const Vec<T, V> &v) {
    if (V == 1) {
        row[i * stride] = v.v[0];
    } else {
        store_raw<T, V>(row + i, v);
    }
}

// V cos or sin values at element i of a token's table, kept in their storage type
// (half the registers of float for 16-bit tables) and widened when used.
template <typename CT, int V>
C2R_HD Vec<CT, V> load_table(const CT *table, int64_t i, int64_t stride, bool as_vector) {
    if (V > 1 && as_vector) return load_raw<CT, V>(table + i);
    Vec<CT, V> v;
C2R_UNROLL
    for (int e = 0; e < V; ++e) v.v[e] = table[(i + e) * stride];
    return v;
}

// One token's cos/sin at pairs i .. i+V-1 (lo) and i+h .. i+h+V-1 (hi).
template <typename CT, int V>
struct Tables {
    Vec<CT, V> c_lo, c_hi, s_lo, s_hi;
};

// The rotation of V pairs (a = x[i..], b = x[i+h..]), written for both directions as
//   out_a = a * ca + b * sa,  out_b = b * cb + a * sb
// with forward (ca, sa, cb, sb) = (c_lo, -s_lo, c_hi, s_hi) and backward
// (c_lo, s_hi, c_hi, -s_lo); negation is exact, so this rounds like HF's formula.
template <typename T, typename CT, int V>
C2R_HD void rotate_pair(const Vec<T, V> &a, const Vec<T, V> &b, const Tables<CT, V> &t,
                        bool backward, Vec<T, V> &out_a, Vec<T, V> &out_b) {
    using M = typename MathOf<T>::type;
C2R_UNROLL
    for (int e = 0; e < V; ++e) {
        const M x = static_cast<M>(widen(a.v[e]));
        const M y = static_cast<M>(widen(b.v[e]));
        const M ca = static_cast<M>(widen(t.c_lo.v[e]));
        const M cb = static_cast<M>(widen(t.c_hi.v[e]));
        const M s_lo = static_cast<M>(widen(t.s_lo.v[e]));
        const M s_hi = static_cast<M>(widen(t.s_hi.v[e]));
        const M sa = backward ? s_hi : -s_lo;
        const M sb = backward ? -s_lo : s_hi;
        round_to(add_rn(mul_rn(x, ca), mul_rn(y, sa)), out_a.v[e]);
        round_to(add_rn(mul_rn(y, cb), mul_rn(x, sb)), out_b.v[e]);
    }
}

// One thread of the rotary kernel: `block`/`n_blocks` are blockIdx.x/gridDim.x, (tx, ty,
// tz) threadIdx and (bx, by, bz) blockDim. A thread takes kHeadsPerStep heads (ty,
// ty + by, ...) per step and issues all their loads before its first store: that keeps
// 4 x 32 bytes in flight per thread, which a bandwidth-bound kernel needs.
template <typename T, typename CT, int V>
C2R_HD void rotary_thread(const c2rope_rotary_params &p, bool cs_vec, int64_t block,
                          int64_t n_blocks, int tx, int ty, int tz, int bx, int by, int bz) {
    constexpr int NH = kHeadsPerStep;
    const int64_t h = p.rot_dim / 2;
    const int64_t n_rot = h / V;
    const int64_t n_task = n_rot + (p.head_dim - p.rot_dim) / V;
    const int64_t n_heads = p.n_heads_q + p.n_heads_k;
    const int64_t n_tok = p.batch * p.seq;
    const bool backward = p.direction == C2ROPE_BACKWARD;
    const CT *cos_base = static_cast<const CT *>(p.cos);
    const CT *sin_base = static_cast<const CT *>(p.sin);
    const int64_t cd = p.cs_stride[2];

    for (int64_t tok = block * bz + tz; tok < n_tok; tok += n_blocks * bz) {
        const int64_t b = tok / p.seq;
        const int64_t s = tok - b * p.seq;
        const int64_t cs_off = b * p.cs_stride[0] + s * p.cs_stride[1];
        for (int64_t x = tx; x < n_task; x += bx) {
            if (x < n_rot) {
                const int64_t i = x * V;
                Tables<CT, V> t;
                t.c_lo = load_table<CT, V>(cos_base + cs_off, i, cd, cs_vec);
                t.c_hi = load_table<CT, V>(cos_base + cs_off, i + h, cd, cs_vec);
                t.s_lo = load_table<CT, V>(sin_base + cs_off, i, cd, cs_vec);
                t.s_hi = load_table<CT, V>(sin_base + cs_off, i + h, cd, cs_vec);
                for (int64_t hd0 = ty; hd0 < n_heads; hd0 += NH * int64_t(by)) {
                    RowRef<T> r[NH];
                    Vec<T, V> lo[NH], hi[NH];
                    bool live[NH];
C2R_UNROLL
                    for (int u = 0; u < NH; ++u) {
                        const int64_t hd = hd0 + u * int64_t(by);
                        live[u] = hd < n_heads;
                        if (live[u]) {
                            r[u] = row_at<T>(p, hd, b, s);
                            lo[u] = load_row<T, V>(r[u].in, i, r[u].in_stride);
                            hi[u] = load_row<T, V>(r[u].in, i + h, r[u].in_stride);
                        }
                    }
C2R_UNROLL
                    for (int u = 0; u < NH; ++u) {
                        if (!live[u]) continue;
                        Vec<T, V> oa, ob;
                        rotate_pair<T, CT, V>(lo[u], hi[u], t, backward, oa, ob);
                        store_row<T, V>(r[u].out, i, r[u].out_stride, oa);
                        store_row<T, V>(r[u].out, i + h, r[u].out_stride, ob);
                    }
                }
            } else {
                // Pass-through dims [R, D) of a partial rotary: copied unless in place.
                const int64_t j = p.rot_dim + (x - n_rot) * V;
                for (int64_t hd = ty; hd < n_heads; hd += by) {
                    const RowRef<T> r = row_at<T>(p, hd, b, s);
                    if (r.in == r.out && r.in_stride == r.out_stride) continue;
                    store_row<T, V>(r.out, j, r.out_stride, load_row<T, V>(r.in, j, r.in_stride));
                }
            }
        }
    }
}

// Calls f.template run<T, CT, V>() for the struct's dtypes and the plan's vector width.
template <typename T, typename CT, typename F>
c2rope_status rotary_dispatch_width(const RotaryPlan &plan, F &f) {
    constexpr int kVec = int(16 / sizeof(T));
    return plan.vec == 1 ? f.template run<T, CT, 1>() : f.template run<T, CT, kVec>();
}

template <typename T, typename F>
c2rope_status rotary_dispatch_table(const c2rope_rotary_params &p, const RotaryPlan &plan, F &f) {
    switch (p.cs_dtype) {
    case C2ROPE_F32: return rotary_dispatch_width<T, float>(plan, f);
    case C2ROPE_F16: return rotary_dispatch_width<T, __half>(plan, f);
    case C2ROPE_BF16: return rotary_dispatch_width<T, __nv_bfloat16>(plan, f);
    case C2ROPE_F64: return rotary_dispatch_width<T, double>(plan, f);
    default: return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    }
}

template <typename F>
c2rope_status rotary_dispatch(const c2rope_rotary_params &p, const RotaryPlan &plan, F &f) {
    switch (p.dtype) {
    case C2ROPE_F32: return rotary_dispatch_table<float>(p, plan, f);
    case C2ROPE_F16: return rotary_dispatch_table<__half>(p, plan, f);
    case C2ROPE_BF16: return rotary_dispatch_table<__nv_bfloat16>(p, plan, f);
    case C2ROPE_F64: return rotary_dispatch_table<double>(p, plan, f);
    default: return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    }
}

}  // namespace c2rope_cuda
