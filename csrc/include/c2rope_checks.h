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

#include "c2rope.h"

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
    return C2ROPE_OK;
}

#endif /* C2ROPE_CHECKS_H */
