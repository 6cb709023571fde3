// ATen glue of torch.ops.c2rope.cos_sin: its checks, the kernel glue (c2rope_torch::cos_sin,
// shared with ops_cuda.cpp), HF's formula in ATen ops (shared with generic_ops.cpp) and
// the CPU registration.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "c2rope.h"
#include "ops.h"

namespace c2rope_torch {

void check_cos_sin(const at::Tensor &positions, const at::Tensor &inv_freq, const at::Tensor &axis,
                   at::ScalarType dtype) {
    const char *op = "c2rope.cos_sin";
    float_dtype_code(dtype, op, "dtype");
    TORCH_CHECK_TYPE(positions.scalar_type() == at::kFloat, op, ": positions must be float32, got ",
                     positions.scalar_type());
    TORCH_CHECK_TYPE(inv_freq.scalar_type() == at::kFloat, op, ": inv_freq must be float32, got ",
                     inv_freq.scalar_type());
    TORCH_CHECK_TYPE(axis.scalar_type() == at::kInt || axis.scalar_type() == at::kLong, op,
                     ": axis must be int32 or int64, got ", axis.scalar_type());
    TORCH_CHECK_VALUE(positions.dim() == 3 && positions.size(2) >= 1, op,
                      ": positions must be 3-D [B, S, A] with A >= 1, got shape ", positions.sizes());
    TORCH_CHECK_VALUE(inv_freq.dim() == 1 && inv_freq.size(0) >= 1, op,
                      ": inv_freq must be a non-empty 1-D tensor, got shape ", inv_freq.sizes());
    TORCH_CHECK_VALUE(axis.dim() == 1 && axis.size(0) == inv_freq.size(0), op,
                      ": axis must be 1-D with one entry per inv_freq slot (", inv_freq.size(0),
                      "), got shape ", axis.sizes());
    check_one_device(op, {{"positions", &positions}, {"inv_freq", &inv_freq}});
    TORCH_CHECK_VALUE(axis.device() == positions.device() || axis.is_cpu(), op, ": axis is on ",
                      axis.device(), " but positions is on ", positions.device(),
                      "; axis must be on positions' device or the CPU");
    // Checking a device table would synchronise (and break CUDA-graph capture), so only
    // CPU tables are range-checked; the device paths write NaN for an out-of-range slot.
    // The range is read from the table's own dtype, before any narrowing cast.
    if (axis.is_cpu() && axis.numel() > 0) {
        const int64_t A = positions.size(2);
        const int64_t lo = axis.min().item<int64_t>(), hi = axis.max().item<int64_t>();
        TORCH_CHECK_VALUE(lo >= 0 && hi < A, op, ": axis entries must be in [0, ", A,
                          "), got range [", lo, ", ", hi, "]");
    }
}

std::tuple<at::Tensor, at::Tensor> cos_sin_aten(const at::Tensor &positions, const at::Tensor &inv_freq,
                                                const at::Tensor &axis, double attention_scaling,
                                                at::ScalarType dtype) {
    const int64_t A = positions.size(2);
    at::Tensor index = axis.to(positions.device(), at::kLong);
    at::Tensor inv = inv_freq;
    if (!axis.is_cpu()) {
        inv = at::where(index.ge(0).logical_and_(index.lt(A)), inv_freq,
                        std::numeric_limits<float>::quiet_NaN());
        index = index.clamp(0, A - 1);
    }
    const at::Tensor freqs = positions.index_select(2, index) * inv;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    if (dtype == at::kDouble) emb = emb.to(at::kDouble);
    // The kernels take the scaling as a float32 (c2rope_cos_sin_params).
    const double scaling = static_cast<float>(attention_scaling);
    return {(emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)};
}

namespace {

// The int32 table the kernels read, on `device`. Device tables are not range-checked, so
// out-of-range int64 entries become -1 before the narrowing cast: they cannot wrap into
// range, and the kernel writes NaN for them.
at::Tensor kernel_axis(const at::Tensor &axis, int64_t n_axes, c10::Device device) {
    at::Tensor a = axis;
    if (!a.is_cpu() && a.scalar_type() == at::kLong)
        a = at::where(a.ge(0).logical_and_(a.lt(n_axes)), a, -1);
    return a.to(device, at::kInt).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cos_sin(const at::Tensor &positions, const at::Tensor &inv_freq,
                                           const at::Tensor &axis_in, double attention_scaling,
                                           at::ScalarType dtype, CosSinLauncher launch,
                                           void *stream) {
    const char *op = "c2rope.cos_sin";
    check_cos_sin(positions, inv_freq, axis_in, dtype);
    bool neg = false;
    for (int64_t s : positions.strides()) neg |= s < 0;
    const at::Tensor pos = neg ? positions.contiguous() : positions;
    const at::Tensor inv = inv_freq.contiguous();
    const int64_t B = positions.size(0), S = positions.size(1), A = positions.size(2), h = inv.size(0);
    const at::Tensor axis = kernel_axis(axis_in, A, positions.device());

    c10::OptionalDeviceGuard guard(positions.device());
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
    p.out_dtype = float_dtype_code(dtype, op, "dtype");
    p.cos = cos.data_ptr();
    p.sin = sin.data_ptr();
    check_status(launch(&p, stream), op);
    return {cos, sin};
}

}  // namespace c2rope_torch

namespace {

c2rope_status cos_sin_cpu_launcher(const c2rope_cos_sin_params *p, void * /*stream*/) {
    return c2rope_cos_sin_cpu(p);
}

// float64 outputs (tests, gradcheck) use the C kernel, which evaluates cos/sin in double.
// Float outputs use ATen's own CPU cos/sin in HF's order: PyTorch's vectorised CPU
// cos/sin (SLEEF, plus libm for loop tails) differ from correctly rounded values in the
// last bit for a few percent of angles, and C2RoPE promises text positions identical to
// the model's own rotary embedding.
std::tuple<at::Tensor, at::Tensor> cos_sin_cpu(const at::Tensor &positions,
                                               const at::Tensor &inv_freq, const at::Tensor &axis,
                                               double attention_scaling, at::ScalarType dtype) {
    if (dtype == at::kDouble)
        return c2rope_torch::cos_sin(positions, inv_freq, axis, attention_scaling, dtype,
                                     cos_sin_cpu_launcher, nullptr);
    c2rope_torch::check_cos_sin(positions, inv_freq, axis, dtype);
    return c2rope_torch::cos_sin_aten(positions, inv_freq, axis, attention_scaling, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, CPU, m) {
    if (c2rope_torch::kernels_enabled()) m.impl("cos_sin", &cos_sin_cpu);
}
