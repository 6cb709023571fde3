/*
 * internal.h -- element load/store helpers shared by the CPU kernels.
 *
 * Self-contained (only <stdint.h>, <string.h>) so a CUDA port can mirror it line by
 * line. Half-precision conversions are bit manipulations with no branches that the
 * compiler cannot turn into blends, so loops over them vectorise, and they round
 * exactly like PyTorch's c10::Half / c10::BFloat16:
 *   - float -> f16: round to nearest even, overflow to +-Inf, subnormals exact,
 *     NaN -> 0x7E00 with the input's sign (c10's fp16_ieee_from_fp32_value);
 *   - float -> bf16: round to nearest even, NaN -> 0x7FC0 (c10's round_to_nearest_even).
 * No -ffast-math anywhere: these rely on exact IEEE float arithmetic.
 */
#ifndef C2ROPE_CPU_INTERNAL_H
#define C2ROPE_CPU_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "c2rope.h"

static inline uint32_t c2r_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float c2r_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- float16 ---------------------------------------------------------------- */

/* All-ones when `cond` holds, else zero: selections written as bit masks, which gcc
 * vectorises where it would keep a branch for the equivalent ?: on mixed int/float. */
static inline uint32_t c2r_mask(int cond) { return 0u - (uint32_t)(cond != 0); }

static inline uint32_t c2r_select(uint32_t mask, uint32_t if_set, uint32_t if_clear) {
    return (if_set & mask) | (if_clear & ~mask);
}

static inline float c2r_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7FFFu; /* exponent and mantissa */
    /* Normal numbers: re-bias the exponent by 127 - 15 = 112. Inf/NaN (exponent 31):
     * one more 112 makes the exponent 255, payload kept. */
    const uint32_t normal = (em << 13) + (112u << 23) + (c2r_mask(em >= 0x7C00u) & (112u << 23));
    /* Zero and subnormals: em * 2^-24 is exact in float32. */
    const uint32_t sub = c2r_f32_bits((float)(int32_t)em * 0x1p-24f);
    return c2r_bits_f32(c2r_select(c2r_mask(em < 0x0400u), sub, normal) | sign);
}

static inline uint16_t c2r_f32_to_f16(float f) {
    const uint32_t x = c2r_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t a = x & 0x7FFFFFFFu;
    /* Normal range: drop 13 mantissa bits with round-to-nearest-even, re-bias. */
    const uint32_t odd = (a >> 13) & 1u;
    const uint32_t normal = (a + 0xFFFu + odd - (112u << 23)) >> 13;
    /* Below 2^-14 the result is subnormal: adding 0.5 (2^-1) makes the FPU round the
     * value at bit 2^-24 (nearest even), and the low mantissa bits are the answer. */
    const uint32_t sub = c2r_f32_bits(c2r_bits_f32(a) + 0.5f) - c2r_f32_bits(0.5f);
    uint32_t out = c2r_select(c2r_mask(a < (113u << 23)), sub, normal);
    /* 65520 and above round to Inf; NaN becomes the canonical quiet NaN. */
    out = c2r_select(c2r_mask(a >= 0x477FF000u), 0x7C00u, out);
    out = c2r_select(c2r_mask(a > 0x7F800000u), 0x7E00u, out);
    return (uint16_t)(out | sign);
}

/* ---- bfloat16 --------------------------------------------------------------- */

static inline float c2r_bf16_to_f32(uint16_t h) { return c2r_bits_f32((uint32_t)h << 16); }

static inline uint16_t c2r_f32_to_bf16(float f) {
    const uint32_t x = c2r_f32_bits(f);
    const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)c2r_select(c2r_mask((x & 0x7FFFFFFFu) > 0x7F800000u), 0x7FC0u, rounded);
}

/* ---- sizes ------------------------------------------------------------------ */

static inline int c2r_is_float_dtype(c2rope_dtype t) {
    return t == C2ROPE_F32 || t == C2ROPE_F16 || t == C2ROPE_BF16 || t == C2ROPE_F64;
}

#endif /* C2ROPE_CPU_INTERNAL_H */
