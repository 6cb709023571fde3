/*
 * rotary.c -- HF's rotate-half rotation of q and k in one pass (c2rope_rotary_cpu).
 *
 * Memory-bound: every element of q and k is read once and written once. Work is split
 * over tokens (b, s) with OpenMP; for one token the cos/sin values are converted once
 * into float (double for F64) tables and reused by all Hq + Hk heads.
 *
 * Forward and backward differ only in which sin value multiplies the partner element
 * and its sign (see c2rope.h), so both are written as
 *     out[i]     = x[i]     * ca[i] + x[i + h] * sa[i]
 *     out[i + h] = x[i + h] * cb[i] + x[i]     * sb[i]
 * with the per-token tables
 *     forward:  ca = cos[i], sa = -sin[i],     cb = cos[i + h], sb = sin[i + h]
 *     backward: ca = cos[i], sa =  sin[i + h], cb = cos[i + h], sb = -sin[i]
 * Negation is exact, so x * (-s) + y equals HF's y + (-x) * s bit for bit. Each row is
 * first copied into a local buffer: this makes in-place operation safe and lets the
 * compiler vectorise the arithmetic without alias checks. -std=c11 keeps gcc from
 * contracting a*b + c*d into an FMA, so float32 results round like PyTorch's.
 */
#include <stddef.h>

#include "c2rope.h"
#include "c2rope_checks.h"
#include "internal.h"

/* Pairs processed per block: bounds the stack tables whatever the head dim. */
#define C2R_BLOCK 256

/* Below this many elements to rotate, waking OpenMP threads costs more than the work
 * (decode steps rotate a single token): run on the calling thread. */
#define C2R_PARALLEL_MIN_ELEMENTS 32768

static inline float c2r_load_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
static inline float c2r_load_f16(const void *p, int64_t i) {
    return c2r_f16_to_f32(((const uint16_t *)p)[i]);
}
static inline float c2r_load_bf16(const void *p, int64_t i) {
    return c2r_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline double c2r_load_f64(const void *p, int64_t i) { return ((const double *)p)[i]; }

static inline void c2r_store_f32(void *p, int64_t i, float v) { ((float *)p)[i] = v; }
static inline void c2r_store_f16(void *p, int64_t i, float v) {
    ((uint16_t *)p)[i] = c2r_f32_to_f16(v);
}
static inline void c2r_store_bf16(void *p, int64_t i, float v) {
    ((uint16_t *)p)[i] = c2r_f32_to_bf16(v);
}
static inline void c2r_store_f64(void *p, int64_t i, double v) { ((double *)p)[i] = v; }

/* Loads `n` cos/sin values starting at element offset `off` into acc-typed tables. */
#define C2R_DEFINE_TABLE_LOADER(NAME, ACC, LOAD)                                           \
    static inline void NAME(const void *src, int64_t off, int64_t stride, int64_t n,       \
                            ACC *dst) {                                                    \
        for (int64_t j = 0; j < n; ++j) dst[j] = (ACC)LOAD(src, off + j * stride);         \
    }

C2R_DEFINE_TABLE_LOADER(c2r_table_f32_from_f32, float, c2r_load_f32)
C2R_DEFINE_TABLE_LOADER(c2r_table_f32_from_f16, float, c2r_load_f16)
C2R_DEFINE_TABLE_LOADER(c2r_table_f32_from_bf16, float, c2r_load_bf16)
C2R_DEFINE_TABLE_LOADER(c2r_table_f32_from_f64, float, c2r_load_f64)
C2R_DEFINE_TABLE_LOADER(c2r_table_f64_from_f32, double, c2r_load_f32)
C2R_DEFINE_TABLE_LOADER(c2r_table_f64_from_f16, double, c2r_load_f16)
C2R_DEFINE_TABLE_LOADER(c2r_table_f64_from_bf16, double, c2r_load_bf16)
C2R_DEFINE_TABLE_LOADER(c2r_table_f64_from_f64, double, c2r_load_f64)

/*
 * One strided tensor (q or k) seen by the row kernel: base pointers already offset to
 * (b, head 0, s, 0), the head stride and the last-dim stride.
 */
typedef struct c2r_rows {
    const void *in;
    void *out;
    int64_t n_heads;
    int64_t in_head_stride, in_dim_stride;
    int64_t out_head_stride, out_dim_stride;
} c2r_rows;

/* The row kernels are also compiled for AVX-512 (x86-64-v4) and AVX2 (x86-64-v3) and
 * picked at load time: the baseline x86-64 target (SSE2) lacks the 32->16-bit packs and
 * blends that the f16/bf16 conversions need, which makes them compute-bound; on a
 * 2-core AVX-512 machine the v4 clone takes in-place bf16 from 1.6x to 1.1x the time of
 * a same-size copy. No FMA contraction in any clone (C11 mode: -ffp-contract=off). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(C2ROPE_NO_CLONES)
#define C2R_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define C2R_MULTIVERSION
#endif

/*
 * C2R_DEFINE_ROWS(NAME, T, ACC, LOAD, STORE): rotates pairs [i0, i0 + n) of every head
 * of `r` with the tables, and copies the pass-through dims when asked. The contiguous
 * case (dim stride 1 on both sides) is spelled out separately so gcc vectorises it.
 */
#define C2R_DEFINE_ROWS(NAME, T, ACC, LOAD, STORE)                                          \
    C2R_MULTIVERSION static void NAME(const c2r_rows *r, int64_t i0, int64_t n, int64_t h,                   \
                     const ACC *ca, const ACC *sa, const ACC *cb, const ACC *sb) {           \
        ACC xa[C2R_BLOCK], xb[C2R_BLOCK];                                                   \
        const int64_t is = r->in_dim_stride, os = r->out_dim_stride;                        \
        for (int64_t hd = 0; hd < r->n_heads; ++hd) {                                       \
            const T *in = (const T *)r->in + hd * r->in_head_stride;                        \
            T *out = (T *)r->out + hd * r->out_head_stride;                                 \
            if (is == 1 && os == 1) {                                                       \
                for (int64_t j = 0; j < n; ++j) xa[j] = LOAD(in, i0 + j);                   \
                for (int64_t j = 0; j < n; ++j) xb[j] = LOAD(in, i0 + h + j);               \
                for (int64_t j = 0; j < n; ++j)                                             \
                    STORE(out, i0 + j, xa[j] * ca[j] + xb[j] * sa[j]);                      \
                for (int64_t j = 0; j < n; ++j)                                             \
                    STORE(out, i0 + h + j, xb[j] * cb[j] + xa[j] * sb[j]);                  \
            } else {                                                                        \
                for (int64_t j = 0; j < n; ++j) xa[j] = LOAD(in, (i0 + j) * is);            \
                for (int64_t j = 0; j < n; ++j) xb[j] = LOAD(in, (i0 + h + j) * is);        \
                for (int64_t j = 0; j < n; ++j)                                             \
                    STORE(out, (i0 + j) * os, xa[j] * ca[j] + xb[j] * sa[j]);               \
                for (int64_t j = 0; j < n; ++j)                                             \
                    STORE(out, (i0 + h + j) * os, xb[j] * cb[j] + xa[j] * sb[j]);           \
            }                                                                               \
        }                                                                                   \
    }

C2R_DEFINE_ROWS(c2r_rows_f32, float, float, c2r_load_f32, c2r_store_f32)
C2R_DEFINE_ROWS(c2r_rows_f16, uint16_t, float, c2r_load_f16, c2r_store_f16)
C2R_DEFINE_ROWS(c2r_rows_bf16, uint16_t, float, c2r_load_bf16, c2r_store_bf16)
C2R_DEFINE_ROWS(c2r_rows_f64, double, double, c2r_load_f64, c2r_store_f64)

/* Copies dims [R, D) of every head unchanged (same dtype: a plain element copy). */
static void c2r_copy_tail(const c2r_rows *r, int64_t rot_dim, int64_t head_dim,
                          size_t elem_size) {
    if (rot_dim >= head_dim) return;
    for (int64_t hd = 0; hd < r->n_heads; ++hd) {
        const char *in = (const char *)r->in + (size_t)(hd * r->in_head_stride) * elem_size;
        char *out = (char *)r->out + (size_t)(hd * r->out_head_stride) * elem_size;
        if (in == out && r->in_dim_stride == r->out_dim_stride) continue; /* in place */
        for (int64_t j = rot_dim; j < head_dim; ++j)
            memcpy(out + (size_t)(j * r->out_dim_stride) * elem_size,
                   in + (size_t)(j * r->in_dim_stride) * elem_size, elem_size);
    }
}

/* Points `r` at token (b, s) of q (which == 0) or k (which == 1). */
static void c2r_rows_at(const c2rope_rotary_params *p, int which, int64_t b, int64_t s,
                        size_t elem_size, c2r_rows *r) {
    const void *in = which ? p->k : p->q;
    void *out = which ? p->k_out : p->q_out;
    const int64_t *is = which ? p->k_stride : p->q_stride;
    const int64_t *os = which ? p->k_out_stride : p->q_out_stride;
    r->n_heads = which ? p->n_heads_k : p->n_heads_q;
    r->in = (const char *)in + (size_t)(b * is[0] + s * is[2]) * elem_size;
    r->out = (char *)out + (size_t)(b * os[0] + s * os[2]) * elem_size;
    r->in_head_stride = is[1];
    r->in_dim_stride = is[3];
    r->out_head_stride = os[1];
    r->out_dim_stride = os[3];
}

typedef void (*c2r_table_fn_f32)(const void *, int64_t, int64_t, int64_t, float *);
typedef void (*c2r_table_fn_f64)(const void *, int64_t, int64_t, int64_t, double *);

/*
 * The float-accumulating driver (F32, F16, BF16 data) and the double one (F64 data)
 * share this body; ACC is the table type, ROWS the row kernel.
 */
#define C2R_DEFINE_DRIVER(NAME, ACC, TABLE_FN_T)                                             \
    static void NAME(const c2rope_rotary_params *p, TABLE_FN_T table,                       \
                     void (*rows)(const c2r_rows *, int64_t, int64_t, int64_t, const ACC *, \
                                  const ACC *, const ACC *, const ACC *)) {                  \
        const int64_t h = p->rot_dim / 2;                                                   \
        const int64_t n_tok = p->batch * p->seq;                                            \
        const size_t es = c2rope_float_elem_size(p->dtype);                                          \
        const int backward = p->direction == C2ROPE_BACKWARD;                               \
        const int parallel =                                                                \
            n_tok * (p->n_heads_q + p->n_heads_k) * p->head_dim >= C2R_PARALLEL_MIN_ELEMENTS; \
        _Pragma("omp parallel for schedule(static) if(parallel)")                           \
        for (int64_t t = 0; t < n_tok; ++t) {                                               \
            const int64_t b = t / p->seq, s = t % p->seq;                                   \
            const int64_t cs_off = b * p->cs_stride[0] + s * p->cs_stride[1];               \
            const int64_t cd = p->cs_stride[2];                                             \
            ACC ca[C2R_BLOCK], sa[C2R_BLOCK], cb[C2R_BLOCK], sb[C2R_BLOCK];                 \
            c2r_rows rq, rk;                                                                \
            if (p->n_heads_q > 0) c2r_rows_at(p, 0, b, s, es, &rq);                         \
            if (p->n_heads_k > 0) c2r_rows_at(p, 1, b, s, es, &rk);                         \
            for (int64_t i0 = 0; i0 < h; i0 += C2R_BLOCK) {                                 \
                const int64_t n = h - i0 < C2R_BLOCK ? h - i0 : C2R_BLOCK;                  \
                table(p->cos, cs_off + i0 * cd, cd, n, ca);                                 \
                table(p->cos, cs_off + (i0 + h) * cd, cd, n, cb);                           \
                /* forward: sa = -sin[i], sb = sin[i+h]; backward: sa = sin[i+h],          \
                 * sb = -sin[i] */                                                          \
                table(p->sin, cs_off + i0 * cd, cd, n, backward ? sb : sa);                 \
                table(p->sin, cs_off + (i0 + h) * cd, cd, n, backward ? sa : sb);           \
                ACC *neg = backward ? sb : sa;                                              \
                for (int64_t j = 0; j < n; ++j) neg[j] = -neg[j];                           \
                if (p->n_heads_q > 0) rows(&rq, i0, n, h, ca, sa, cb, sb);                  \
                if (p->n_heads_k > 0) rows(&rk, i0, n, h, ca, sa, cb, sb);                  \
            }                                                                               \
            if (p->n_heads_q > 0) c2r_copy_tail(&rq, p->rot_dim, p->head_dim, es);          \
            if (p->n_heads_k > 0) c2r_copy_tail(&rk, p->rot_dim, p->head_dim, es);          \
        }                                                                                   \
    }

C2R_DEFINE_DRIVER(c2r_drive_f32, float, c2r_table_fn_f32)
C2R_DEFINE_DRIVER(c2r_drive_f64, double, c2r_table_fn_f64)

c2rope_status c2rope_rotary_cpu(const c2rope_rotary_params *p) {
    const c2rope_status st = c2rope_check_rotary_params(p);
    if (st != C2ROPE_OK) return st;
    if (p->batch == 0 || p->seq == 0 || (p->n_heads_q == 0 && p->n_heads_k == 0))
        return C2ROPE_OK;

    if (p->dtype == C2ROPE_F64) {
        c2r_table_fn_f64 table = p->cs_dtype == C2ROPE_F32    ? c2r_table_f64_from_f32
                                 : p->cs_dtype == C2ROPE_F16  ? c2r_table_f64_from_f16
                                 : p->cs_dtype == C2ROPE_BF16 ? c2r_table_f64_from_bf16
                                                              : c2r_table_f64_from_f64;
        c2r_drive_f64(p, table, c2r_rows_f64);
        return C2ROPE_OK;
    }
    c2r_table_fn_f32 table = p->cs_dtype == C2ROPE_F32    ? c2r_table_f32_from_f32
                             : p->cs_dtype == C2ROPE_F16  ? c2r_table_f32_from_f16
                             : p->cs_dtype == C2ROPE_BF16 ? c2r_table_f32_from_bf16
                                                          : c2r_table_f32_from_f64;
    switch (p->dtype) {
    case C2ROPE_F32: c2r_drive_f32(p, table, c2r_rows_f32); break;
    case C2ROPE_F16: c2r_drive_f32(p, table, c2r_rows_f16); break;
    case C2ROPE_BF16: c2r_drive_f32(p, table, c2r_rows_bf16); break;
    default: return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    }
    return C2ROPE_OK;
}
