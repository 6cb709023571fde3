/*
 * c2rope.h -- the C API of c2rope's kernels.
 *
 * This header is the only boundary between the PyTorch glue (csrc/torch/) and
 * the kernels (csrc/cpu/, C11 + OpenMP; csrc/cuda/, CUDA C). It is plain C:
 * POD parameter structs, element strides (not bytes), `void *` data, a dtype enum and
 * status codes. Nothing here depends on torch, so the kernels can be compiled, tested
 * and sanitised alone (see tests/c/).
 *
 * Conventions shared by every entry point
 * ---------------------------------------
 * - Sizes and strides are int64_t and counted in elements of the tensor's dtype.
 *   Strides may be any value, including 0 (broadcast) and non-monotonic orders (a
 *   BSHD projection viewed as BHSD is the usual case). Negative strides are refused.
 * - Half-precision data (F16, BF16) is loaded, converted to float32, computed in
 *   float32 and rounded once (round-to-nearest-even) when stored. F64 tensors are
 *   computed in double, so autograd's gradcheck can run through the kernels.
 * - Every function validates its parameters first and returns C2ROPE_ERR_* without
 *   touching memory when they are inconsistent. It never allocates.
 * - Zero-sized problems (batch, seq, heads or length 0) are valid and do nothing.
 * - CPU functions parallelise with OpenMP over their outermost independent rows; the
 *   thread count is OpenMP's (omp_set_num_threads / OMP_NUM_THREADS).
 * - CUDA launchers take the same structs plus a cudaStream_t passed as `void *`
 *   (so this header needs no CUDA include) and return C2ROPE_ERR_CUDA when the launch
 *   fails; they are asynchronous like any kernel launch. Pointers are device pointers.
 */
#ifndef C2ROPE_H
#define C2ROPE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types understood by the kernels. */
typedef enum c2rope_dtype {
    C2ROPE_F32 = 0,
    C2ROPE_F16 = 1,  /* IEEE binary16 */
    C2ROPE_BF16 = 2, /* bfloat16 */
    C2ROPE_F64 = 3,
    C2ROPE_BOOL = 4  /* one byte, 0 or 1; mask output only */
} c2rope_dtype;

typedef enum c2rope_status {
    C2ROPE_OK = 0,
    C2ROPE_ERR_INVALID_ARGUMENT = 1, /* inconsistent sizes, strides, null pointers */
    C2ROPE_ERR_UNSUPPORTED_DTYPE = 2,
    C2ROPE_ERR_CUDA = 3              /* a CUDA launch or runtime call failed */
} c2rope_status;

/* A static, human-readable description of a status code. Never NULL. */
const char *c2rope_status_string(c2rope_status status);

/* ------------------------------------------------------------------------------
 * cos/sin tables (docs/design.md §4)
 *
 * For every token (b, s) and frequency slot k in [0, half_dim):
 *     angle = positions[b, s, axis[k]] * inv_freq[k]          (float32 arithmetic)
 *     cos[b, s, k] = cos[b, s, k + half_dim] = cos(angle) * attention_scaling
 *     sin[b, s, k] = sin[b, s, k + half_dim] = sin(angle) * attention_scaling
 * cast to out_dtype at the end. This is HuggingFace's rotary embedding generalised to
 * several position axes: with n_axes == 1 and axis[] all zero it reproduces
 * LlamaRotaryEmbedding bit for bit (float32 product, then float32 cos/sin).
 * With out_dtype == C2ROPE_F64 the angle is still the float32 product (positions and
 * inv_freq are float32), but cos/sin are evaluated in double.
 * ---------------------------------------------------------------------------- */
typedef struct c2rope_cos_sin_params {
    int64_t batch;           /* B */
    int64_t seq;             /* S */
    int64_t n_axes;          /* A >= 1: position components per token, e.g. (m, x, y) */
    int64_t half_dim;        /* d / 2: number of frequency slots */
    const float *positions;  /* [B, S, A] float32 */
    int64_t pos_stride[3];   /* element strides of positions over (B, S, A) */
    const float *inv_freq;   /* [half_dim] float32, contiguous */
    const int32_t *axis;     /* [half_dim] contiguous, each in [0, n_axes) */
    float attention_scaling; /* HF's post-scaling of cos/sin (1.0 for default rope) */
    c2rope_dtype out_dtype;  /* F32, F16, BF16 or F64 */
    void *cos;               /* [B, S, 2 * half_dim], contiguous, out_dtype */
    void *sin;               /* [B, S, 2 * half_dim], contiguous, out_dtype */
} c2rope_cos_sin_params;

c2rope_status c2rope_cos_sin_cpu(const c2rope_cos_sin_params *p);
c2rope_status c2rope_cos_sin_cuda(const c2rope_cos_sin_params *p, void *stream);

/* ------------------------------------------------------------------------------
 * Rotary rotation of q and k in one call (docs/design.md §4; HF's apply_rotary_pos_emb)
 *
 * q is [B, Hq, S, D] and k is [B, Hk, S, D] (GQA: Hq != Hk is fine). cos/sin are
 * [Bc, S, R] with Bc == B or Bc == 1 (then cs_stride[0] is 0 and they broadcast), and
 * R = rot_dim even, 2 <= R <= D. Let h = R / 2 and, for one row x of length D:
 *
 *   forward  (direction == C2ROPE_FORWARD), HF's formula for any cos/sin:
 *     out[i]     = x[i]     * cos[i]     - x[i + h] * sin[i]        i in [0, h)
 *     out[i + h] = x[i + h] * cos[i + h] + x[i]     * sin[i + h]
 *     out[j]     = x[j]                                              j in [R, D)
 *   backward (direction == C2ROPE_BACKWARD), the exact transpose, i.e. the gradient
 *   with respect to x of the forward given the output gradient g in place of x:
 *     out[i]     = g[i]     * cos[i]     + g[i + h] * sin[i + h]
 *     out[i + h] = g[i + h] * cos[i + h] - g[i]     * sin[i]
 *     out[j]     = g[j]                                              j in [R, D)
 *
 * q, k, q_out, k_out share one dtype (F32/F16/BF16/F64); cos and sin share cs_dtype,
 * which may differ (e.g. float32 tables with bf16 activations). In-place operation is
 * allowed: q_out == q (and/or k_out == k) with identical strides; each pair (i, i+h) is
 * read completely before it is written. Partially overlapping outputs are undefined.
 * Either tensor may be skipped by passing n_heads 0 for it (its pointers may be NULL).
 * ---------------------------------------------------------------------------- */
typedef enum c2rope_direction {
    C2ROPE_FORWARD = 0,
    C2ROPE_BACKWARD = 1
} c2rope_direction;

typedef struct c2rope_rotary_params {
    int64_t batch;        /* B */
    int64_t seq;          /* S */
    int64_t head_dim;     /* D */
    int64_t rot_dim;      /* R: last dim of cos/sin, even, 2 <= R <= D */
    int64_t n_heads_q;    /* Hq (0 skips q) */
    int64_t n_heads_k;    /* Hk (0 skips k) */
    const void *q;        /* [B, Hq, S, D] */
    int64_t q_stride[4];
    const void *k;        /* [B, Hk, S, D] */
    int64_t k_stride[4];
    void *q_out;          /* [B, Hq, S, D], may equal q */
    int64_t q_out_stride[4];
    void *k_out;          /* [B, Hk, S, D], may equal k */
    int64_t k_out_stride[4];
    const void *cos;      /* [Bc, S, R] */
    const void *sin;      /* [Bc, S, R] */
    int64_t cs_stride[3]; /* shared by cos and sin; cs_stride[0] == 0 broadcasts */
    c2rope_dtype dtype;   /* of q, k, q_out, k_out */
    c2rope_dtype cs_dtype;/* of cos, sin */
    c2rope_direction direction;
} c2rope_rotary_params;

c2rope_status c2rope_rotary_cpu(const c2rope_rotary_params *p);
c2rope_status c2rope_rotary_cuda(const c2rope_rotary_params *p, void *stream);

/* ------------------------------------------------------------------------------
 * Chebyshev causal mask (docs/design.md §5)
 *
 * Per batch row the caller describes the K key positions with three arrays:
 *   valid[b, j]    1 for a real token, 0 for padding;
 *   image_id[b, j] -1 for a text token, else the index of the image (>= 0) it is in;
 *   ring[b, j]     for image tokens the Chebyshev ring rank (0 = innermost), any
 *                  value for text tokens (not read).
 * Query row qi in [0, Q) is the token at absolute position i = q_offset + qi, which
 * must be < K (queries are a window of the keys, as in KV-cache decoding). Key j is
 * allowed for query i when
 *   - query i is padding: j == i only (keeps the softmax finite);
 *   - key j is padding: never;
 *   - i and j in the same image: by mode (OUTWARD: ring[j] <= ring[i];
 *     INWARD: ring[j] >= ring[i]; CAUSAL: j <= i);
 *   - otherwise: j <= i.
 * out is [B, 1, Q, K] contiguous, written once per element: BOOL gives 1 = may attend
 * (SDPA convention); F32/F16/BF16 give the additive mask 0 / lowest finite value of
 * that dtype (HF convention). F64 is refused.
 * ---------------------------------------------------------------------------- */
typedef enum c2rope_mask_mode {
    C2ROPE_MASK_OUTWARD = 0, /* a token sees its own ring and those nearer the centre */
    C2ROPE_MASK_INWARD = 1,  /* a token sees its own ring and those farther out */
    C2ROPE_MASK_CAUSAL = 2   /* ordinary causal inside images too */
} c2rope_mask_mode;

typedef struct c2rope_mask_params {
    int64_t batch;           /* B */
    int64_t q_len;           /* Q */
    int64_t kv_len;          /* K */
    int64_t q_offset;        /* absolute position of query row 0; q_offset + Q <= K */
    const uint8_t *valid;    /* [B, K] contiguous */
    const int32_t *image_id; /* [B, K] contiguous */
    const int32_t *ring;     /* [B, K] contiguous */
    c2rope_mask_mode mode;
    c2rope_dtype out_dtype;  /* BOOL, F32, F16 or BF16 */
    void *out;               /* [B, 1, Q, K] contiguous */
} c2rope_mask_params;

c2rope_status c2rope_chebyshev_mask_cpu(const c2rope_mask_params *p);
c2rope_status c2rope_chebyshev_mask_cuda(const c2rope_mask_params *p, void *stream);

/* Build information, for `python -m c2rope info`. */
int c2rope_openmp_max_threads(void); /* 1 when built without OpenMP */

#ifdef __cplusplus
}
#endif

#endif /* C2ROPE_H */
