"""Packed (padding-free) rows: several samples concatenated in one batch row, as
`DataCollatorWithFlattening` builds them (position_ids restart for each sample, no
attention_mask), or with explicit `cu_seq_lens_q`-style boundaries.

Every sample is its own sequence: its triplet positions restart (computed exactly as if
the sample ran alone), and the mask is block-diagonal by sample with the Chebyshev rule
inside each image (a BlockMask for flex_attention: document mask x Chebyshev mask,
never S x S).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..config import C2RoPEConfig


def sample_ids(position_ids, cu_seq_lens, attention_mask, batch: int, q_len: int, device) -> Optional[torch.Tensor]:
    """int64 [B, q]: the sample each token belongs to, or None for ordinary rows.

    A row is packed when `cu_seq_lens` (cumulative sample lengths, batch 1) is given, or
    when its position_ids do not continue by +1 somewhere and no token is padding."""
    if cu_seq_lens is not None:
        if not isinstance(cu_seq_lens, torch.Tensor) or cu_seq_lens.dim() != 1:
            raise ValueError("cu_seq_lens_q must be a 1-D tensor of cumulative sample lengths")
        if batch != 1 or int(cu_seq_lens[0]) != 0 or int(cu_seq_lens[-1]) != q_len:
            raise ValueError(f"cu_seq_lens_q must run from 0 to the packed length {q_len} (batch 1)")
        index = torch.arange(q_len, device=cu_seq_lens.device)
        return (torch.bucketize(index, cu_seq_lens[1:].to(index.device), right=True)).view(1, q_len).to(device)
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or q_len < 2:
        return None
    if position_ids.is_floating_point() or tuple(position_ids.shape) not in ((batch, q_len), (1, q_len)):
        return None
    if isinstance(attention_mask, torch.Tensor) and not bool(attention_mask.bool().all()):
        return None  # padded rows: position_ids follow the padding, not samples
    breaks = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(breaks.any()):
        return None
    ids = torch.cat([torch.zeros_like(breaks[:, :1]), breaks], dim=1).to(torch.int64).cumsum(dim=1)
    return ids.expand(batch, q_len).to(device)


def check_spans_inside_samples(spans, samples: torch.Tensor) -> None:
    for b, row in enumerate(spans):
        for start, h, w in row:
            first, last = int(samples[b, start]), int(samples[b, start + h * w - 1])
            if first != last:
                raise ValueError(f"c2rope: the image at {start} ({h}x{w}) of row {b} crosses a packed sample "
                                 "boundary")


def packed_positions(spans, samples: torch.Tensor, config: C2RoPEConfig, device) -> torch.Tensor:
    """float32 [B, q, 3]: every sample's positions as if it ran alone."""
    from ..layout import VisualLayout
    from ..positions import build_position_ids

    batch, q_len = samples.shape
    out = torch.empty(batch, q_len, 3, dtype=torch.float32, device=device)
    for b in range(batch):
        row = samples[b].cpu()
        counts = torch.bincount(row)
        starts = torch.cumsum(counts, 0) - counts
        lengths = counts.tolist()
        longest = max(lengths)
        rows = [[] for _ in lengths]
        for start, h, w in spans[b]:
            s = int(row[start])
            rows[s].append((start - int(starts[s]), h, w))
        valid = torch.arange(longest)[None, :] < counts[:, None]
        layout = VisualLayout.from_spans(rows, longest, attention_mask=valid.to(device), device=device)
        positions = build_position_ids(layout, config)  # [samples, longest, 3]
        out[b] = positions[valid.to(device)]
    return out


def same_sample_dense(samples: torch.Tensor, past: int, q_len: int, kv_len: int) -> torch.Tensor:
    """bool [B, 1, q, kv]: query and key in the same sample."""
    keys = samples[:, :kv_len]
    queries = samples[:, past:past + q_len]
    return (queries[:, None, :, None] == keys[:, None, None, :])


def same_sample_mod(samples: torch.Tensor, past: int):
    """FlexAttention mask_mod: query (absolute past + q_idx) and key in the same sample."""
    last = samples.shape[1] - 1

    def mask_mod(b, h, q_idx, kv_idx):
        return samples[b, (q_idx + past).clamp(0, last)] == samples[b, kv_idx.clamp(0, last)]

    return mask_mod
