/*
 * mask.c -- the Chebyshev causal mask on the CPU (c2rope.h, docs/design.md §5).
 *
 * Rows (b, qi) are independent; OpenMP splits them statically so each thread walks a
 * contiguous block of query rows and can reuse what it learnt about the previous row
 * (the batch row's padding and image structure, the current image's extent). Each row
 * is cut into segments where one rule holds, and every output element is written
 * exactly once:
 *   - a plain causal prefix with no padding is a constant fill (memset for bool);
 *   - a causal prefix with padding copies `valid`;
 *   - keys after the query are a constant "deny" fill;
 *   - the query's own image applies the ring rule.
 * When an image's id also occurs outside its contiguous run (nothing in c2rope builds
 * such a layout, but the C API allows it) the row falls back to the per-element rule.
 */
#include <stddef.h>
#include <string.h>

#include "c2rope.h"
#include "c2rope_checks.h"

/* Output element size and patterns ("allow" is 1 or +0.0, "deny" 0 or the lowest finite
 * value of the float type): c2rope_mask_format_of in c2rope_checks.h. */
typedef c2rope_mask_format out_format;

/* out[j] = value for j in [lo, hi). */
static void fill(const out_format *f, void *out, int64_t lo, int64_t hi, uint32_t value) {
    if (hi <= lo) return;
    const int64_t n = hi - lo;
    if (f->elem_size == 1) {
        memset((uint8_t *)out + lo, (int)value, (size_t)n);
    } else if (f->elem_size == 2) {
        uint16_t *o = (uint16_t *)out + lo;
        const uint16_t v = (uint16_t)value;
        if (v == 0) {
            memset(o, 0, (size_t)n * 2);
        } else {
            for (int64_t j = 0; j < n; ++j) o[j] = v;
        }
    } else {
        uint32_t *o = (uint32_t *)out + lo;
        if (value == 0) {
            memset(o, 0, (size_t)n * 4);
        } else {
            for (int64_t j = 0; j < n; ++j) o[j] = value;
        }
    }
}

/* out[j] = valid[j] ? allow : deny for j in [lo, hi). */
static void copy_valid(const out_format *f, void *out, const uint8_t *valid, int64_t lo, int64_t hi) {
    if (hi <= lo) return;
    const int64_t n = hi - lo;
    const uint8_t *v = valid + lo;
    if (f->elem_size == 1) {
        uint8_t *o = (uint8_t *)out + lo;
        for (int64_t j = 0; j < n; ++j) o[j] = (uint8_t)(v[j] != 0);
    } else if (f->elem_size == 2) {
        uint16_t *o = (uint16_t *)out + lo;
        const uint16_t a = (uint16_t)f->allow, d = (uint16_t)f->deny;
        for (int64_t j = 0; j < n; ++j) o[j] = v[j] ? a : d;
    } else {
        uint32_t *o = (uint32_t *)out + lo;
        for (int64_t j = 0; j < n; ++j) o[j] = v[j] ? f->allow : f->deny;
    }
}

/* The ring rule over [lo, hi), all keys in the query's image:
 * OUTWARD allows ring[j] <= r, INWARD allows ring[j] >= r (padding keys never).
 * One loop per (mode, element size) keeps each of them a plain int32 compare + blend
 * that the compiler vectorises. */
#define C2R_RING_LOOP(T, CMP)                                                          \
    do {                                                                               \
        T *o = (T *)out + lo;                                                          \
        const T a = (T)f->allow, d = (T)f->deny;                                       \
        for (int64_t j = 0; j < n; ++j) o[j] = ((v[j] != 0) & (g[j] CMP r)) ? a : d;   \
    } while (0)

static void ring_rule(const out_format *f, void *out, const uint8_t *valid, const int32_t *ring,
                      int64_t lo, int64_t hi, int32_t r, c2rope_mask_mode mode) {
    const uint8_t *v = valid + lo;
    const int32_t *g = ring + lo;
    const int64_t n = hi - lo;
    const int inward = mode == C2ROPE_MASK_INWARD;
    if (f->elem_size == 1) {
        if (inward) C2R_RING_LOOP(uint8_t, >=); else C2R_RING_LOOP(uint8_t, <=);
    } else if (f->elem_size == 2) {
        if (inward) C2R_RING_LOOP(uint16_t, >=); else C2R_RING_LOOP(uint16_t, <=);
    } else {
        if (inward) C2R_RING_LOOP(uint32_t, >=); else C2R_RING_LOOP(uint32_t, <=);
    }
}
#undef C2R_RING_LOOP

/* The rule for one element, used where the fast segments do not apply. */
static int allowed_generic(const uint8_t *valid, const int32_t *image_id, const int32_t *ring, int64_t i,
                           int64_t j, c2rope_mask_mode mode) {
    if (!valid[j]) return 0;
    const int32_t gi = image_id[i];
    if (gi >= 0 && image_id[j] == gi) {
        if (mode == C2ROPE_MASK_OUTWARD) return ring[j] <= ring[i];
        if (mode == C2ROPE_MASK_INWARD) return ring[j] >= ring[i];
    }
    return j <= i;
}

static void row_generic(const out_format *f, void *out, const uint8_t *valid, const int32_t *image_id,
                        const int32_t *ring, int64_t i, int64_t K, c2rope_mask_mode mode) {
    for (int64_t j = 0; j < K; ++j) {
        const uint32_t value = allowed_generic(valid, image_id, ring, i, j, mode) ? f->allow : f->deny;
        if (f->elem_size == 1) {
            ((uint8_t *)out)[j] = (uint8_t)value;
        } else if (f->elem_size == 2) {
            ((uint16_t *)out)[j] = (uint16_t)value;
        } else {
            ((uint32_t *)out)[j] = value;
        }
    }
}

/* What a thread knows about the batch row it is working on. */
typedef struct {
    int64_t b;             /* batch row described, -1 before the first */
    int64_t first_invalid; /* first padding key, K when none */
    /* Extent [img_lo, img_hi) of the last image run looked up, and whether its id
     * occurs anywhere else in the row. */
    int64_t img_lo, img_hi;
    int img_contiguous;
} row_cache;

static void cache_batch_row(row_cache *c, int64_t b, const uint8_t *valid, int64_t K) {
    c->b = b;
    c->first_invalid = K;
    for (int64_t j = 0; j < K; ++j) {
        if (!valid[j]) {
            c->first_invalid = j;
            break;
        }
    }
    c->img_lo = c->img_hi = -1;
    c->img_contiguous = 0;
}

static void cache_image_run(row_cache *c, const int32_t *image_id, int64_t i, int64_t K) {
    const int32_t g = image_id[i];
    int64_t lo = i, hi = i + 1;
    while (lo > 0 && image_id[lo - 1] == g) --lo;
    while (hi < K && image_id[hi] == g) ++hi;
    int contiguous = 1;
    for (int64_t j = 0; j < lo && contiguous; ++j) contiguous = image_id[j] != g;
    for (int64_t j = hi; j < K && contiguous; ++j) contiguous = image_id[j] != g;
    c->img_lo = lo;
    c->img_hi = hi;
    c->img_contiguous = contiguous;
}

/* Keys [0, hi) under the causal rule (all of them at or before the query). */
static void causal_prefix(const out_format *f, void *out, const uint8_t *valid, const row_cache *c,
                          int64_t hi) {
    if (hi <= c->first_invalid) {
        fill(f, out, 0, hi, f->allow);
    } else {
        fill(f, out, 0, c->first_invalid, f->allow);
        copy_valid(f, out, valid, c->first_invalid, hi);
    }
}

static void mask_row(const c2rope_mask_params *p, const out_format *f, row_cache *c, int64_t b, int64_t qi) {
    const int64_t K = p->kv_len;
    const int64_t i = p->q_offset + qi;
    const uint8_t *valid = p->valid + b * K;
    const int32_t *image_id = p->image_id + b * K;
    const int32_t *ring = p->ring + b * K;
    void *out = (uint8_t *)p->out + ((b * p->q_len + qi) * K) * f->elem_size;

    if (c->b != b) cache_batch_row(c, b, valid, K);

    if (!valid[i]) { /* a padding query attends to itself only */
        fill(f, out, 0, i, f->deny);
        fill(f, out, i, i + 1, f->allow);
        fill(f, out, i + 1, K, f->deny);
        return;
    }
    if (image_id[i] < 0 || p->mode == C2ROPE_MASK_CAUSAL) {
        causal_prefix(f, out, valid, c, i + 1);
        fill(f, out, i + 1, K, f->deny);
        return;
    }
    if (!(c->img_lo <= i && i < c->img_hi)) cache_image_run(c, image_id, i, K);
    if (!c->img_contiguous) {
        row_generic(f, out, valid, image_id, ring, i, K, p->mode);
        return;
    }
    causal_prefix(f, out, valid, c, c->img_lo);
    ring_rule(f, out, valid, ring, c->img_lo, c->img_hi, ring[i], p->mode);
    fill(f, out, c->img_hi, K, f->deny);
}

c2rope_status c2rope_chebyshev_mask_cpu(const c2rope_mask_params *p) {
    const c2rope_status st = c2rope_check_mask_params(p);
    if (st != C2ROPE_OK) return st;
    if (p->batch == 0 || p->q_len == 0) return C2ROPE_OK; /* kv_len >= q_len > 0 below */
    out_format f;
    c2rope_mask_format_of(p->out_dtype, &f);

    const int64_t rows = p->batch * p->q_len;
    /* A decoding step (one query row per sequence) is cheaper than waking the team. */
    const int parallel = rows > 1 && rows * p->kv_len >= ((int64_t)1 << 16);
#pragma omp parallel if (parallel)
    {
        row_cache cache = {-1, 0, -1, -1, 0};
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            mask_row(p, &f, &cache, r / p->q_len, r % p->q_len);
        }
    }
    return C2ROPE_OK;
}
