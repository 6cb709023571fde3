// Helpers shared by the ATen glue of every op (declared in ops.h).
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "ops.h"

namespace c2rope_torch {

void check_status(c2rope_status status, const char *what) {
    TORCH_CHECK(status == C2ROPE_OK, "c2rope: ", what, " failed: ", c2rope_status_string(status));
}

c2rope_dtype float_dtype_code(at::ScalarType t, const char *op, const char *name) {
    switch (t) {
    case at::kFloat: return C2ROPE_F32;
    case at::kHalf: return C2ROPE_F16;
    case at::kBFloat16: return C2ROPE_BF16;
    case at::kDouble: return C2ROPE_F64;
    default:
        TORCH_CHECK_TYPE(false, op, ": ", name, " must be float32, float16, bfloat16 or float64, got ", t);
    }
}

void check_one_device(const char *op,
                      std::initializer_list<std::pair<const char *, const at::Tensor *>> tensors) {
    const auto &first = *tensors.begin();
    for (const auto &[name, t] : tensors)
        TORCH_CHECK_VALUE(t->device() == first.second->device(), op, ": ", name, " is on ", t->device(),
                          " but ", first.first, " is on ", first.second->device(),
                          "; all tensors must be on one device");
}

bool kernels_enabled() {
    // Read once, while the extension's static registrations run.
    static const bool enabled = [] {
        const char *v = std::getenv("C2ROPE_DISABLE_KERNELS");
        return v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0;
    }();
    return enabled;
}

}  // namespace c2rope_torch
