"""Fake kernel of torch.ops.c2rope.cos_sin (no autograd: positions are not learnable)."""
import torch

from .devices import check_one_device


@torch.library.register_fake("c2rope::cos_sin")
def _cos_sin_fake(positions, inv_freq, axis, attention_scaling, dtype):
    check_one_device("c2rope.cos_sin", positions=positions, inv_freq=inv_freq)
    if axis.device.type != "cpu":  # a host table is allowed with any device
        check_one_device("c2rope.cos_sin", positions=positions, axis=axis)
    torch._check(positions.dim() == 3, lambda: "c2rope.cos_sin: positions must be 3-D [B, S, A]")
    torch._check(inv_freq.dim() == 1, lambda: "c2rope.cos_sin: inv_freq must be 1-D")
    shape = (positions.shape[0], positions.shape[1], 2 * inv_freq.shape[0])
    # The real op returns fresh contiguous tensors.
    return positions.new_empty(shape, dtype=dtype), positions.new_empty(shape, dtype=dtype)
