// mask.cu -- c2rope_chebyshev_mask_cuda: the Chebyshev causal mask, bool or additive.
// The tiling and per-thread body are in mask_kernel.cuh.
#include "c2rope.h"
#include "mask_kernel.cuh"

namespace c2rope_cuda {
namespace {

template <typename U, int V>
__global__ void __launch_bounds__(kBlockThreads)
    mask_kernel(const c2rope_mask_params p, U allow, U deny) {
    mask_thread<U, V>(p, allow, deny, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x);
}

struct MaskLaunch {
    const c2rope_mask_params &p;
    const MaskPlan &plan;
    cudaStream_t stream;

    template <typename U, int V>
    c2rope_status run(U allow, U deny) const {
        mask_kernel<U, V><<<unsigned(plan.blocks), unsigned(plan.threads), 0, stream>>>(p, allow, deny);
        return launch_status();
    }
};

}  // namespace
}  // namespace c2rope_cuda

extern "C" c2rope_status c2rope_chebyshev_mask_cuda(const c2rope_mask_params *p, void *stream) {
    using namespace c2rope_cuda;
    const c2rope_status st = mask_validate(p);
    if (st != C2ROPE_OK || !mask_has_work(p)) return st;
    const MaskPlan plan = mask_plan(p);
    MaskLaunch launch{*p, plan, static_cast<cudaStream_t>(stream)};
    return mask_dispatch(*p, plan, launch);
}
