/*
 * test_rotary.c -- the CPU rotary and cos/sin kernels against naive C references.
 *
 * Built and run by tests/c/run_sanitized.sh under ASan + UBSan. Random problems are
 * drawn from a seed printed at start (C2ROPE_TEST_SEED replays one). Checks:
 *   - half/bfloat16 conversions: exhaustive f16 -> f32, and f32 -> f16/bf16 on edge
 *     cases plus random bit patterns, against the compiler's _Float16 and a plain
 *     round-to-nearest-even;
 *   - c2rope_rotary_cpu in every dtype, both directions, random strides (BSHD views,
 *     padded rows, strided last dim, broadcast cos/sin), GQA, partial rotary, in place,
 *     skipped tensors, zero sizes, and refusal of invalid parameters;
 *   - c2rope_cos_sin_cpu in every dtype against double-precision trigonometry.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2rope.h"
#include "internal.h"

static int g_failures = 0;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            ++g_failures;                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
            if (g_failures > 20) exit(1);                                     \
        }                                                                     \
    } while (0)

/* ---- random numbers (xorshift64*) ----------------------------------------------- */

static uint64_t g_rng;

static uint64_t rnd_u64(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1DULL;
}

static int64_t rnd_int(int64_t lo, int64_t hi) { /* inclusive */
    return lo + (int64_t)(rnd_u64() % (uint64_t)(hi - lo + 1));
}

static double rnd_unit(void) { return (double)(rnd_u64() >> 11) * 0x1p-53 * 2.0 - 1.0; }

/* ---- conversions ---------------------------------------------------------------- */

static uint16_t f16_bits_of(_Float16 h) {
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

static void test_f16_conversions(void) {
    for (uint32_t u = 0; u < 65536; ++u) {
        _Float16 h;
        const uint16_t bits = (uint16_t)u;
        memcpy(&h, &bits, 2);
        const float want = (float)h, got = c2r_f16_to_f32(bits);
        if (isnan(want)) {
            CHECK(isnan(got), "f16 0x%04x: want NaN", u);
        } else {
            CHECK(c2r_f32_bits(got) == c2r_f32_bits(want), "f16 0x%04x -> %g, want %g", u,
                  (double)got, (double)want);
            /* Every finite half survives the round trip. */
            CHECK(c2r_f32_to_f16(got) == bits, "f16 0x%04x round trip", u);
        }
    }
    const float edges[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e9f,
                           INFINITY, -INFINITY, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f,
                           0x1p-14f, 0x1.ffcp-15f, 0x1.ffep-15f, 1.0f + 0x1p-11f,
                           1.0f + 0x3p-11f, 1e-8f, 3.14159265f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; ++i) {
        const float f = edges[i];
        CHECK(c2r_f32_to_f16(f) == f16_bits_of((_Float16)f), "f32 %a -> f16 0x%04x, want 0x%04x",
              (double)f, c2r_f32_to_f16(f), f16_bits_of((_Float16)f));
    }
    for (int i = 0; i < 2000000; ++i) {
        const float f = c2r_bits_f32((uint32_t)rnd_u64());
        if (isnan(f)) {
            const uint16_t want = (uint16_t)(0x7E00u | ((c2r_f32_bits(f) >> 16) & 0x8000u));
            CHECK(c2r_f32_to_f16(f) == want, "NaN -> f16 0x%04x", c2r_f32_to_f16(f));
            continue;
        }
        CHECK(c2r_f32_to_f16(f) == f16_bits_of((_Float16)f), "f32 %a -> f16 0x%04x, want 0x%04x",
              (double)f, c2r_f32_to_f16(f), f16_bits_of((_Float16)f));
    }
}

/* Round-to-nearest-even on the bit pattern, written out case by case. */
static uint16_t naive_bf16(float f) {
    if (isnan(f)) return 0x7FC0;
    const uint32_t x = c2r_f32_bits(f);
    uint32_t upper = x >> 16;
    const uint32_t rest = x & 0xFFFFu;
    if (rest > 0x8000u || (rest == 0x8000u && (upper & 1u))) upper += 1;
    return (uint16_t)upper;
}

static void test_bf16_conversions(void) {
    for (uint32_t u = 0; u < 65536; ++u) {
        const float f = c2r_bf16_to_f32((uint16_t)u);
        if (!isnan(f)) CHECK(c2r_f32_to_bf16(f) == u, "bf16 0x%04x round trip", u);
    }
    for (int i = 0; i < 2000000; ++i) {
        const float f = c2r_bits_f32((uint32_t)rnd_u64());
        CHECK(c2r_f32_to_bf16(f) == naive_bf16(f), "f32 %a -> bf16 0x%04x, want 0x%04x",
              (double)f, c2r_f32_to_bf16(f), naive_bf16(f));
    }
}

/* ---- typed buffers -------------------------------------------------------------- */

static size_t elem_size(c2rope_dtype t) { return t == C2ROPE_F64 ? 8 : t == C2ROPE_F32 ? 4 : 2; }

static double get(const void *p, c2rope_dtype t, int64_t i) {
    switch (t) {
    case C2ROPE_F32: return ((const float *)p)[i];
    case C2ROPE_F16: return c2r_f16_to_f32(((const uint16_t *)p)[i]);
    case C2ROPE_BF16: return c2r_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const double *)p)[i];
    }
}

static void put(void *p, c2rope_dtype t, int64_t i, double v) {
    switch (t) {
    case C2ROPE_F32: ((float *)p)[i] = (float)v; break;
    case C2ROPE_F16: ((uint16_t *)p)[i] = c2r_f32_to_f16((float)v); break;
    case C2ROPE_BF16: ((uint16_t *)p)[i] = c2r_f32_to_bf16((float)v); break;
    default: ((double *)p)[i] = v; break;
    }
}

/* Tolerance of one rounding to `t` (results are rounded once from float32/64 math). */
static double tolerance(c2rope_dtype t) {
    switch (t) {
    case C2ROPE_F64: return 1e-13;
    case C2ROPE_F32: return 2e-6;
    case C2ROPE_F16: return 2e-3;
    default: return 1.6e-2;
    }
}

static const char *dtype_name(c2rope_dtype t) {
    static const char *names[] = {"f32", "f16", "bf16", "f64"};
    return names[t];
}

/* A [d0, d1, d2, d3] tensor view with a random memory layout: a permutation of the
 * dims (BHSD or BSHD-as-BHSD), optional padding of the innermost rows and an optional
 * stride 2 on the last dim. Returns the number of elements to allocate. */
static int64_t random_layout(const int64_t *size, int64_t *stride) {
    const int bshd = (int)rnd_int(0, 1);
    const int64_t last = rnd_int(0, 3) == 0 ? 2 : 1;
    const int64_t pad = rnd_int(0, 1) ? rnd_int(1, 5) : 0;
    const int64_t row = size[3] * last + pad; /* elements between consecutive rows */
    stride[3] = last;
    if (bshd) { /* memory order B, S, H, D */
        stride[1] = row;
        stride[2] = row * size[1];
        stride[0] = stride[2] * size[2];
    } else {
        stride[2] = row;
        stride[1] = row * size[2];
        stride[0] = stride[1] * size[1];
    }
    return stride[0] * size[0] + 1;
}

static int64_t offset4(const int64_t *stride, int64_t a, int64_t b, int64_t c, int64_t d) {
    return a * stride[0] + b * stride[1] + c * stride[2] + d * stride[3];
}

/* The naive reference of c2rope.h's formulas, in double. */
static double ref_rotated(const void *x, const int64_t *xs, c2rope_dtype t, const void *cos,
                          const void *sin, const int64_t *cs, c2rope_dtype ct, int64_t b,
                          int64_t hd, int64_t s, int64_t j, int64_t R, int backward) {
    const int64_t h = R / 2;
    const double xj = get(x, t, offset4(xs, b, hd, s, j));
    if (j >= R) return xj;
    const int64_t cb = b * cs[0] + s * cs[1];
    const double c = get(cos, ct, cb + j * cs[2]);
    if (j < h) {
        const double partner = get(x, t, offset4(xs, b, hd, s, j + h));
        return backward ? xj * c + partner * get(sin, ct, cb + (j + h) * cs[2])
                        : xj * c - partner * get(sin, ct, cb + j * cs[2]);
    }
    const double partner = get(x, t, offset4(xs, b, hd, s, j - h));
    return backward ? xj * c - partner * get(sin, ct, cb + (j - h) * cs[2])
                    : xj * c + partner * get(sin, ct, cb + j * cs[2]);
}

static void fill_random(void *p, c2rope_dtype t, int64_t n) {
    for (int64_t i = 0; i < n; ++i) put(p, t, i, rnd_unit() * 2.0);
}

static void test_rotary_case(int iteration) {
    const c2rope_dtype dtype = (c2rope_dtype)rnd_int(0, 3);
    const c2rope_dtype cs_dtype = rnd_int(0, 1) ? dtype : C2ROPE_F32;
    const int64_t B = rnd_int(1, 3), S = rnd_int(1, 9), Hq = rnd_int(0, 5), Hk = rnd_int(0, 3);
    const int64_t D = rnd_int(1, 40) * 2 + (rnd_int(0, 3) == 0 ? 1 : 0);
    /* Mostly full rotary, sometimes partial; occasionally long rows cross the 256-pair
     * block of the kernel. */
    int64_t R = rnd_int(0, 2) ? (D / 2) * 2 : rnd_int(1, D / 2) * 2;
    int64_t Dl = D;
    if (iteration % 25 == 0) Dl = R = 2 * rnd_int(257, 300);
    const int64_t Bc = rnd_int(0, 1) ? 1 : B;
    const int in_place = (int)rnd_int(0, 3) == 0;
    const int backward = (int)rnd_int(0, 1);
    const size_t es = elem_size(dtype);

    const int64_t qsize[4] = {B, Hq, S, Dl}, ksize[4] = {B, Hk, S, Dl};
    int64_t qs[4], ks[4], qos[4], kos[4];
    const int64_t nq = random_layout(qsize, qs), nk = random_layout(ksize, ks);
    int64_t nqo = nq, nko = nk;
    if (in_place) {
        memcpy(qos, qs, sizeof qs);
        memcpy(kos, ks, sizeof ks);
    } else {
        nqo = random_layout(qsize, qos);
        nko = random_layout(ksize, kos);
    }
    const int64_t cs[3] = {Bc == 1 ? 0 : S * R, R, 1};
    void *q = malloc((size_t)nq * es), *k = malloc((size_t)nk * es);
    void *q_in = malloc((size_t)nq * es), *k_in = malloc((size_t)nk * es);
    void *qo = in_place ? q : malloc((size_t)nqo * es), *ko = in_place ? k : malloc((size_t)nko * es);
    void *cosb = malloc((size_t)(Bc * S * R) * elem_size(cs_dtype));
    void *sinb = malloc((size_t)(Bc * S * R) * elem_size(cs_dtype));
    fill_random(q, dtype, nq);
    fill_random(k, dtype, nk);
    fill_random(cosb, cs_dtype, Bc * S * R);
    fill_random(sinb, cs_dtype, Bc * S * R);
    memcpy(q_in, q, (size_t)nq * es);
    memcpy(k_in, k, (size_t)nk * es);

    c2rope_rotary_params p = {0};
    p.batch = B;
    p.seq = S;
    p.head_dim = Dl;
    p.rot_dim = R;
    p.n_heads_q = Hq;
    p.n_heads_k = Hk;
    p.q = Hq ? q : NULL; /* a skipped tensor may be NULL */
    p.k = Hk ? k : NULL;
    p.q_out = Hq ? qo : NULL;
    p.k_out = Hk ? ko : NULL;
    memcpy(p.q_stride, qs, sizeof qs);
    memcpy(p.k_stride, ks, sizeof ks);
    memcpy(p.q_out_stride, qos, sizeof qos);
    memcpy(p.k_out_stride, kos, sizeof kos);
    p.cos = cosb;
    p.sin = sinb;
    memcpy(p.cs_stride, cs, sizeof cs);
    p.dtype = dtype;
    p.cs_dtype = cs_dtype;
    p.direction = backward ? C2ROPE_BACKWARD : C2ROPE_FORWARD;
    const c2rope_status st = c2rope_rotary_cpu(&p);
    CHECK(st == C2ROPE_OK, "rotary status %d", (int)st);

    const double tol = tolerance(dtype);
    for (int which = 0; which < 2; ++which) {
        const int64_t H = which ? Hk : Hq;
        const void *in = which ? k_in : q_in;
        const void *out = which ? ko : qo;
        const int64_t *is = which ? ks : qs, *os = which ? kos : qos;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t hd = 0; hd < H; ++hd)
                for (int64_t s = 0; s < S; ++s)
                    for (int64_t j = 0; j < Dl; ++j) {
                        const double want = ref_rotated(in, is, dtype, cosb, sinb, cs, cs_dtype,
                                                        b, hd, s, j, R, backward);
                        const double got = get(out, dtype, offset4(os, b, hd, s, j));
                        if (fabs(got - want) > tol * (1.0 + fabs(want))) {
                            CHECK(0, "rotary %s/%s %s in_place=%d %s [%lld,%lld,%lld,%lld]: "
                                  "got %.9g want %.9g (B=%lld S=%lld D=%lld R=%lld)",
                                  dtype_name(dtype), dtype_name(cs_dtype),
                                  backward ? "bwd" : "fwd", in_place, which ? "k" : "q",
                                  (long long)b, (long long)hd, (long long)s, (long long)j, got,
                                  want, (long long)B, (long long)S, (long long)Dl, (long long)R);
                            goto done;
                        }
                    }
    }
done:
    free(q);
    free(k);
    free(q_in);
    free(k_in);
    if (!in_place) {
        free(qo);
        free(ko);
    }
    free(cosb);
    free(sinb);
}

static void test_rotary_refusals(void) {
    float x[64] = {0}, y[64] = {0}, c[16] = {0}, s[16] = {0};
    c2rope_rotary_params good = {0};
    good.batch = 1;
    good.seq = 2;
    good.head_dim = 8;
    good.rot_dim = 8;
    good.n_heads_q = 2;
    good.n_heads_k = 1;
    good.q = x;
    good.k = y;
    good.q_out = x;
    good.k_out = y;
    const int64_t st4[4] = {32, 16, 8, 1};
    memcpy(good.q_stride, st4, sizeof st4);
    memcpy(good.k_stride, st4, sizeof st4);
    memcpy(good.q_out_stride, st4, sizeof st4);
    memcpy(good.k_out_stride, st4, sizeof st4);
    good.cos = c;
    good.sin = s;
    good.cs_stride[0] = 16;
    good.cs_stride[1] = 8;
    good.cs_stride[2] = 1;
    good.dtype = C2ROPE_F32;
    good.cs_dtype = C2ROPE_F32;
    CHECK(c2rope_rotary_cpu(&good) == C2ROPE_OK, "valid params refused");
    CHECK(c2rope_rotary_cpu(NULL) == C2ROPE_ERR_INVALID_ARGUMENT, "NULL params");

    c2rope_rotary_params p;
    p = good, p.rot_dim = 7;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "odd rot_dim");
    p = good, p.rot_dim = 10;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "rot_dim > head_dim");
    p = good, p.rot_dim = 0;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "rot_dim 0");
    p = good, p.q_out_stride[1] = -16;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "negative stride");
    p = good, p.cs_stride[2] = -1;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "negative cos stride");
    p = good, p.k = NULL;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "NULL k");
    p = good, p.sin = NULL;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "NULL sin");
    p = good, p.dtype = C2ROPE_BOOL;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_UNSUPPORTED_DTYPE, "bool dtype");
    p = good, p.cs_dtype = (c2rope_dtype)42;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_UNSUPPORTED_DTYPE, "unknown cs dtype");
    p = good, p.direction = (c2rope_direction)7;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "bad direction");
    p = good, p.batch = -1;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "negative batch");
    /* Outputs: written once each, and nothing written is read through another argument. */
    p = good, p.q_out = x + 8;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "q_out overlapping q, shifted one row");
    p = good, p.q_out_stride[2] = 4;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "q_out at q but other strides");
    p = good, p.k_out = x + 16;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "k_out inside q (and q_out)");
    p = good, p.k = x, p.k_out = x;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "k in place on q's first head");
    p = good, p.q_out = c, p.q = c;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "q in place on cos");
    p = good, p.q_out_stride[1] = 0;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "q_out heads sharing memory");
    {
        /* A fused qkv row per token: q heads at [0, 16), k at [16, 24) of every 24 floats.
         * Interleaved address ranges, no shared element: accepted in place. */
        float z[48] = {0};
        p = good, p.q = p.q_out = z, p.k = p.k_out = z + 16;
        const int64_t fused[4] = {48, 8, 24, 1};
        memcpy(p.q_stride, fused, sizeof fused);
        memcpy(p.k_stride, fused, sizeof fused);
        memcpy(p.q_out_stride, fused, sizeof fused);
        memcpy(p.k_out_stride, fused, sizeof fused);
        CHECK(c2rope_rotary_cpu(&p) == C2ROPE_OK, "disjoint fused qkv views refused");
        p.k = p.k_out = z + 8; /* k on q's second head */
        CHECK(c2rope_rotary_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "k on q's second head");
    }
    /* Zero-sized problems are valid no-ops, whatever the (unread) pointers. */
    p = good, p.seq = 0, p.q = p.k = p.q_out = p.k_out = NULL, p.cos = p.sin = NULL;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_OK, "zero seq");
    p = good, p.n_heads_q = 0, p.n_heads_k = 0, p.q = p.k = p.q_out = p.k_out = NULL;
    CHECK(c2rope_rotary_cpu(&p) == C2ROPE_OK, "zero heads");
}

/* ---- cos/sin -------------------------------------------------------------------- */

static void test_cos_sin_case(void) {
    const c2rope_dtype t = (c2rope_dtype)rnd_int(0, 3);
    const int64_t B = rnd_int(0, 3), S = rnd_int(0, 20), A = rnd_int(1, 3), h = rnd_int(1, 40);
    const int64_t pad = rnd_int(0, 2); /* positions rows padded: strided input */
    const int64_t ps[3] = {S * (A + pad), A + pad, 1};
    float *pos = malloc((size_t)(B * S * (A + pad) + 1) * sizeof(float));
    float *inv = malloc((size_t)h * sizeof(float));
    int32_t *axis = malloc((size_t)h * sizeof(int32_t));
    void *cosb = malloc((size_t)(B * S * 2 * h + 1) * elem_size(t));
    void *sinb = malloc((size_t)(B * S * 2 * h + 1) * elem_size(t));
    for (int64_t i = 0; i < B * S * (A + pad); ++i) pos[i] = (float)rnd_int(-50, 4000) * 0.5f;
    for (int64_t k = 0; k < h; ++k) {
        inv[k] = powf(10000.0f, -(float)k / (float)h);
        axis[k] = (int32_t)rnd_int(0, A - 1);
    }
    const float scaling = rnd_int(0, 1) ? 1.0f : 1.1376f;
    c2rope_cos_sin_params p = {0};
    p.batch = B;
    p.seq = S;
    p.n_axes = A;
    p.half_dim = h;
    p.positions = pos;
    memcpy(p.pos_stride, ps, sizeof ps);
    p.inv_freq = inv;
    p.axis = axis;
    p.attention_scaling = scaling;
    p.out_dtype = t;
    p.cos = cosb;
    p.sin = sinb;
    CHECK(c2rope_cos_sin_cpu(&p) == C2ROPE_OK, "cos_sin status");
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s)
            for (int64_t k = 0; k < 2 * h; ++k) {
                const int64_t slot = k % h;
                const float angle = pos[b * ps[0] + s * ps[1] + axis[slot]] * inv[slot];
                double wc = cos((double)angle), ws = sin((double)angle);
                const int64_t i = (b * S + s) * 2 * h + k;
                double gc = get(cosb, t, i), gs = get(sinb, t, i);
                if (t == C2ROPE_F64) {
                    wc *= scaling, ws *= scaling;
                } else { /* float32 value times the scaling, rounded to t: exact match */
                    wc = (double)((float)cos((double)angle) * scaling);
                    ws = (double)((float)sin((double)angle) * scaling);
                    uint16_t tmp[2];
                    if (t != C2ROPE_F32) {
                        put(tmp, t, 0, wc), put(tmp, t, 1, ws);
                        wc = get(tmp, t, 0), ws = get(tmp, t, 1);
                    }
                }
                CHECK(gc == wc && gs == ws, "cos_sin %s [%lld,%lld,%lld]: got (%.17g, %.17g) "
                      "want (%.17g, %.17g)", dtype_name(t), (long long)b, (long long)s,
                      (long long)k, gc, gs, wc, ws);
            }
    /* An axis out of range is refused before anything is written. */
    if (h > 0) {
        axis[h - 1] = (int32_t)A;
        CHECK(c2rope_cos_sin_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "axis out of range");
        axis[h - 1] = -1;
        CHECK(c2rope_cos_sin_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "negative axis");
    }
    free(pos);
    free(inv);
    free(axis);
    free(cosb);
    free(sinb);
}

int main(void) {
    const char *env = getenv("C2ROPE_TEST_SEED");
    g_rng = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)clock();
    if (g_rng == 0) g_rng = 1;
    printf("test_rotary: C2ROPE_TEST_SEED=%llu\n", (unsigned long long)g_rng);

    test_f16_conversions();
    test_bf16_conversions();
    test_rotary_refusals();
    for (int i = 0; i < 400; ++i) test_rotary_case(i);
    for (int i = 0; i < 100; ++i) test_cos_sin_case();

    if (g_failures) {
        printf("test_rotary: %d failure(s)\n", g_failures);
        return 1;
    }
    printf("test_rotary: all passed\n");
    return 0;
}
