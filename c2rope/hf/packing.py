"""Packed (padding-free) rows: several samples concatenated in one batch row, as
`DataCollatorWithFlattening` builds them (position_ids restart for each sample, no
attention_mask), or with explicit `cu_seq_lens_q`-style boundaries.

Every sample is its own sequence: its triplet positions restart (computed exactly as if
the sample ran alone), and the mask is block-diagonal by sample with the Chebyshev rule
inside each image (a BlockMask for flex_attention: document mask x Chebyshev mask,
never S x S).

Everything here is O(S) in time and memory: one sample id per token, found from the
boundaries with one bucketize / cumsum, never a samples x longest-sample tensor.
"""
from __future__ import annotations

from typing import Optional

import torch


def _check_cu_seq_lens(value, name: str, q_len: int) -> torch.Tensor:
    """The cumulative sample lengths `value`, validated: a 1-D integer tensor from 0 to
    the packed length, never decreasing."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor of cumulative sample lengths, "
                        f"got {type(value).__name__}")
    if value.dim() != 1 or value.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of cumulative sample lengths [0, ..., {q_len}] with at least "
                         f"2 entries, got shape {tuple(value.shape)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (int32 / int64 cumulative lengths), got {value.dtype}")
    values = value.detach().to("cpu", torch.int64)
    if int(values[0]) != 0 or int(values[-1]) != q_len:
        raise ValueError(f"{name} must run from 0 to the packed length {q_len}, got {int(values[0])} ... "
                         f"{int(values[-1])}")
    steps = values[1:] - values[:-1]
    if bool((steps < 0).any()):
        at = int((steps < 0).nonzero()[0])
        raise ValueError(f"{name} must never decrease (cumulative sample lengths), but goes from "
                         f"{int(values[at])} to {int(values[at + 1])} at index {at + 1}")
    return values


def _restarts(position_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, q - 1]: a new sample starts at token i + 1 (its position does not continue
    the previous one by +1; transformers' `find_packed_sequence_indices` rule)."""
    return position_ids[:, 1:] != position_ids[:, :-1] + 1


def _ids_from_restarts(restarts: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(restarts[:, :1]), restarts], dim=1).to(torch.int64).cumsum(dim=1)


def sample_ids(position_ids, cu_seq_lens, attention_mask, batch: int, q_len: int, device,
               cu_seq_lens_k=None) -> Optional[torch.Tensor]:
    """int64 [B, q]: the sample each token belongs to, or None for ordinary rows.

    A row is packed when `cu_seq_lens` (= cu_seq_lens_q, cumulative sample lengths,
    batch 1) is given, or when its 2-D integer position_ids do not continue by +1
    somewhere and no token is padding. Given boundaries are validated (ValueError /
    TypeError naming the argument): integer, from 0 to the packed length, never
    decreasing; cu_seq_lens_k equal to cu_seq_lens_q (no cache); position_ids, when
    given too, restarting exactly at those boundaries."""
    if cu_seq_lens is None and cu_seq_lens_k is not None:
        raise ValueError("cu_seq_lens_k was given without cu_seq_lens_q; pass both (equal for a packed row)")
    if cu_seq_lens is not None:
        cu = _check_cu_seq_lens(cu_seq_lens, "cu_seq_lens_q", q_len)
        if cu_seq_lens_k is not None:
            cu_k = _check_cu_seq_lens(cu_seq_lens_k, "cu_seq_lens_k", q_len)
            if not torch.equal(cu, cu_k):
                raise ValueError("cu_seq_lens_k must equal cu_seq_lens_q in a packed row without a cache "
                                 f"(got {cu_k.tolist()[:8]}... and {cu.tolist()[:8]}...)")
        if batch != 1:
            raise ValueError(f"cu_seq_lens_q describes one packed row, but the input has batch {batch}")
        index = torch.arange(q_len)
        ids = torch.bucketize(index, cu[1:], right=True).view(1, q_len)
        if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2 \
                and tuple(position_ids.shape) == (1, q_len) and not position_ids.is_floating_point():
            given = _restarts(position_ids.detach().cpu())
            expected = ids[:, 1:] != ids[:, :-1]
            if not torch.equal(given, expected):
                at = int((given != expected).nonzero()[0, 1]) + 1
                raise ValueError(
                    f"cu_seq_lens_q and position_ids disagree on where samples start (first at token {at}): "
                    "position_ids must restart exactly at the cu_seq_lens_q boundaries (or pass only one of them)"
                )
        return ids.to(device)
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or q_len < 2:
        return None
    if position_ids.is_floating_point() or tuple(position_ids.shape) not in ((batch, q_len), (1, q_len)):
        return None
    if isinstance(attention_mask, torch.Tensor) and not bool(attention_mask.bool().all()):
        return None  # padded rows: position_ids follow the padding, not samples
    restarts = _restarts(position_ids)
    if not bool(restarts.any()):
        return None
    return _ids_from_restarts(restarts).expand(batch, q_len).to(device)


def sample_starts(samples: torch.Tensor) -> torch.Tensor:
    """int64 [B, S]: the index of the first token of each token's sample (O(S))."""
    batch, seq = samples.shape
    index = torch.arange(seq, device=samples.device).expand(batch, seq)
    first = torch.ones_like(samples, dtype=torch.bool)
    first[:, 1:] = samples[:, 1:] != samples[:, :-1]
    return torch.where(first, index, torch.zeros_like(index)).cummax(dim=1).values


def sample_lengths(samples: torch.Tensor):
    """Per row, the lengths of its samples in order (Python ints)."""
    out = []
    for row in samples.detach().cpu():
        first = torch.ones_like(row, dtype=torch.bool)
        first[1:] = row[1:] != row[:-1]
        starts = first.nonzero().flatten()
        ends = torch.cat([starts[1:], torch.tensor([row.numel()])])
        out.append((ends - starts).tolist())
    return out


def check_spans_inside_samples(spans, samples: torch.Tensor) -> None:
    for b, row in enumerate(spans):
        for span in row:
            start, h, w = span[:3]
            first, last = int(samples[b, start]), int(samples[b, start + h * w - 1])
            if first != last:
                raise ValueError(f"c2rope: the image at {start} ({h}x{w}) of row {b} crosses a packed sample "
                                 "boundary")


def packed_positions(layout, samples: torch.Tensor, config) -> torch.Tensor:
    """float32 [B, q, 3]: every sample's positions as if it ran alone (the layout is the
    whole packed row's; m restarts at every sample)."""
    from ..positions import build_position_ids

    return build_position_ids(layout, config, sample_starts=sample_starts(samples.to(layout.device)))


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
