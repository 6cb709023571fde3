"""Which implementation each c2rope op runs on each device, read from the dispatcher.

"kernel": c2rope's own C/OpenMP (CPU) or CUDA kernel; "generic": the device-generic
implementation in plain ATen ops (csrc/torch/generic_ops.cpp), which the dispatcher uses
for any device without a kernel; "fake": shape inference only (meta tensors, tracing).
"""
import torch

OPS = ("cos_sin", "rotary", "rotary_backward", "rotary_", "chebyshev_mask")
DEVICES = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU", "meta": "Meta"}


def op_path(op: str, device: str) -> str:
    name = f"c2rope::{op}"
    if torch._C._dispatch_has_kernel_for_dispatch_key(name, DEVICES[device]):
        return "fake" if device == "meta" else "kernel"
    if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd"):
        return "generic"
    return "none"


def op_paths() -> dict:
    """{device: {op: path}} for every device type in DEVICES."""
    return {device: {op: op_path(op, device) for op in OPS} for device in DEVICES}
