/*
 * cos_sin.c -- HF-format cos/sin tables from multi-axis positions (c2rope_cos_sin_cpu).
 *
 * angle = positions[b, s, axis[k]] * inv_freq[k] is one float32 product, exactly as
 * HF's `position_ids[..., None].float() * inv_freq`. The trigonometry is evaluated in
 * double and rounded once, which gives the correctly rounded float32 cos/sin in all
 * but vanishingly rare cases. PyTorch's CPU cos/sin (SLEEF, 1-ulp) differ from that in
 * the last bit for a few percent of angles, so the torch CPU op uses ATen's own cos/sin
 * for float outputs to stay bit-identical to HF (see csrc/torch/cos_sin_ops.cpp); this
 * kernel serves the C API and F64 outputs.
 */
#include <math.h>

#include "c2rope.h"
#include "c2rope_checks.h"
#include "internal.h"

/* The shared rules, plus the range of `axis` (host memory here). */
static c2rope_status c2r_cos_sin_validate(const c2rope_cos_sin_params *p) {
    const c2rope_status st = c2rope_check_cos_sin_params(p);
    if (st != C2ROPE_OK) return st;
    for (int64_t k = 0; k < p->half_dim; ++k)
        if (p->axis[k] < 0 || p->axis[k] >= p->n_axes) return C2ROPE_ERR_INVALID_ARGUMENT;
    return C2ROPE_OK;
}

static void c2r_store_out(c2rope_dtype t, void *base, int64_t i, double v) {
    switch (t) {
    case C2ROPE_F32: ((float *)base)[i] = (float)v; break;
    case C2ROPE_F16: ((uint16_t *)base)[i] = c2r_f32_to_f16((float)v); break;
    case C2ROPE_BF16: ((uint16_t *)base)[i] = c2r_f32_to_bf16((float)v); break;
    default: ((double *)base)[i] = v; break;
    }
}

c2rope_status c2rope_cos_sin_cpu(const c2rope_cos_sin_params *p) {
    const c2rope_status st = c2r_cos_sin_validate(p);
    if (st != C2ROPE_OK) return st;
    const int64_t h = p->half_dim, d = 2 * h;
    const int64_t n_tok = p->batch * p->seq;
    if (n_tok == 0 || h == 0) return C2ROPE_OK;
    const int is_f64 = p->out_dtype == C2ROPE_F64;
    const float scaling = p->attention_scaling;

    /* Small tables (decode steps) are cheaper on the calling thread. */
    const int parallel = n_tok * h >= 4096;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t t = 0; t < n_tok; ++t) {
        const int64_t b = t / p->seq, s = t % p->seq;
        const float *pos = p->positions + b * p->pos_stride[0] + s * p->pos_stride[1];
        for (int64_t k = 0; k < h; ++k) {
            const float angle = pos[p->axis[k] * p->pos_stride[2]] * p->inv_freq[k];
            double c = cos((double)angle), sn = sin((double)angle);
            if (!is_f64) {
                /* HF: float32 cos, times attention_scaling in float32, then the cast. */
                c = (double)((float)c * scaling);
                sn = (double)((float)sn * scaling);
            } else {
                c *= (double)scaling;
                sn *= (double)scaling;
            }
            c2r_store_out(p->out_dtype, p->cos, t * d + k, c);
            c2r_store_out(p->out_dtype, p->cos, t * d + k + h, c);
            c2r_store_out(p->out_dtype, p->sin, t * d + k, sn);
            c2r_store_out(p->out_dtype, p->sin, t * d + k + h, sn);
        }
    }
    return C2ROPE_OK;
}
