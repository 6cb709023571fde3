// ATen glue of torch.ops.c2rope.chebyshev_mask: its checks (check_mask), the kernel glue
// (c2rope_torch::chebyshev_mask, device-independent: the CUDA registration passes the
// CUDA launcher and the current stream) and the CPU registration.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "c2rope.h"
#include "ops.h"

namespace c2rope_torch {

namespace {

// bool, or an additive float mask (float64 has no use as a mask and is refused).
c2rope_dtype mask_dtype_code(at::ScalarType t) {
    if (t == at::kBool) return C2ROPE_BOOL;
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
                     "c2rope.chebyshev_mask: dtype must be bool, float32, float16 or bfloat16, got ", t);
    return float_dtype_code(t, "c2rope.chebyshev_mask", "dtype");
}

}  // namespace

void check_mask(const at::Tensor &valid, const at::Tensor &image_id, const at::Tensor &ring,
                int64_t q_offset, int64_t q_len, int64_t mode, at::ScalarType dtype) {
    const char *op = "c2rope.chebyshev_mask";
    mask_dtype_code(dtype);
    TORCH_CHECK_TYPE(valid.scalar_type() == at::kBool || valid.scalar_type() == at::kByte, op,
                     ": valid must be bool or uint8, got ", valid.scalar_type());
    TORCH_CHECK_TYPE(image_id.scalar_type() == at::kInt, op, ": image_id must be int32, got ",
                     image_id.scalar_type());
    TORCH_CHECK_TYPE(ring.scalar_type() == at::kInt, op, ": ring must be int32, got ", ring.scalar_type());
    TORCH_CHECK_VALUE(valid.dim() == 2, op, ": valid must be 2-D [B, K], got shape ", valid.sizes());
    TORCH_CHECK_VALUE(image_id.sizes() == valid.sizes(), op, ": image_id shape ", image_id.sizes(),
                      " differs from valid shape ", valid.sizes());
    TORCH_CHECK_VALUE(ring.sizes() == valid.sizes(), op, ": ring shape ", ring.sizes(),
                      " differs from valid shape ", valid.sizes());
    check_one_device(op, {{"valid", &valid}, {"image_id", &image_id}, {"ring", &ring}});
    TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op,
                      ": mode must be 0 (outward), 1 (inward) or 2 (causal), got ", mode);
    const int64_t K = valid.size(1);
    TORCH_CHECK_VALUE(q_offset >= 0 && q_len >= 0 && q_offset <= K && q_len <= K - q_offset, op,
                      ": need 0 <= q_offset and q_offset + q_len <= K = ", K, ", got q_offset ",
                      q_offset, ", q_len ", q_len);
}

at::Tensor chebyshev_mask(const at::Tensor &valid_in, const at::Tensor &image_id_in,
                          const at::Tensor &ring_in, int64_t q_offset, int64_t q_len, int64_t mode,
                          at::ScalarType dtype, MaskLauncher launch, void *stream) {
    check_mask(valid_in, image_id_in, ring_in, q_offset, q_len, mode, dtype);
    const int64_t B = valid_in.size(0), K = valid_in.size(1);
    c10::OptionalDeviceGuard guard(valid_in.device());
    at::Tensor out = at::empty({B, 1, q_len, K}, valid_in.options().dtype(dtype));
    if (B == 0 || q_len == 0) return out;

    // The kernel reads `valid` as 0/1 bytes: a bool tensor already is one.
    const at::Tensor valid = valid_in.contiguous();
    const at::Tensor image_id = image_id_in.contiguous();
    const at::Tensor ring = ring_in.contiguous();
    c2rope_mask_params p{};
    p.batch = B;
    p.q_len = q_len;
    p.kv_len = K;
    p.q_offset = q_offset;
    p.valid = static_cast<const uint8_t *>(valid.data_ptr());
    p.image_id = image_id.data_ptr<int32_t>();
    p.ring = ring.data_ptr<int32_t>();
    p.mode = static_cast<c2rope_mask_mode>(mode);
    p.out_dtype = mask_dtype_code(dtype);
    p.out = out.data_ptr();
    check_status(launch(&p, stream), "c2rope.chebyshev_mask");
    return out;
}

}  // namespace c2rope_torch

namespace {

c2rope_status mask_cpu_launcher(const c2rope_mask_params *p, void * /*stream*/) {
    return c2rope_chebyshev_mask_cpu(p);
}

at::Tensor chebyshev_mask_cpu(const at::Tensor &valid, const at::Tensor &image_id, const at::Tensor &ring,
                              int64_t q_offset, int64_t q_len, int64_t mode, at::ScalarType dtype) {
    return c2rope_torch::chebyshev_mask(valid, image_id, ring, q_offset, q_len, mode, dtype,
                                        mask_cpu_launcher, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, CPU, m) {
    if (c2rope_torch::kernels_enabled()) m.impl("chebyshev_mask", &chebyshev_mask_cpu);
}
