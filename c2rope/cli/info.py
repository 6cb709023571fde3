"""`python -m c2rope info`: torch version, kernels built, which path each op takes on
each device (c2rope's kernel, the generic PyTorch path, or shapes only), OpenMP threads."""
from __future__ import annotations

import os

import torch

import c2rope


def add_arguments(parser) -> None:
    """`info` takes no options."""


def _print_op_paths() -> None:
    from .._ops.paths import OPS, op_paths

    print("op paths per device (kernel: c2rope's C/CUDA kernel; generic: plain PyTorch ops;")
    print("                     fake: shapes only):")
    widths = [max(len(op), len("generic")) for op in OPS]
    print("  " + f"{'device':<8} " + " ".join(f"{op:<{w}}" for op, w in zip(OPS, widths)).rstrip())
    for device, paths in op_paths().items():
        print("  " + f"{device:<8} " + " ".join(f"{paths[op]:<{w}}" for op, w in zip(OPS, widths)).rstrip())


def run(args) -> int:
    ops = torch.ops.c2rope
    print(f"c2rope {c2rope.__version__} ({c2rope.__file__})")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print("kernels: CPU (C11 + OpenMP)")
    if ops.built_with_cuda():
        print(f"         CUDA: built, archs {ops.cuda_archs()}")
        if torch.cuda.is_available():
            print(f"         device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
        else:
            print("         no CUDA device visible")
    else:
        print("         CUDA: not built (CUDA tensors take the generic PyTorch path)")
    if os.environ.get("C2ROPE_DISABLE_KERNELS", "0") not in ("", "0"):
        print("         C2ROPE_DISABLE_KERNELS is set: no kernel is registered")
    _print_op_paths()
    print(f"OpenMP max threads: {ops.openmp_max_threads()} (torch intra-op threads: {torch.get_num_threads()})")
    return 0
