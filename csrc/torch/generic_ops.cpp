// Device-generic implementations of every c2rope op in plain ATen ops, registered under
// CompositeExplicitAutograd: the dispatcher uses them for any device without a c2rope
// kernel (CUDA without the CUDA build, MPS, XPU, ...) and never where one is registered
// (CPU, CUDA when built; Meta has the fake kernels). Autograd stays the ops' registered
// formulas, since CompositeExplicitAutograd kernels sit below the Autograd key.
//
// Same checks as the kernels (ops.h), same semantics: float32 math (float64 for float64
// tensors) rounded once to the output dtype, any cos/sin, partial rotary, GQA, strided
// inputs. Everything is whole-tensor ATen ops: no loop over tokens or heads.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "c2rope.h"
#include "ops.h"

namespace {

// Writes the rotation of x [B, H, S, D] by cos/sin [B or 1, S, R] into out (which may be
// x itself: both halves are computed before either is written). Each output element is
// two products and one sum in the math dtype, the kernels' (and HF's) order, rounded once.
void rotate(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin, const at::Tensor &out,
            c2rope_direction direction) {
    const int64_t D = x.size(3), R = cos.size(2), h = R / 2;
    if (x.numel() == 0) return;
    const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor c = cos.unsqueeze(1).to(math), s = sin.unsqueeze(1).to(math);  // over heads
    const at::Tensor c1 = c.narrow(-1, 0, h), c2 = c.narrow(-1, h, h);
    const at::Tensor s1 = s.narrow(-1, 0, h), s2 = s.narrow(-1, h, h);
    const at::Tensor x1 = x.narrow(-1, 0, h).to(math), x2 = x.narrow(-1, h, h).to(math);
    at::Tensor lo, hi;
    if (direction == C2ROPE_FORWARD) {
        lo = (x1 * c1).sub_(x2 * s1);
        hi = (x2 * c2).add_(x1 * s2);
    } else {  // the transpose: what the gradient of the forward needs
        lo = (x1 * c1).add_(x2 * s2);
        hi = (x2 * c2).sub_(x1 * s1);
    }
    out.narrow(-1, 0, h).copy_(lo);
    out.narrow(-1, h, h).copy_(hi);
    if (R < D && !out.is_same(x)) out.narrow(-1, R, D - R).copy_(x.narrow(-1, R, D - R));
}

std::tuple<at::Tensor, at::Tensor> rotary_generic(const at::Tensor &q, const at::Tensor &k,
                                                  const at::Tensor &cos, const at::Tensor &sin,
                                                  c2rope_direction direction) {
    c2rope_torch::check_rotary(q, k, cos, sin,
                               direction == C2ROPE_FORWARD ? "c2rope.rotary" : "c2rope.rotary_backward");
    c10::OptionalDeviceGuard guard(q.device());
    // empty_like, as the kernel glue: the outputs keep the inputs' memory layout.
    at::Tensor q_out = at::empty_like(q), k_out = at::empty_like(k);
    rotate(q, cos, sin, q_out, direction);
    rotate(k, cos, sin, k_out, direction);
    return {q_out, k_out};
}

std::tuple<at::Tensor, at::Tensor> rotary_forward_generic(const at::Tensor &q, const at::Tensor &k,
                                                          const at::Tensor &cos, const at::Tensor &sin) {
    return rotary_generic(q, k, cos, sin, C2ROPE_FORWARD);
}

std::tuple<at::Tensor, at::Tensor> rotary_backward_generic(const at::Tensor &grad_q,
                                                           const at::Tensor &grad_k,
                                                           const at::Tensor &cos,
                                                           const at::Tensor &sin) {
    return rotary_generic(grad_q, grad_k, cos, sin, C2ROPE_BACKWARD);
}

void rotary_inplace_generic(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                            const at::Tensor &sin) {
    c2rope_torch::check_rotary_inplace(q, k, cos, sin);
    c10::OptionalDeviceGuard guard(q.device());
    rotate(q, cos, sin, q, C2ROPE_FORWARD);
    rotate(k, cos, sin, k, C2ROPE_FORWARD);
}

std::tuple<at::Tensor, at::Tensor> cos_sin_generic(const at::Tensor &positions, const at::Tensor &inv_freq,
                                                   const at::Tensor &axis, double attention_scaling,
                                                   at::ScalarType dtype) {
    c2rope_torch::check_cos_sin(positions, inv_freq, axis, dtype);
    c10::OptionalDeviceGuard guard(positions.device());
    return c2rope_torch::cos_sin_aten(positions, inv_freq, axis, attention_scaling, dtype);
}

// torch.finfo(dtype).min as a 0-dim tensor of that dtype: the additive mask's "deny".
at::Tensor lowest_of(at::ScalarType dtype, const at::TensorOptions &opts) {
    switch (dtype) {
    case at::kHalf: return at::scalar_tensor(std::numeric_limits<c10::Half>::lowest(), opts);
    case at::kBFloat16: return at::scalar_tensor(std::numeric_limits<c10::BFloat16>::lowest(), opts);
    default: return at::scalar_tensor(std::numeric_limits<float>::lowest(), opts);
    }
}

// The rule of c2rope.h for every (query, key) at once. Queries are columns [B, Q, 1],
// keys rows [B, 1, K] and positions [Q, 1] / [1, K], so only the [B, Q, K] results are
// materialised: the allowed map (the output itself for bool) and one "same image" map.
at::Tensor chebyshev_mask_generic(const at::Tensor &valid_in, const at::Tensor &image_id,
                                  const at::Tensor &ring, int64_t q_offset, int64_t q_len, int64_t mode,
                                  at::ScalarType dtype) {
    c2rope_torch::check_mask(valid_in, image_id, ring, q_offset, q_len, mode, dtype);
    c10::OptionalDeviceGuard guard(valid_in.device());
    const int64_t B = valid_in.size(0), K = valid_in.size(1);
    const auto idx = valid_in.options().dtype(at::kLong);
    const at::Tensor valid = valid_in.to(at::kBool);
    const at::Tensor i = at::arange(q_offset, q_offset + q_len, idx).unsqueeze(1);  // [Q, 1]
    const at::Tensor j = at::arange(K, idx).unsqueeze(0);                           // [1, K]
    const at::Tensor causal = j.le(i);                                              // [Q, K]
    const auto at_queries = [&](const at::Tensor &t) { return t.narrow(1, q_offset, q_len).unsqueeze(2); };

    at::Tensor allowed = at::empty({B, q_len, K}, valid_in.options().dtype(at::kBool));
    if (mode == C2ROPE_MASK_CAUSAL) {
        at::logical_and_out(allowed, causal, valid.unsqueeze(1));
    } else {
        const at::Tensor q_image = at_queries(image_id), k_image = image_id.unsqueeze(1);
        const at::Tensor q_ring = at_queries(ring), k_ring = ring.unsqueeze(1);
        if (mode == C2ROPE_MASK_OUTWARD)
            at::le_out(allowed, k_ring, q_ring);
        else
            at::ge_out(allowed, k_ring, q_ring);
        const at::Tensor same_image = k_image.eq(q_image).logical_and_(q_image.ge(0));
        at::where_out(allowed, same_image, allowed, causal);
        allowed.logical_and_(valid.unsqueeze(1));
    }
    // A padding query attends to itself only, so its softmax stays finite.
    at::where_out(allowed, at_queries(valid), allowed, j.eq(i));
    allowed = allowed.unsqueeze(1);  // [B, 1, Q, K]
    if (dtype == at::kBool) return allowed;
    const auto opts = valid_in.options().dtype(dtype);
    at::Tensor out = at::empty({B, 1, q_len, K}, opts);
    return at::where_out(out, allowed, at::zeros({}, opts), lowest_of(dtype, opts));
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, CompositeExplicitAutograd, m) {
    m.impl("cos_sin", &cos_sin_generic);
    m.impl("rotary", &rotary_forward_generic);
    m.impl("rotary_backward", &rotary_backward_generic);
    m.impl("rotary_", &rotary_inplace_generic);
    m.impl("chebyshev_mask", &chebyshev_mask_generic);
}
