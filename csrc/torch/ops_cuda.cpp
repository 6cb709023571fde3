// CUDA registrations of the c2rope ops (built only with C2ROPE_CUDA=1, see setup.py).
//
// Each wrapper makes the inputs' GPU current, takes that GPU's current stream (so the
// ops follow torch.cuda.stream(...) and CUDA-graph capture) and hands the device-
// independent glue from ops.h the *_cuda launcher. The glue does all the checking,
// including "every tensor on one device", before anything is launched.
// Only c10/cuda headers are used: they need nothing but the CUDA runtime's headers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <tuple>

#include "c2rope.h"
#include "ops.h"

namespace {

// The first CUDA tensor's device: the dispatcher sends a call here when any argument
// is on a GPU, not necessarily the first one (the glue then rejects the mix with a
// clear message instead of the guard failing on a CPU device).
std::optional<c10::Device> cuda_device_of(std::initializer_list<const at::Tensor *> tensors) {
    for (const at::Tensor *t : tensors)
        if (t->defined() && t->is_cuda()) return t->device();
    return std::nullopt;
}

void *current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<at::Tensor, at::Tensor> cos_sin_cuda(const at::Tensor &positions,
                                                const at::Tensor &inv_freq, const at::Tensor &axis,
                                                double attention_scaling, at::ScalarType dtype) {
    const c10::cuda::OptionalCUDAGuard guard(cuda_device_of({&positions, &inv_freq, &axis}));
    return c2rope_torch::cos_sin(positions, inv_freq, axis, attention_scaling, dtype,
                                 &c2rope_cos_sin_cuda, current_stream());
}

std::tuple<at::Tensor, at::Tensor> rotary_cuda(const at::Tensor &q, const at::Tensor &k,
                                               const at::Tensor &cos, const at::Tensor &sin) {
    const c10::cuda::OptionalCUDAGuard guard(cuda_device_of({&q, &k, &cos, &sin}));
    return c2rope_torch::rotary(q, k, cos, sin, C2ROPE_FORWARD, &c2rope_rotary_cuda,
                                current_stream());
}

std::tuple<at::Tensor, at::Tensor> rotary_backward_cuda(const at::Tensor &grad_q,
                                                        const at::Tensor &grad_k,
                                                        const at::Tensor &cos,
                                                        const at::Tensor &sin) {
    const c10::cuda::OptionalCUDAGuard guard(cuda_device_of({&grad_q, &grad_k, &cos, &sin}));
    return c2rope_torch::rotary(grad_q, grad_k, cos, sin, C2ROPE_BACKWARD, &c2rope_rotary_cuda,
                                current_stream());
}

void rotary_inplace_cuda(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                         const at::Tensor &sin) {
    const c10::cuda::OptionalCUDAGuard guard(cuda_device_of({&q, &k, &cos, &sin}));
    c2rope_torch::rotary_inplace(q, k, cos, sin, &c2rope_rotary_cuda, current_stream());
}

at::Tensor chebyshev_mask_cuda(const at::Tensor &valid, const at::Tensor &image_id,
                               const at::Tensor &ring, int64_t q_offset, int64_t q_len,
                               int64_t mode, at::ScalarType dtype) {
    const c10::cuda::OptionalCUDAGuard guard(cuda_device_of({&valid, &image_id, &ring}));
    return c2rope_torch::chebyshev_mask(valid, image_id, ring, q_offset, q_len, mode, dtype,
                                        &c2rope_chebyshev_mask_cuda, current_stream());
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, CUDA, m) {
    if (!c2rope_torch::kernels_enabled()) return;  // C2ROPE_DISABLE_KERNELS: the generic path
    m.impl("cos_sin", &cos_sin_cuda);
    m.impl("rotary", &rotary_cuda);
    m.impl("rotary_backward", &rotary_backward_cuda);
    m.impl("rotary_", &rotary_inplace_cuda);
    m.impl("chebyshev_mask", &chebyshev_mask_cuda);
}
