// cos_sin.cu -- c2rope_cos_sin_cuda: HF-format cos/sin tables from multi-axis positions.
// The per-thread body is in cos_sin_kernel.cuh.
#include "c2rope.h"
#include "cos_sin_kernel.cuh"

namespace c2rope_cuda {
namespace {

template <typename OT>
__global__ void __launch_bounds__(kBlockThreads) cos_sin_kernel(const c2rope_cos_sin_params p) {
    const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    cos_sin_thread<OT>(p, first, int64_t(gridDim.x) * blockDim.x);
}

struct CosSinLaunch {
    const c2rope_cos_sin_params &p;
    cudaStream_t stream;

    template <typename OT>
    c2rope_status run() const {
        cos_sin_kernel<OT><<<unsigned(cos_sin_blocks(&p)), kBlockThreads, 0, stream>>>(p);
        return launch_status();
    }
};

}  // namespace
}  // namespace c2rope_cuda

extern "C" c2rope_status c2rope_cos_sin_cuda(const c2rope_cos_sin_params *p, void *stream) {
    using namespace c2rope_cuda;
    const c2rope_status st = cos_sin_validate(p);
    if (st != C2ROPE_OK || !cos_sin_has_work(p)) return st;
    CosSinLaunch launch{*p, static_cast<cudaStream_t>(stream)};
    return cos_sin_dispatch(*p, launch);
}
