"""Packed (padding-free) rows on the Qwen-VL family (C2RoPE and Circle-RoPE).

A packed row holds several samples back to back. Its boundaries come from, in the
forms transformers and trainers use:

- 2-D `position_ids` [B, S] restarting at each sample (`DataCollatorWithFlattening`);
- transformers' own 4-row form [4, B, S]: a text row restarting at each sample, then
  the (t, h, w) rows (what its generate() and its FlashAttention packing read);
- `cu_seq_lens_q` / `cu_seq_lens_k` (batch 1), validated by `packing.sample_ids`.

The patched inner model places every sample's images and frames itself, as that
sample alone would get them (the (t, h, w) rows handed in are replaced: they were
either text positions or another scheme's), and hands the text model the 4-row form:
the text row restarting at 0 per sample (FlashAttention's boundaries) and the new
rows. eager / sdpa / flex_attention then get a block-diagonal mask (samples never see
each other); FlashAttention separates samples itself from that text row or the
cu_seq_lens. Everything here is O(S); only eager/sdpa's dense mask is S x S by nature.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import packing


def text_row(position_ids) -> Optional[torch.Tensor]:
    """The [B, S] text positions in `position_ids` (2-D, or row 0 of the 4-row form)."""
    if not isinstance(position_ids, torch.Tensor):
        return None
    if position_ids.dim() == 2:
        return position_ids
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[0]
    return None


def packed_samples(arguments: dict, batch: int, q_len: int, device) -> Optional[torch.Tensor]:
    """int64 [B, S] sample ids of a packed call (None: not packed); ValueError for
    boundaries that are malformed or disagree with each other."""
    mask = arguments.get("attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    return packing.sample_ids(text_row(arguments.get("position_ids")), arguments.get("cu_seq_lens_q"), mask,
                              batch, q_len, device, arguments.get("cu_seq_lens_k"))


def refuse_unplaceable(arguments: dict) -> None:
    """A packed call with grids but neither input_ids nor mm_token_type_ids: nothing
    says where its images lie, so its samples cannot be placed; refuse rather than let
    transformers run them as one sequence."""
    grids = arguments.get("image_grid_thw") is not None or arguments.get("video_grid_thw") is not None
    if not grids:
        return
    embeds = arguments.get("inputs_embeds")
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3:
        return
    if packed_samples(arguments, embeds.shape[0], embeds.shape[1], embeds.device) is not None:
        raise ValueError("c2rope: a packed row with images given as inputs_embeds needs mm_token_type_ids (or "
                         "input_ids) to place each sample's images")


def check_packed(spans, samples: torch.Tensor, past: int) -> None:
    """Refuse what a packed row cannot be exact for: a KV cache before it, an image,
    frame or video that crosses a sample boundary."""
    if past:
        raise ValueError("c2rope: packed rows (position_ids restarting inside a row, or cu_seq_lens_q) cannot be "
                         "combined with a KV cache")
    packing.check_spans_inside_samples(spans, samples)
    for b, row in enumerate(spans):
        sample_of_video = {}
        for span in row:
            video = getattr(span, "video", None)
            if video is None:
                continue
            sample = int(samples[b, span.start])
            if sample_of_video.setdefault(video, sample) != sample:
                raise ValueError(f"c2rope: the frames of video {video} in row {b} lie in different packed samples")


def four_rows(samples: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[4, B, S]: the text row (index within the sample, from 0) above the (t, h, w) rows."""
    starts = packing.sample_starts(samples.to(rows.device))
    index = torch.arange(samples.shape[1], device=rows.device).expand_as(starts)
    return torch.cat([(index - starts).to(rows.dtype).unsqueeze(0), rows], dim=0)


def block_diagonal_mask(samples: torch.Tensor, text_config, cache, dtype, device):
    """The causal, block-diagonal mask of a packed row without c2rope's Chebyshev mask
    (Circle-RoPE), in the form the implementation takes; None where the implementation
    separates samples itself (FlashAttention)."""
    from ....config import C2RoPEConfig
    from ....layout import VisualLayout
    from ...masks import decoder_mask
    from ...state import MASKABLE_IMPLEMENTATIONS, C2RoPEState, CallPlan

    if getattr(text_config, "_attn_implementation", None) not in MASKABLE_IMPLEMENTATIONS:
        return None
    batch, seq = samples.shape
    state = C2RoPEState(C2RoPEConfig(mask="causal"), None, None, "qwen")
    plan = CallPlan(spans=tuple(() for _ in range(batch)), total_len=seq, samples=samples.to(device),
                    layout=VisualLayout.from_spans([[] for _ in range(batch)], seq, device=device))
    return decoder_mask(state, plan, text_config, cache, seq, dtype, device)


__all__ = ["block_diagonal_mask", "check_packed", "refuse_unplaceable", "four_rows", "packed_samples", "text_row"]
