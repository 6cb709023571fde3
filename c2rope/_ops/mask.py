"""Fake kernel of torch.ops.c2rope.chebyshev_mask (its output is not differentiable,
so it has no autograd formula)."""
import torch

from .devices import check_one_device

_MASK_DTYPES = (torch.bool, torch.float32, torch.float16, torch.bfloat16)


@torch.library.register_fake("c2rope::chebyshev_mask")
def _chebyshev_mask_fake(valid, image_id, ring, q_offset, q_len, mode, dtype):
    check_one_device("c2rope.chebyshev_mask", valid=valid, image_id=image_id, ring=ring)
    torch._check(valid.dim() == 2, lambda: "c2rope.chebyshev_mask: valid must be 2-D [B, K]")
    torch._check(image_id.shape == valid.shape and ring.shape == valid.shape,
                 lambda: "c2rope.chebyshev_mask: image_id and ring must match valid's shape")
    torch._check(dtype in _MASK_DTYPES, lambda: f"c2rope.chebyshev_mask: unsupported dtype {dtype}")
    torch._check(q_offset >= 0 and q_len >= 0, lambda: "c2rope.chebyshev_mask: negative q_offset or q_len")
    batch, kv_len = valid.shape
    torch._check(q_offset + q_len <= kv_len, lambda: "c2rope.chebyshev_mask: q_offset + q_len > K")
    return valid.new_empty((batch, 1, q_len, kv_len), dtype=dtype)
