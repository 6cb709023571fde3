// Build information as ops, so `python -m c2rope info` needs no pybind11.
#include <torch/library.h>

#include <string>

#include "c2rope.h"

namespace {
int64_t openmp_max_threads() { return c2rope_openmp_max_threads(); }

bool built_with_cuda() {
#ifdef C2ROPE_WITH_CUDA
    return true;
#else
    return false;
#endif
}
// The TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for ("" without CUDA).
std::string cuda_archs() {
#ifdef C2ROPE_CUDA_ARCHS
    return C2ROPE_CUDA_ARCHS;
#else
    return "";
#endif
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(c2rope, m) {
    m.def("openmp_max_threads() -> int", &openmp_max_threads);
    m.def("built_with_cuda() -> bool", &built_with_cuda);
    m.def("cuda_archs() -> str", &cuda_archs);
}
