// ATen glue of torch.ops.c2rope.cos_sin (c2rope_torch::cos_sin) and its CPU registration.
// c2rope_torch::cos_sin is device-independent; ops_cuda.cpp passes the CUDA launcher.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "c2rope.h"
#include "ops.h"

namespace c2rope_torch {

std::tuple<at::Tensor, at::Tensor> cos_sin(const at::Tensor &positions, const at::Tensor &inv_freq,
                                           const at::Tensor &axis_in, double attention_scaling,
                                           at::ScalarType dtype, CosSinLauncher launch,
                                           void *stream) {
    const char *op = "c2rope.cos_sin";
    const c2rope_dtype out_code = float_dtype_code(dtype, op, "dtype");
    TORCH_CHECK_TYPE(positions.scalar_type() == at::kFloat, op,
                     ": positions must be float32, got ", positions.scalar_type());
    TORCH_CHECK_TYPE(inv_freq.scalar_type() == at::kFloat, op,
                     ": inv_freq must be float32, got ", inv_freq.scalar_type());
    TORCH_CHECK_TYPE(axis_in.scalar_type() == at::kInt, op, ": axis must be int32, got ",
                     axis_in.scalar_type());
    TORCH_CHECK(positions.dim() == 3 && positions.size(2) >= 1, op,
                ": positions must be 3-D [B, S, A] with A >= 1, got shape ", positions.sizes());
    TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.size(0) >= 1, op,
                ": inv_freq must be a non-empty 1-D tensor, got shape ", inv_freq.sizes());
    TORCH_CHECK(axis_in.dim() == 1 && axis_in.size(0) == inv_freq.size(0), op,
                ": axis must be 1-D with one entry per inv_freq slot (", inv_freq.size(0),
                "), got shape ", axis_in.sizes());
    TORCH_CHECK(inv_freq.device() == positions.device() && axis_in.device() == positions.device(),
                op, ": positions, inv_freq and axis must be on one device, got ",
                positions.device(), ", ", inv_freq.device(), ", ", axis_in.device());
    const int64_t A = positions.size(2);
    // A device-side check would synchronise (and break CUDA-graph capture), so only CPU
    // tables are range-checked here; device kernels must clamp or refuse on their own.
    if (axis_in.is_cpu() && axis_in.numel() > 0) {
        const int64_t lo = axis_in.min().item<int64_t>(), hi = axis_in.max().item<int64_t>();
        TORCH_CHECK(lo >= 0 && hi < A, op, ": axis entries must be in [0, ", A, "), got range [",
                    lo, ", ", hi, "]");
    }
    bool neg = false;
    for (int64_t s : positions.strides()) neg |= s < 0;
    const at::Tensor pos = neg ? positions.contiguous() : positions;
    const at::Tensor inv = inv_freq.contiguous();
    const at::Tensor axis = axis_in.contiguous();

    c10::OptionalDeviceGuard guard(positions.device());
    const int64_t B = positions.size(0), S = positions.size(1), h = inv.size(0);
    auto opts = positions.options().dtype(dtype);
    at::Tensor cos = at::empty({B, S, 2 * h}, opts);
    at::Tensor sin = at::empty({B, S, 2 * h}, opts);
    if (B == 0 || S == 0) return {cos, sin};

    c2rope_cos_sin_params p{};
    p.batch = B;
    p.seq = S;
    p.n_axes = A;
    p.half_dim = h;
    p.positions = pos.data_ptr<float>();
    for (int i = 0; i < 3; ++i) p.pos_stride[i] = pos.stride(i);
    p.inv_freq = inv.data_ptr<float>();
    p.axis = axis.data_ptr<int32_t>();
    p.attention_scaling = static_cast<float>(attention_scaling);
    p.out_dtype = out_code;
    p.cos = cos.data_ptr();
    p.sin = sin.data_ptr();
    check_status(launch(&p, stream), op);
    return {cos, sin};
}

}  // namespace c2rope_torch

namespace {

at::Tensor view_of(const void *data, at::IntArrayRef sizes, at::IntArrayRef strides,
                   at::ScalarType t) {
    return at::from_blob(const_cast<void *>(data), sizes, strides,
                         at::TensorOptions().dtype(t).device(at::kCPU));
}

// CPU launcher. Float outputs are computed with ATen's own CPU ops, in exactly HF's
// order (float32 product, cat, cos/sin over the [B, S, d] tensor, times the scaling,
// cast): PyTorch's vectorised CPU cos/sin (SLEEF, plus libm for loop tails) differ
// from correctly rounded values in the last bit for a few percent of angles, and
// C2RoPE promises text positions identical to the model's own rotary embedding.
// float64 outputs (tests, gradcheck) use the C kernel, which evaluates in double.
c2rope_status cos_sin_cpu_launcher(const c2rope_cos_sin_params *p, void * /*stream*/) {
    if (p->out_dtype == C2ROPE_F64) return c2rope_cos_sin_cpu(p);
    const int64_t B = p->batch, S = p->seq, A = p->n_axes, h = p->half_dim;
    at::Tensor pos = view_of(p->positions, {B, S, A},
                             {p->pos_stride[0], p->pos_stride[1], p->pos_stride[2]}, at::kFloat);
    at::Tensor inv = view_of(p->inv_freq, {h}, {1}, at::kFloat);
    at::Tensor axis = view_of(p->axis, {h}, {1}, at::kInt).to(at::kLong);
    at::Tensor freqs = pos.index_select(2, axis) * inv;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    const at::ScalarType t = p->out_dtype == C2ROPE_F16    ? at::kHalf
                             : p->out_dtype == C2ROPE_BF16 ? at::kBFloat16
                                                           : at::kFloat;
    const double scaling = p->attention_scaling;
    view_of(p->cos, {B, S, 2 * h}, {2 * h * S, 2 * h, 1}, t).copy_((emb.cos() * scaling).to(t));
    view_of(p->sin, {B, S, 2 * h}, {2 * h * S, 2 * h, 1}, t).copy_((emb.sin() * scaling).to(t));
    return C2ROPE_OK;
}

std::tuple<at::Tensor, at::Tensor> cos_sin_cpu(const at::Tensor &positions,
                                               const at::Tensor &inv_freq, const at::Tensor &axis,
                                               double attention_scaling, at::ScalarType dtype) {
    return c2rope_torch::cos_sin(positions, inv_freq, axis, attention_scaling, dtype,
                                 cos_sin_cpu_launcher, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, CPU, m) { m.impl("cos_sin", &cos_sin_cpu); }
