"""The Chebyshev causal mask (docs/design.md §5): dense, FlexAttention mask_mod, BlockMask.

Inside an image a token sees its own Chebyshev ring and the rings nearer the centre
(mask="outward"), or its ring and those farther out ("inward"), or the usual causal
prefix ("causal"); everything else is causal, padding keys are never visible and a
padding query sees only itself (so softmax stays finite).
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import torch

from .config import C2RoPEConfig
from .layout import VisualLayout

__all__ = ["chebyshev_mask", "chebyshev_mask_mod", "chebyshev_block_mask", "MASK_DTYPES"]

MASK_DTYPES = (torch.bool, torch.float32, torch.float16, torch.bfloat16)

# Rows of the dense mask built at a time while classifying FlexAttention blocks.
_BLOCK_MASK_CHUNK_BYTES = 32 << 20


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_layout_config(layout, config) -> None:
    if not isinstance(layout, VisualLayout):
        raise TypeError(f"layout must be a c2rope.VisualLayout, got {type(layout).__name__}")
    if not isinstance(config, C2RoPEConfig):
        raise TypeError(f"config must be a c2rope.C2RoPEConfig, got {type(config).__name__}")


def _check_window(layout: VisualLayout, q_offset, q_len, kv_len=None):
    """Validated (q_offset, q_len, kv_len); queries must be a window of the keys."""
    if not _is_int(q_offset):
        raise TypeError(f"q_offset must be an int, got {type(q_offset).__name__}")
    if q_offset < 0 or q_offset > layout.seq_len:
        raise ValueError(f"q_offset must be in [0, seq_len={layout.seq_len}], got {q_offset}")
    if q_len is None:
        q_len = layout.seq_len - q_offset
    if not _is_int(q_len):
        raise TypeError(f"q_len must be an int or None, got {type(q_len).__name__}")
    if q_len < 0 or q_offset + q_len > layout.seq_len:
        raise ValueError(
            f"q_len must be in [0, seq_len - q_offset = {layout.seq_len - q_offset}], got {q_len} "
            "(extend the layout with VisualLayout.append_text for new tokens)"
        )
    if kv_len is None:
        kv_len = layout.seq_len
    if not _is_int(kv_len):
        raise TypeError(f"kv_len must be an int or None, got {type(kv_len).__name__}")
    if kv_len < q_offset + q_len:
        raise ValueError(f"kv_len must be >= q_offset + q_len = {q_offset + q_len}, got {kv_len}")
    return int(q_offset), int(q_len), int(kv_len)


def chebyshev_mask(
    layout: VisualLayout,
    config: C2RoPEConfig,
    dtype: torch.dtype = torch.bool,
    q_offset: int = 0,
    q_len: Optional[int] = None,
) -> torch.Tensor:
    """Dense mask [B, 1, q_len, S] for query rows q_offset ... q_offset+q_len-1.

    dtype=torch.bool gives True = may attend (SDPA's convention); float32, float16 or
    bfloat16 give HF's additive mask (0 or torch.finfo(dtype).min). q_len defaults to
    the rest of the sequence, so decoding one token is q_offset=S-1, q_len=1.
    """
    _check_layout_config(layout, config)
    if not isinstance(dtype, torch.dtype):  # which dtypes: the op's check
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    q_offset, q_len, _ = _check_window(layout, q_offset, q_len)
    return torch.ops.c2rope.chebyshev_mask(
        layout.valid, layout.image_id, layout.ring, q_offset, q_len, config.mask_mode, dtype
    )


def chebyshev_mask_mod(layout: VisualLayout, config: C2RoPEConfig, q_offset: int = 0) -> Callable:
    """A FlexAttention mask_mod(b, h, q_idx, kv_idx) -> bool for this layout.

    q_idx counts from q_offset (the absolute position of query 0), kv_idx from 0. The
    signature is the one of transformers.masking_utils, so the function composes with
    its and_masks / or_masks (HF passes absolute positions: keep q_offset=0 there).
    Indices outside the layout (block padding, a longer static cache) are masked out.
    """
    _check_layout_config(layout, config)
    q_offset, _, _ = _check_window(layout, q_offset, 0)
    valid, image_id, ring = layout.valid, layout.image_id, layout.ring
    last = max(layout.seq_len - 1, 0)
    mode = config.mask

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + q_offset
        in_range = (kv_idx < layout.seq_len) & (i < layout.seq_len)
        # Clamped copies keep every gather in bounds; in_range discards their result.
        i_c, j_c = i.clamp(0, last), kv_idx.clamp(0, last)
        q_valid, k_valid = valid[b, i_c], valid[b, j_c]
        q_image, k_image = image_id[b, i_c], image_id[b, j_c]
        causal = kv_idx <= i
        if mode == "outward":
            inside = ring[b, j_c] <= ring[b, i_c]
        elif mode == "inward":
            inside = ring[b, j_c] >= ring[b, i_c]
        else:
            inside = causal
        same_image = (q_image >= 0) & (k_image == q_image)
        allowed = k_valid & torch.where(same_image, inside, causal)
        return in_range & torch.where(q_valid, allowed, kv_idx == i)

    return mask_mod


def _dense_to_ordered(blocks: torch.Tensor):
    """(num_blocks [.., nq], indices [.., nq, nk]) of a 0/1 block map, the form
    BlockMask.from_kv_blocks takes: the selected kv blocks first, in order."""
    blocks = blocks.to(torch.int32)
    order = torch.argsort(blocks, dim=-1, descending=True, stable=True)
    return blocks.sum(dim=-1, dtype=torch.int32), order.to(torch.int32)


def chebyshev_block_mask(
    layout: VisualLayout,
    config: C2RoPEConfig,
    q_len: Optional[int] = None,
    kv_len: Optional[int] = None,
    q_offset: int = 0,
    block_size: int = 128,
    *,
    and_mods: Sequence[Callable] = (),
):
    """A FlexAttention BlockMask for the layout (heads broadcast).

    Blocks are classified (empty / partial / full) from the C kernel's mask computed a
    slab of query rows at a time, so memory stays at about 32 MiB whatever the length
    and the full q_len x kv_len mask is never held. Full blocks skip the mask_mod.
    kv_len may exceed the layout (a static cache): the extra keys are masked out.

    `and_mods`: further mask_mods (b, h, q_idx, kv_idx) -> bool, q_idx counted from
    q_offset as for `chebyshev_mask_mod`, ANDed with the Chebyshev rule (a packed row's
    same-sample rule, a sliding window). They must broadcast over index tensors; each
    is evaluated on the same slabs, so the whole mask still never exists at once.
    """
    from torch.nn.attention.flex_attention import BlockMask, and_masks

    _check_layout_config(layout, config)
    q_offset, q_len, kv_len = _check_window(layout, q_offset, q_len, kv_len)
    if not _is_int(block_size):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")

    batch, seq = layout.batch_size, layout.seq_len
    valid, image_id, ring = layout.valid, layout.image_id, layout.ring
    if kv_len != seq:  # pad (as padding) or cut the keys to kv_len
        extra = kv_len - seq
        if extra > 0:
            valid = torch.nn.functional.pad(valid, (0, extra), value=False)
            image_id = torch.nn.functional.pad(image_id, (0, extra), value=-1)
            ring = torch.nn.functional.pad(ring, (0, extra), value=-1)
        else:
            valid, image_id, ring = valid[:, :kv_len], image_id[:, :kv_len], ring[:, :kv_len]

    n_qb = -(-q_len // block_size)
    n_kb = -(-kv_len // block_size)
    kv_padded = n_kb * block_size
    # Per block: any key allowed / all keys allowed. bool reductions, because a sum would
    # first promote the whole slab to int64 (8x its size).
    any_allowed = torch.zeros(batch, n_qb, n_kb, dtype=torch.bool, device=layout.device)
    all_allowed = torch.zeros(batch, n_qb, n_kb, dtype=torch.bool, device=layout.device)
    rows_per_chunk = max(1, _BLOCK_MASK_CHUNK_BYTES // max(1, batch * kv_padded * block_size)) * block_size
    for q0 in range(0, q_len, rows_per_chunk):
        rows = min(rows_per_chunk, q_len - q0)
        dense = torch.ops.c2rope.chebyshev_mask(
            valid.contiguous(), image_id.contiguous(), ring.contiguous(), q_offset + q0, rows,
            config.mask_mode, torch.bool,
        )[:, 0]
        if and_mods:
            b_idx = torch.arange(batch, device=dense.device).view(batch, 1, 1)
            q_idx = torch.arange(q0, q0 + rows, device=dense.device).view(1, rows, 1)
            kv_idx = torch.arange(kv_len, device=dense.device).view(1, 1, kv_len)
            for mod in and_mods:
                dense = dense & mod(b_idx, None, q_idx, kv_idx)
        n_blocks = -(-rows // block_size)
        # Pad to whole blocks with False, as create_block_mask does: edge blocks are partial.
        dense = torch.nn.functional.pad(dense, (0, kv_padded - kv_len, 0, n_blocks * block_size - rows))
        blocks = dense.view(batch, n_blocks, block_size, n_kb, block_size)
        qb0 = q0 // block_size
        any_allowed[:, qb0 : qb0 + n_blocks] = blocks.any(dim=4).any(dim=2)
        all_allowed[:, qb0 : qb0 + n_blocks] = blocks.all(dim=4).all(dim=2)

    full = all_allowed
    partial = any_allowed & ~full
    kv_num, kv_idx = _dense_to_ordered(partial.unsqueeze(1))
    full_num, full_idx = _dense_to_ordered(full.unsqueeze(1))
    mask_mod = chebyshev_mask_mod(layout, config, q_offset)
    if and_mods:
        mask_mod = and_masks(mask_mod, *and_mods)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx,
        BLOCK_SIZE=(block_size, block_size),
        mask_mod=mask_mod,
        seq_lengths=(q_len, kv_len),
    )
