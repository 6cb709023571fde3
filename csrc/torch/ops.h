// Device-independent glue between ATen tensors and the C kernels.
//
// Each function checks its tensors (shapes, dtypes, devices, strides), allocates the
// outputs, fills the kernel's parameter struct and calls `launch` with `stream`. The
// CPU registrations pass the *_cpu kernels and a null stream; the CUDA registrations
// (ops_cuda.cpp, built only with CUDA) pass the *_cuda launchers and the current
// stream. So both backends share one set of checks and one output layout.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "c2rope.h"

namespace c2rope_torch {

using CosSinLauncher = c2rope_status (*)(const c2rope_cos_sin_params *, void *stream);
using RotaryLauncher = c2rope_status (*)(const c2rope_rotary_params *, void *stream);
using MaskLauncher = c2rope_status (*)(const c2rope_mask_params *, void *stream);

// torch.ops.c2rope.cos_sin
std::tuple<at::Tensor, at::Tensor> cos_sin(const at::Tensor &positions, const at::Tensor &inv_freq,
                                           const at::Tensor &axis, double attention_scaling,
                                           at::ScalarType dtype, CosSinLauncher launch, void *stream);

// torch.ops.c2rope.rotary (direction FORWARD) and rotary_backward (BACKWARD); outputs
// are allocated with empty_like, so they keep the inputs' memory layout.
std::tuple<at::Tensor, at::Tensor> rotary(const at::Tensor &q, const at::Tensor &k,
                                          const at::Tensor &cos, const at::Tensor &sin,
                                          c2rope_direction direction, RotaryLauncher launch,
                                          void *stream);

// torch.ops.c2rope.rotary_ (in place, forward).
void rotary_inplace(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                    const at::Tensor &sin, RotaryLauncher launch, void *stream);

// torch.ops.c2rope.chebyshev_mask
at::Tensor chebyshev_mask(const at::Tensor &valid, const at::Tensor &image_id, const at::Tensor &ring,
                          int64_t q_offset, int64_t q_len, int64_t mode, at::ScalarType dtype,
                          MaskLauncher launch, void *stream);

// Raises a c10::Error naming `what` when a kernel returned an error status.
void check_status(c2rope_status status, const char *what);

// The kernels' code for a float32/float16/bfloat16/float64 dtype; a TypeError naming the
// op and the argument for any other dtype.
c2rope_dtype float_dtype_code(at::ScalarType t, const char *op, const char *name);

}  // namespace c2rope_torch
