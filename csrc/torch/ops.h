// The ATen glue of every c2rope op: the one place where tensor arguments are checked.
//
// Each op has one check_* function (shapes, dtypes, devices, strides; TypeError or
// ValueError naming the argument). Three kinds of implementation call it first:
//   - the kernel glue (cos_sin, rotary, rotary_inplace, chebyshev_mask below) allocates
//     the outputs, fills the kernel's parameter struct and calls `launch` with `stream`:
//     the CPU registrations pass the *_cpu kernels and a null stream, the CUDA ones
//     (ops_cuda.cpp, built only with CUDA) the *_cuda launchers and the current stream;
//   - the device-generic implementations (generic_ops.cpp, plain ATen ops) serve every
//     device that has no c2rope kernel;
//   - the fake kernels (c2rope/_ops/) only infer output shapes for tracing.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <tuple>
#include <utility>

#include "c2rope.h"

namespace c2rope_torch {

using CosSinLauncher = c2rope_status (*)(const c2rope_cos_sin_params *, void *stream);
using RotaryLauncher = c2rope_status (*)(const c2rope_rotary_params *, void *stream);
using MaskLauncher = c2rope_status (*)(const c2rope_mask_params *, void *stream);

// ---- checks ------------------------------------------------------------------------

// positions [B, S, A] float32, inv_freq [h] float32, axis [h] int32/int64 on positions'
// device or the CPU, dtype a float type. A CPU axis table is range-checked (no sync).
void check_cos_sin(const at::Tensor &positions, const at::Tensor &inv_freq, const at::Tensor &axis,
                   at::ScalarType dtype);

// q [B, Hq, S, D], k [B, Hk, S, D] of one float dtype; cos/sin [B or 1, S, R] of one float
// dtype; R even in [2, D]; one device; no negative strides. `op` names the caller.
void check_rotary(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                  const at::Tensor &sin, const char *op);

// check_rotary, plus what writing q and k in place needs: no element written twice,
// nothing written that is also read through another argument.
void check_rotary_inplace(const at::Tensor &q, const at::Tensor &k, const at::Tensor &cos,
                          const at::Tensor &sin);

// valid [B, K] bool/uint8, image_id and ring [B, K] int32 on one device, mode 0..2,
// 0 <= q_offset, q_offset + q_len <= K, dtype bool/float32/float16/bfloat16.
void check_mask(const at::Tensor &valid, const at::Tensor &image_id, const at::Tensor &ring,
                int64_t q_offset, int64_t q_len, int64_t mode, at::ScalarType dtype);

// ValueError "<op>: <name> is on X but <first name> is on Y" unless all share a device.
void check_one_device(const char *op,
                      std::initializer_list<std::pair<const char *, const at::Tensor *>> tensors);

// The kernels' code for a float32/float16/bfloat16/float64 dtype; a TypeError naming the
// op and the argument for any other dtype.
c2rope_dtype float_dtype_code(at::ScalarType t, const char *op, const char *name);

// ---- kernel glue (checks included) -------------------------------------------------

// torch.ops.c2rope.cos_sin through a kernel.
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

// ---- shared pieces -----------------------------------------------------------------

// HF's cos/sin in ATen ops, in HF's order (float32 product, cat, cos/sin, times the
// float32 scaling, one cast); cos/sin in double for float64. Arguments already checked.
// Slots whose axis entry is out of range (possible only for device tables, which are
// not range-checked) give NaN, like the CUDA kernel.
std::tuple<at::Tensor, at::Tensor> cos_sin_aten(const at::Tensor &positions, const at::Tensor &inv_freq,
                                                const at::Tensor &axis, double attention_scaling,
                                                at::ScalarType dtype);

// Raises a c10::Error naming `what` when a kernel returned an error status.
void check_status(c2rope_status status, const char *what);

// False when C2ROPE_DISABLE_KERNELS is set (to anything but "" or "0"): the CPU and CUDA
// kernels are then not registered and every device takes the generic implementation.
bool kernels_enabled();

}  // namespace c2rope_torch
