// rotary.cu -- c2rope_rotary_cuda: HF's rotate-half rotation of q and k in one launch.
// The work decomposition and per-thread body are in rotary_kernel.cuh.
#include "c2rope.h"
#include "rotary_kernel.cuh"

namespace c2rope_cuda {
namespace {

template <typename T, typename CT, int V>
__global__ void __launch_bounds__(kRotaryBlockThreads)
    rotary_kernel(const c2rope_rotary_params p, bool cs_vec) {
    rotary_thread<T, CT, V>(p, cs_vec, blockIdx.x, gridDim.x, threadIdx.x, threadIdx.y,
                            threadIdx.z, blockDim.x, blockDim.y, blockDim.z);
}

struct RotaryLaunch {
    const c2rope_rotary_params &p;
    const RotaryPlan &plan;
    cudaStream_t stream;

    template <typename T, typename CT, int V>
    c2rope_status run() const {
        const dim3 block(unsigned(plan.tx), unsigned(plan.ty), unsigned(plan.tz));
        rotary_kernel<T, CT, V><<<unsigned(plan.blocks), block, 0, stream>>>(p, plan.cs_vec);
        return launch_status();
    }
};

}  // namespace
}  // namespace c2rope_cuda

extern "C" c2rope_status c2rope_rotary_cuda(const c2rope_rotary_params *p, void *stream) {
    using namespace c2rope_cuda;
    const c2rope_status st = rotary_validate(p);
    if (st != C2ROPE_OK || !rotary_has_work(p)) return st;
    const RotaryPlan plan = rotary_plan(p);
    RotaryLaunch launch{*p, plan, static_cast<cudaStream_t>(stream)};
    return rotary_dispatch(*p, plan, launch);
}
