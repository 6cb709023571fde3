"""Plain-PyTorch Chebyshev mask (docs/design.md §5): the readable definition the C and
CUDA kernels are tested against."""
import torch

__all__ = ["chebyshev_mask_ref", "chebyshev_mask_from_layout_ref"]

_MODES = ("outward", "inward", "causal")


def chebyshev_mask_ref(valid, image_id, ring, q_offset=0, q_len=None, mode="outward", dtype=torch.bool):
    """Mask [B, 1, Q, K] from per-key tensors [B, K] (valid 0/1, image_id -1 for text,
    ring rank), for queries q_offset ... q_offset+Q-1. mode: name or kernel code."""
    if isinstance(mode, int):
        mode = _MODES[mode]
    valid = valid.bool()
    batch, kv_len = valid.shape
    if q_len is None:
        q_len = kv_len - q_offset
    i = torch.arange(q_offset, q_offset + q_len, device=valid.device).view(1, -1, 1)
    j = torch.arange(kv_len, device=valid.device).view(1, 1, -1)
    qi = i.expand(batch, -1, -1).squeeze(-1)  # [B, Q] absolute query positions

    def at_query(t):
        return torch.gather(t, 1, qi).unsqueeze(-1)  # [B, Q, 1]

    q_valid, q_image, q_ring = at_query(valid), at_query(image_id), at_query(ring)
    k_valid, k_image, k_ring = valid.unsqueeze(1), image_id.unsqueeze(1), ring.unsqueeze(1)
    causal = j <= i
    same_image = (q_image >= 0) & (k_image == q_image)
    if mode == "outward":
        inside = k_ring <= q_ring
    elif mode == "inward":
        inside = k_ring >= q_ring
    else:
        inside = causal
    allowed = k_valid & torch.where(same_image, inside, causal)
    allowed = torch.where(q_valid, allowed, j == i).unsqueeze(1)
    if dtype == torch.bool:
        return allowed
    out = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)


def chebyshev_mask_from_layout_ref(layout, config, dtype=torch.bool, q_offset=0, q_len=None):
    """chebyshev_mask_ref on a VisualLayout with the config's mask mode."""
    return chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, q_offset, q_len,
                              config.mask, dtype)
