/*
 * c2rope_checks.h -- the parameter rules of c2rope.h, shared by every backend.
 *
 * Each c2rope_*_cpu kernel and *_cuda launcher calls these first, so both backends
 * accept and refuse exactly the same parameter structs. A caller of the C API may also
 * use them to pre-check a struct. Plain C99 `static inline`, usable from C, C++ and
 * CUDA host code.
 */
#ifndef C2ROPE_CHECKS_H
#define C2ROPE_CHECKS_H

#include <stddef.h>
#include <stdint.h>

#include "c2rope.h"
#include "c2rope_overlap.h"

/* Bytes per element of a floating-point tensor dtype; 0 for anything else. */
static inline size_t c2rope_float_elem_size(c2rope_dtype t) {
    switch (t) {
    case C2ROPE_F32: return 4;
    case C2ROPE_F16:
    case C2ROPE_BF16: return 2;
    case C2ROPE_F64: return 8;
    default: return 0;
    }
}

static inline int c2rope_strides_nonnegative(const int64_t *stride, int n) {
    for (int i = 0; i < n; ++i)
        if (stride[i] < 0) return 0;
    return 1;
}

/*
 * Rules for c2rope_cos_sin_params. The entries of `axis` are not read: on the GPU they
 * live in device memory. The CPU kernel range-checks them itself.
 */
static inline c2rope_status c2rope_check_cos_sin_params(const c2rope_cos_sin_params *p) {
    if (!p) return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->batch < 0 || p->seq < 0 || p->n_axes < 1 || p->half_dim < 0)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (!c2rope_strides_nonnegative(p->pos_stride, 3)) return C2ROPE_ERR_INVALID_ARGUMENT;
    if (!c2rope_float_elem_size(p->out_dtype)) return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    if (p->half_dim > 0 && (!p->inv_freq || !p->axis)) return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->batch > 0 && p->seq > 0 && p->half_dim > 0 && (!p->positions || !p->cos || !p->sin))
        return C2ROPE_ERR_INVALID_ARGUMENT;
    return C2ROPE_OK;
}

/* A [B, H, S, D] (or [Bc, S, R] when h < 0) operand of the rotary as a c2rope_view. */
static inline c2rope_view c2rope_rotary_view_(const void *ptr, const c2rope_rotary_params *p, int64_t heads,
                                              const int64_t *stride, int64_t elem) {
    c2rope_view v;
    v.base = (uintptr_t)ptr;
    v.elem = elem;
    if (heads < 0) { /* cos / sin: [B, S, R] as read (cs_stride[0] == 0 broadcasts) */
        const int64_t size[3] = {p->batch, p->seq, p->rot_dim};
        v.ndim = 3;
        for (int i = 0; i < 3; ++i) v.size[i] = size[i], v.stride[i] = stride[i];
    } else {
        const int64_t size[4] = {p->batch, heads, p->seq, p->head_dim};
        v.ndim = 4;
        for (int i = 0; i < 4; ++i) v.size[i] = size[i], v.stride[i] = stride[i];
    }
    return v;
}

/*
 * The outputs' memory rule: every element of q_out and k_out is written exactly once, and
 * nothing written is read through another argument. So an output has no two elements in
 * one place, is either exactly its input (same address and strides: in place) or apart
 * from it, and is apart from the other output, the other input and cos/sin. Undecidable
 * layouts (beyond the overlap test's budget) are refused too.
 */
static inline int c2rope_rotary_outputs_apart_(const c2rope_rotary_params *p) {
    const int64_t es = (int64_t)c2rope_float_elem_size(p->dtype), cs = (int64_t)c2rope_float_elem_size(p->cs_dtype);
    const int64_t budget = 4096 + p->batch * p->seq * (p->n_heads_q + p->n_heads_k) * p->head_dim;
    const int live[2] = {p->n_heads_q > 0, p->n_heads_k > 0};
    const c2rope_view in[2] = {c2rope_rotary_view_(p->q, p, p->n_heads_q, p->q_stride, es),
                               c2rope_rotary_view_(p->k, p, p->n_heads_k, p->k_stride, es)};
    const c2rope_view out[2] = {c2rope_rotary_view_(p->q_out, p, p->n_heads_q, p->q_out_stride, es),
                                c2rope_rotary_view_(p->k_out, p, p->n_heads_k, p->k_out_stride, es)};
    const c2rope_view tables[2] = {c2rope_rotary_view_(p->cos, p, -1, p->cs_stride, cs),
                                   c2rope_rotary_view_(p->sin, p, -1, p->cs_stride, cs)};
    for (int t = 0; t < 2; ++t) {
        if (!live[t]) continue;
        if (c2rope_view_self_overlaps(&out[t], budget)) return 0;
        int same = out[t].base == in[t].base;
        for (int i = 0; i < 4; ++i) same &= out[t].stride[i] == in[t].stride[i];
        if (!same && c2rope_views_overlap(&out[t], &in[t], budget)) return 0;
        for (int c = 0; c < 2; ++c)
            if (c2rope_views_overlap(&out[t], &tables[c], budget)) return 0;
        if (live[1 - t] && (c2rope_views_overlap(&out[t], &out[1 - t], budget) ||
                            c2rope_views_overlap(&out[t], &in[1 - t], budget)))
            return 0;
    }
    return 1;
}

/*
 * Rules for c2rope_rotary_params. Data pointers and q/k strides are only checked when
 * there is a token to rotate: zero-sized problems are valid and do nothing (torch
 * hands out null data pointers for empty tensors).
 */
static inline c2rope_status c2rope_check_rotary_params(const c2rope_rotary_params *p) {
    if (!p) return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->batch < 0 || p->seq < 0 || p->n_heads_q < 0 || p->n_heads_k < 0)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->head_dim < 2 || p->rot_dim < 2 || p->rot_dim > p->head_dim || p->rot_dim % 2)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->direction != C2ROPE_FORWARD && p->direction != C2ROPE_BACKWARD)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (!c2rope_float_elem_size(p->dtype) || !c2rope_float_elem_size(p->cs_dtype))
        return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    if (!c2rope_strides_nonnegative(p->cs_stride, 3)) return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->batch == 0 || p->seq == 0) return C2ROPE_OK;
    if (p->n_heads_q > 0 && (!p->q || !p->q_out || !c2rope_strides_nonnegative(p->q_stride, 4) ||
                             !c2rope_strides_nonnegative(p->q_out_stride, 4)))
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->n_heads_k > 0 && (!p->k || !p->k_out || !c2rope_strides_nonnegative(p->k_stride, 4) ||
                             !c2rope_strides_nonnegative(p->k_out_stride, 4)))
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if ((p->n_heads_q > 0 || p->n_heads_k > 0) && (!p->cos || !p->sin))
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (!c2rope_rotary_outputs_apart_(p)) return C2ROPE_ERR_INVALID_ARGUMENT;
    return C2ROPE_OK;
}

/*
 * The mask's output encoding (c2rope.h): bytes per element and the bit patterns of an
 * allowed element (1, or +0.0) and a masked one (0, or the lowest finite value of the
 * float type, torch.finfo(dtype).min). Returns 0 for a dtype the mask does not produce.
 */
typedef struct c2rope_mask_format {
    int elem_size;
    uint32_t allow, deny;
} c2rope_mask_format;

static inline int c2rope_mask_format_of(c2rope_dtype t, c2rope_mask_format *f) {
    switch (t) {
    case C2ROPE_BOOL: f->elem_size = 1; f->allow = 1u; f->deny = 0u; return 1;
    case C2ROPE_F32: f->elem_size = 4; f->allow = 0u; f->deny = 0xFF7FFFFFu; return 1;
    case C2ROPE_F16: f->elem_size = 2; f->allow = 0u; f->deny = 0xFBFFu; return 1;
    case C2ROPE_BF16: f->elem_size = 2; f->allow = 0u; f->deny = 0xFF7Fu; return 1;
    default: return 0;
    }
}

/* Rules for c2rope_mask_params. */
static inline c2rope_status c2rope_check_mask_params(const c2rope_mask_params *p) {
    if (!p) return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->batch < 0 || p->q_len < 0 || p->kv_len < 0 || p->q_offset < 0)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->q_offset > p->kv_len || p->q_len > p->kv_len - p->q_offset)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    if (p->mode != C2ROPE_MASK_OUTWARD && p->mode != C2ROPE_MASK_INWARD &&
        p->mode != C2ROPE_MASK_CAUSAL)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    c2rope_mask_format f;
    if (!c2rope_mask_format_of(p->out_dtype, &f)) return C2ROPE_ERR_UNSUPPORTED_DTYPE;
    if (p->batch == 0 || p->q_len == 0) return C2ROPE_OK; /* kv_len >= q_len > 0 below */
    if (!p->valid || !p->image_id || !p->ring || !p->out) return C2ROPE_ERR_INVALID_ARGUMENT;
    /* The output's byte size must fit in ptrdiff_t. */
    const int64_t limit = INT64_MAX / 4;
    if (p->batch > limit / p->q_len || p->batch * p->q_len > limit / p->kv_len)
        return C2ROPE_ERR_INVALID_ARGUMENT;
    return C2ROPE_OK;
}

#endif /* C2ROPE_CHECKS_H */
