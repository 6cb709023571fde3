// ATen glue of the rotary ops: their checks (check_rotary, check_rotary_inplace), the kernel
// glue (c2rope_torch::rotary, rotary_inplace) and the CPU registrations. Everything
// except the TORCH_LIBRARY_IMPL block is device-independent: ops_cuda.cpp calls the same
// functions with the CUDA launcher.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <tuple>

#include "c2rope.h"
#include "c2rope_overlap.h"
#include "ops.h"

namespace c2rope_torch {

void check_rotary(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                  const at::Tensor &sin, const char *op) {
    TORCH_CHECK_VALUE(q.dim() == 4, op, ": q must be 4-D [B, Hq, S, D], got shape ", q.sizes());
    TORCH_CHECK_VALUE(k.dim() == 4, op, ": k must be 4-D [B, Hk, S, D], got shape ", k.sizes());
    TORCH_CHECK_VALUE(cos.dim() == 3, op, ": cos must be 3-D [B or 1, S, R], got shape ", cos.sizes());
    TORCH_CHECK_VALUE(sin.sizes() == cos.sizes(), op, ": cos shape ", cos.sizes(),
                      " differs from sin shape ", sin.sizes());
    float_dtype_code(q.scalar_type(), op, "q");
    float_dtype_code(k.scalar_type(), op, "k");
    float_dtype_code(cos.scalar_type(), op, "cos");
    TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type(), op, ": k dtype ", k.scalar_type(),
                     " differs from q dtype ", q.scalar_type());
    TORCH_CHECK_TYPE(sin.scalar_type() == cos.scalar_type(), op, ": cos dtype ", cos.scalar_type(),
                     " differs from sin dtype ", sin.scalar_type());
    check_one_device(op, {{"q", &q}, {"k", &k}, {"cos", &cos}, {"sin", &sin}});
    const int64_t B = q.size(0), S = q.size(2), D = q.size(3), R = cos.size(2);
    TORCH_CHECK_VALUE(k.size(0) == B && k.size(2) == S && k.size(3) == D, op,
                      ": k shape does not match q shape in batch, sequence or head dim: k ",
                      k.sizes(), ", q ", q.sizes());
    TORCH_CHECK_VALUE(cos.size(0) == B || cos.size(0) == 1, op, ": cos batch ", cos.size(0),
                      " must be 1 or q's batch ", B);
    TORCH_CHECK_VALUE(cos.size(1) == S, op, ": cos sequence length ", cos.size(1),
                      " must equal q's ", S);
    TORCH_CHECK_VALUE(R >= 2 && R % 2 == 0 && R <= D, op, ": rotary dim (cos last dim) ", R,
                      " must be even, >= 2 and <= head dim ", D);
    for (const auto &[name, t] : {std::pair{"q", &q}, std::pair{"k", &k}})
        for (int64_t s : t->strides())
            TORCH_CHECK_VALUE(s >= 0, op, ": ", name, " has a negative stride ", t->strides());
}

namespace {

c2rope_view view_of(const at::Tensor &t) {
    c2rope_view v{};
    v.base = reinterpret_cast<uintptr_t>(t.data_ptr());
    v.ndim = static_cast<int>(t.dim());
    for (int i = 0; i < v.ndim; ++i) v.size[i] = t.size(i), v.stride[i] = t.stride(i);
    v.elem = static_cast<int64_t>(t.element_size());
    return v;
}

// Enough for the sub-block visits of any tensor-like layout (about one per row); only
// irregular as_strided views can run out, and they are refused as undecided.
int64_t overlap_budget(const at::Tensor &a, const at::Tensor &b) { return 4096 + a.numel() + b.numel(); }

constexpr const char *kInplaceHint =
    "; pass tensors that share no memory (disjoint views of one buffer, like the q and k "
    "slices of a fused qkv projection, are fine) or use c2rope.apply_rotary_pos_emb (out of place)";

// `written` (an output of the in-place op) must share no byte with `other`.
void check_apart(const at::Tensor &written, const char *written_name, const at::Tensor &other,
                 const char *other_name, const char *consequence) {
    if (written.numel() == 0 || other.numel() == 0) return;
    const c2rope_view a = view_of(written), b = view_of(other);
    const int overlap = c2rope_views_overlap(&a, &b, overlap_budget(written, other));
    TORCH_CHECK_VALUE(overlap >= 0, "c2rope.rotary_: could not verify that ", written_name, " and ", other_name,
                      " do not overlap in memory (irregular strides)", kInplaceHint);
    TORCH_CHECK_VALUE(overlap == 0, "c2rope.rotary_: ", written_name, " and ", other_name,
                      " overlap in memory: ", consequence, kInplaceHint);
}

void check_no_self_overlap(const at::Tensor &t, const char *name) {
    if (t.numel() == 0) return;
    const c2rope_view v = view_of(t);
    const int overlap = c2rope_view_self_overlaps(&v, overlap_budget(t, t));
    TORCH_CHECK_VALUE(overlap >= 0, "c2rope.rotary_: could not verify that the elements of ", name,
                      " do not overlap in memory (irregular strides)", kInplaceHint);
    TORCH_CHECK_VALUE(overlap == 0, "c2rope.rotary_: ", name, " has elements that share memory (an expanded "
                      "or overlapping view): they would be rotated more than once", kInplaceHint);
}

}  // namespace

void check_rotary_inplace(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                          const at::Tensor &sin) {
    check_rotary(q, k, cos, sin, "c2rope.rotary_");
    // Each pair is read before it is written, which is only safe when every element
    // written has memory of its own and nothing written is also read through another
    // argument. Exact for strided views (c2rope_overlap.h), where torch's own test gives
    // up on anything non-contiguous.
    check_no_self_overlap(q, "q");
    check_no_self_overlap(k, "k");
    check_apart(q, "q", k, "k", "the elements they share would be rotated twice");
    for (const auto &[name, t] : {std::pair{"q", &q}, std::pair{"k", &k}}) {
        check_apart(*t, name, cos, "cos", "writing it would change the table being read");
        check_apart(*t, name, sin, "sin", "writing it would change the table being read");
    }
}

namespace {

// cos and sin as the kernel reads them: one shared stride triple, none negative.
std::pair<at::Tensor, at::Tensor> kernel_tables(const at::Tensor &cos, const at::Tensor &sin) {
    bool neg = false;
    for (const at::Tensor *t : {&cos, &sin})
        for (int64_t s : t->strides()) neg |= s < 0;
    if (neg || cos.strides() != sin.strides()) return {cos.contiguous(), sin.contiguous()};
    return {cos, sin};
}

void fill_strides(int64_t *dst, const at::Tensor &t) {
    for (int64_t i = 0; i < t.dim(); ++i) dst[i] = t.stride(i);
}

void run(const at::Tensor &q, const at::Tensor &k, const at::Tensor &q_out,
         const at::Tensor &k_out, const std::pair<at::Tensor, at::Tensor> &cs, c2rope_direction direction,
         RotaryLauncher launch, void *stream, const char *op) {
    const int64_t B = q.size(0), S = q.size(2);
    if (B == 0 || S == 0 || (q.size(1) == 0 && k.size(1) == 0)) return;
    c2rope_rotary_params p{};
    p.batch = B;
    p.seq = S;
    p.head_dim = q.size(3);
    p.rot_dim = cs.first.size(2);
    p.n_heads_q = q.size(1);
    p.n_heads_k = k.size(1);
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.q_out = q_out.data_ptr();
    p.k_out = k_out.data_ptr();
    fill_strides(p.q_stride, q);
    fill_strides(p.k_stride, k);
    fill_strides(p.q_out_stride, q_out);
    fill_strides(p.k_out_stride, k_out);
    p.cos = cs.first.data_ptr();
    p.sin = cs.second.data_ptr();
    fill_strides(p.cs_stride, cs.first);
    if (cs.first.size(0) == 1) p.cs_stride[0] = 0;  // broadcast over the batch
    p.dtype = float_dtype_code(q.scalar_type(), op, "q");
    p.cs_dtype = float_dtype_code(cs.first.scalar_type(), op, "cos");
    p.direction = direction;
    check_status(launch(&p, stream), op);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rotary(const at::Tensor &q, const at::Tensor &k,
                                          const at::Tensor &cos, const at::Tensor &sin,
                                          c2rope_direction direction, RotaryLauncher launch,
                                          void *stream) {
    const char *op = direction == C2ROPE_FORWARD ? "c2rope.rotary" : "c2rope.rotary_backward";
    check_rotary(q, k, cos, sin, op);
    const auto cs = kernel_tables(cos, sin);
    c10::OptionalDeviceGuard guard(q.device());
    // empty_like keeps a dense input's strides (so a BSHD-viewed-as-BHSD q gives an
    // output with the same layout) and gives overlapping inputs a fresh contiguous one.
    at::Tensor q_out = at::empty_like(q);
    at::Tensor k_out = at::empty_like(k);
    run(q, k, q_out, k_out, cs, direction, launch, stream, op);
    return {q_out, k_out};
}

void rotary_inplace(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                    const at::Tensor &sin, RotaryLauncher launch, void *stream) {
    check_rotary_inplace(q, k, cos, sin);
    c10::OptionalDeviceGuard guard(q.device());
    run(q, k, q, k, kernel_tables(cos, sin), C2ROPE_FORWARD, launch, stream, "c2rope.rotary_");
}

}  // namespace c2rope_torch

namespace {

c2rope_status rotary_cpu_launcher(const c2rope_rotary_params *p, void * /*stream*/) {
    return c2rope_rotary_cpu(p);
}

std::tuple<at::Tensor, at::Tensor> rotary_cpu(const at::Tensor &q, const at::Tensor &k,
                                              const at::Tensor &cos, const at::Tensor &sin) {
    return c2rope_torch::rotary(q, k, cos, sin, C2ROPE_FORWARD, rotary_cpu_launcher, nullptr);
}

std::tuple<at::Tensor, at::Tensor> rotary_backward_cpu(const at::Tensor &grad_q,
                                                       const at::Tensor &grad_k,
                                                       const at::Tensor &cos,
                                                       const at::Tensor &sin) {
    return c2rope_torch::rotary(grad_q, grad_k, cos, sin, C2ROPE_BACKWARD, rotary_cpu_launcher,
                                nullptr);
}

void rotary_inplace_cpu(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                        const at::Tensor &sin) {
    c2rope_torch::rotary_inplace(q, k, cos, sin, rotary_cpu_launcher, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, CPU, m) {
    if (!c2rope_torch::kernels_enabled()) return;
    m.impl("rotary", &rotary_cpu);
    m.impl("rotary_backward", &rotary_backward_cpu);
    m.impl("rotary_", &rotary_inplace_cpu);
}
