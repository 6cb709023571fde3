"""`python -m c2rope info`: torch version, kernels built, OpenMP threads."""
from __future__ import annotations

import torch

import c2rope


def _cuda_kernels_registered() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("c2rope::rotary", "CUDA")


def add_arguments(parser) -> None:
    """`info` takes no options."""


def run(args) -> int:
    ops = torch.ops.c2rope
    print(f"c2rope {c2rope.__version__} ({c2rope.__file__})")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print("kernels: CPU (C11 + OpenMP)")
    if ops.built_with_cuda():
        archs = ops.cuda_archs()
        print(f"         CUDA: built, archs {archs}; registered: {_cuda_kernels_registered()}")
        if torch.cuda.is_available():
            print(f"         device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
        else:
            print("         no CUDA device visible")
    else:
        print("         CUDA: not built")
    print(f"OpenMP max threads: {ops.openmp_max_threads()} (torch intra-op threads: {torch.get_num_threads()})")
    return 0
