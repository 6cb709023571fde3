/*
 * c2rope_overlap.h -- do two strided views share a byte of memory? Exact.
 *
 * The in-place rules of the rotary (docs/design.md §8) need it: an output must not share
 * memory with the other output, with the tables or with itself. torch's own test gives
 * up ("too hard") on any non-contiguous view, yet in-place q/k are usually views: the two
 * halves of a fused qkv projection are disjoint though their address ranges interleave,
 * while t[:, 0:2] and t[:, 1:3] of one tensor share a head. This test decides both.
 *
 * A view is a base address, up to C2ROPE_VIEW_MAX_DIMS (size, byte stride) pairs and an
 * element size. Dimensions of size 1 or stride 0 do not change the set of bytes, and are
 * dropped; the rest are sorted by stride, largest first. Two views are then compared by
 * splitting whichever has the larger outermost stride into its sub-blocks and keeping only
 * the sub-blocks whose byte range meets the other view's, down to single elements. For
 * the layouts tensors have (each stride at least the extent of the dimensions inside it)
 * that visits about one sub-block per row, so the work is bounded by a budget the caller
 * gives (a multiple of the element count); past it the answer is "unknown" (-1).
 *
 * Plain C99 `static inline`, usable from C, C++ and CUDA host code.
 */
#ifndef C2ROPE_OVERLAP_H
#define C2ROPE_OVERLAP_H

#include <stdint.h>

#define C2ROPE_VIEW_MAX_DIMS 4

typedef struct c2rope_view {
    uintptr_t base;                        /* address of element [0, ..., 0] */
    int ndim;                              /* <= C2ROPE_VIEW_MAX_DIMS */
    int64_t size[C2ROPE_VIEW_MAX_DIMS];
    int64_t stride[C2ROPE_VIEW_MAX_DIMS];  /* in elements, >= 0 */
    int64_t elem;                          /* bytes per element, >= 1 */
} c2rope_view;

/* A view normalised: `n` dimensions of size > 1 and stride > 0, in bytes, largest stride
 * first; extent[i] = bytes spanned by dimensions i.. (with the last element), extent[n] =
 * the element. `empty` when a size is 0; `self_alias` when a dimension of size > 1 has
 * stride 0 (its elements repeat). */
typedef struct c2rope_view_norm_ {
    uintptr_t base;
    int n, empty, self_alias;
    int64_t size[C2ROPE_VIEW_MAX_DIMS];
    int64_t stride[C2ROPE_VIEW_MAX_DIMS];
    int64_t extent[C2ROPE_VIEW_MAX_DIMS + 1];
} c2rope_view_norm_;

static inline c2rope_view_norm_ c2rope_view_normalise_(const c2rope_view *v) {
    c2rope_view_norm_ r;
    r.base = v->base;
    r.n = r.empty = r.self_alias = 0;
    for (int i = 0; i < v->ndim; ++i) {
        if (v->size[i] == 0) r.empty = 1;
        if (v->size[i] <= 1) continue;
        if (v->stride[i] == 0) {
            r.self_alias = 1;
            continue;
        }
        int j = r.n++; /* insertion sort, largest stride first */
        while (j > 0 && r.stride[j - 1] < v->stride[i] * v->elem) {
            r.size[j] = r.size[j - 1];
            r.stride[j] = r.stride[j - 1];
            --j;
        }
        r.size[j] = v->size[i];
        r.stride[j] = v->stride[i] * v->elem;
    }
    r.extent[r.n] = v->elem;
    for (int i = r.n - 1; i >= 0; --i) r.extent[i] = r.extent[i + 1] + r.stride[i] * (r.size[i] - 1);
    return r;
}

static inline int64_t c2rope_floor_div_(int64_t a, int64_t b) { /* b > 0 */
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* Do x's dimensions ix.. at byte offset ox and y's iy.. at oy meet? 1, 0, or -1 when the
 * budget ran out. Offsets are relative to one origin. */
static inline int c2rope_blocks_meet_(const c2rope_view_norm_ *x, int ix, int64_t ox,
                                      const c2rope_view_norm_ *y, int iy, int64_t oy,
                                      int64_t *budget) {
    if (ox + x->extent[ix] <= oy || oy + y->extent[iy] <= ox) return 0;
    if (ix == x->n && iy == y->n) return 1; /* two elements whose bytes meet */
    if (--*budget < 0) return -1;
    if (ix == x->n || (iy < y->n && y->stride[iy] > x->stride[ix])) /* split the coarser */
        return c2rope_blocks_meet_(y, iy, oy, x, ix, ox, budget);
    const int64_t s = x->stride[ix], inner = x->extent[ix + 1];
    /* sub-block a covers [ox + s*a, ox + s*a + inner): keep those meeting [oy, oy + y's extent) */
    int64_t lo = c2rope_floor_div_(oy - inner - ox, s) + 1;
    int64_t hi = c2rope_floor_div_(oy + y->extent[iy] - 1 - ox, s);
    if (lo < 0) lo = 0;
    if (hi > x->size[ix] - 1) hi = x->size[ix] - 1;
    for (int64_t a = lo; a <= hi; ++a) {
        int r = c2rope_blocks_meet_(x, ix + 1, ox + s * a, y, iy, oy, budget);
        if (r) return r;
    }
    return 0;
}

/* 1 when a and b share a byte, 0 when they do not, -1 when undecided within `budget`
 * sub-block visits. */
static inline int c2rope_views_overlap(const c2rope_view *a, const c2rope_view *b, int64_t budget) {
    c2rope_view_norm_ x = c2rope_view_normalise_(a), y = c2rope_view_normalise_(b);
    if (x.empty || y.empty) return 0;
    /* byte offsets relative to the lower base; beyond either extent means disjoint */
    const uintptr_t lo = x.base < y.base ? x.base : y.base;
    const uintptr_t gap = (x.base < y.base ? y.base : x.base) - lo;
    const int64_t reach = x.base < y.base ? x.extent[0] : y.extent[0];
    if (gap >= (uintptr_t)reach) return 0;
    return c2rope_blocks_meet_(&x, 0, (int64_t)(x.base - lo), &y, 0, (int64_t)(y.base - lo), &budget);
}

/* 1 when two different elements of v share a byte, 0 when none do, -1 when undecided. */
static inline int c2rope_view_self_overlaps(const c2rope_view *v, int64_t budget) {
    c2rope_view_norm_ x = c2rope_view_normalise_(v);
    if (x.empty) return 0;
    if (x.self_alias) return 1;
    /* Two index vectors first differing at dimension i, by d steps there: the blocks of the
     * dimensions inside i, d * stride[i] apart, must not meet. */
    for (int i = 0; i < x.n; ++i)
        for (int64_t d = 1; d < x.size[i] && d * x.stride[i] < x.extent[i + 1]; ++d) {
            int r = c2rope_blocks_meet_(&x, i + 1, 0, &x, i + 1, d * x.stride[i], &budget);
            if (r) return r;
        }
    return 0;
}

#endif /* C2ROPE_OVERLAP_H */
