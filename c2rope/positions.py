"""Triplet positions (m, x, y) of docs/design.md §3, vectorised over the batch."""
from __future__ import annotations

import torch

from .config import C2RoPEConfig
from .layout import VisualLayout

__all__ = ["build_position_ids", "next_temporal_index"]


def _check(layout, config) -> None:
    if not isinstance(layout, VisualLayout):
        raise TypeError(f"layout must be a c2rope.VisualLayout, got {type(layout).__name__}")
    if not isinstance(config, C2RoPEConfig):
        raise TypeError(f"config must be a c2rope.C2RoPEConfig, got {type(config).__name__}")


def _is_last_image_token(layout: VisualLayout, is_image: torch.Tensor) -> torch.Tensor:
    """bool [B, S]: the last token of each image (its successor is not in the same image)."""
    same_next = torch.zeros_like(is_image)
    if layout.seq_len > 1:
        same_next[:, :-1] = (layout.image_start[:, 1:] == layout.image_start[:, :-1]) & is_image[:, 1:]
    return is_image & ~same_next


def _shared_half_extent2(layout: VisualLayout, config: C2RoPEConfig) -> torch.Tensor:
    """Twice the largest |coordinate| of each token's image, int64 [B, S] (0 for text):
    max(H-1, W-1) with centred coordinates, 2 * floor(max(H-1, W-1) / 2) merged. The
    image's first (top-left) token holds cx2 = -(W-1) and cy2 = H-1."""
    start = layout.image_start.clamp_min(0)
    width = -torch.gather(layout.cx2, 1, start).to(torch.int64)
    height = torch.gather(layout.cy2, 1, start).to(torch.int64)
    half2 = torch.maximum(width, height)
    if config.coords == "merged":
        half2 = half2 // 2 * 2
    return torch.where(layout.image_id >= 0, half2, torch.zeros_like(half2))


def _temporal_steps(layout: VisualLayout, config: C2RoPEConfig) -> torch.Tensor:
    """How far each token advances the temporal index, int64 [B, S].

    Text and raster image tokens advance it by one; padding by zero. A concentric image
    advances it by its ring count, a shared one by 2 * half + 1 (half = its largest
    |coordinate|), all at its last token, so its earlier tokens share its start index.
    """
    is_image = layout.image_id >= 0
    steps = layout.valid.to(torch.int64)
    if config.temporal == "raster":
        return steps
    if config.temporal == "concentric":
        span = layout.num_rings.to(torch.int64)
    else:
        span = _shared_half_extent2(layout, config) + 1
    is_last = _is_last_image_token(layout, is_image)
    return torch.where(is_image, is_last.to(torch.int64) * span, steps)


def _temporal_index(layout: VisualLayout, config: C2RoPEConfig, sample_starts=None) -> torch.Tensor:
    """m per token, float64 [B, S] (a shared image's m can be a half-integer); padding
    gets 1 as HF fills it. With `sample_starts` (packed rows) m restarts at 0 at every
    sample's first token: the integer count is rebased before anything else reads it,
    so each sample gets bit for bit the numbers it gets alone."""
    steps = _temporal_steps(layout, config)
    start = torch.cumsum(steps, dim=1) - steps  # exclusive: where the token starts
    if sample_starts is not None:
        start = start - torch.gather(start, 1, sample_starts)
    m = start.to(torch.float64)
    is_image = layout.image_id >= 0
    if config.temporal == "concentric":
        # Periphery first: the outermost ring takes the image's first slot.
        m = torch.where(is_image, m + (layout.num_rings - 1 - layout.ring).to(torch.float64), m)
    elif config.temporal == "shared":
        # The image's centre: its coordinates then span [start, start + 2 * half].
        m = torch.where(is_image, m + _shared_half_extent2(layout, config).to(torch.float64) / 2, m)
    return m.masked_fill(~layout.valid, 1.0)


def build_position_ids(layout: VisualLayout, config: C2RoPEConfig, sample_starts=None) -> torch.Tensor:
    """Triplet positions (m, x, y), float32 [B, S, 3], on the layout's device.

    `sample_starts` (int64 [B, S], packed rows): the index of the first token of each
    token's sample; every sample is then placed as if it ran alone (m from 0). Images
    must not cross a sample boundary. O(S) time and memory either way.

    m counts valid tokens from 0. Text is (m, m, m) with text_spatial="temporal",
    (m, 0, 0) with "zero"; an image token is (m, a + x, a + y) resp. (m, x, y) with
    (x, y) its centred (or merged) coordinates and a the mean m of its image. Padding is
    (1, 0, 0). An image starting at temporal index s gets, per `config.temporal`:

    - "raster": m = s + its raster index; the next token gets s + H*W;
    - "concentric": m = s + (R - 1 - ring rank), R rings; the next token gets s + R;
    - "shared": every token m = s + h, h = the largest |x| or |y| of the image
      (max(H-1, W-1)/2 centred, its floor when merged); the next token gets s + 2h + 1
      (max(H, W) centred). With text_spatial="temporal" every component of the image
      then lies in [s, s + 2h], above the text before it and below the text after it.
    """
    _check(layout, config)
    if sample_starts is not None:
        if not isinstance(sample_starts, torch.Tensor) or tuple(sample_starts.shape) != tuple(layout.valid.shape) \
                or sample_starts.dtype != torch.int64:
            raise ValueError(f"sample_starts must be an int64 tensor of shape {tuple(layout.valid.shape)}")
        sample_starts = sample_starts.to(layout.device)
    m = _temporal_index(layout, config, sample_starts)
    is_image = layout.image_id >= 0
    # Doubled centred coordinates are exact integers; "merged" truncates toward zero.
    cx = layout.cx2.to(torch.float64) / 2
    cy = layout.cy2.to(torch.float64) / 2
    if config.coords == "merged":
        cx, cy = torch.trunc(cx), torch.trunc(cy)

    if config.text_spatial == "temporal":
        anchor = _image_mean(layout, m, is_image)
        x = torch.where(is_image, anchor + cx, m)
        y = torch.where(is_image, anchor + cy, m)
    else:
        x = torch.where(is_image, cx, torch.zeros_like(cx))
        y = torch.where(is_image, cy, torch.zeros_like(cy))
    pos = torch.stack([m, x, y], dim=-1)
    pos[..., 1:].masked_fill_(~layout.valid.unsqueeze(-1), 0.0)
    return pos.to(torch.float32)


def _image_mean(layout: VisualLayout, values: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """Per token, the mean of `values` over the token's image (0 for text)."""
    batch, seq = layout.valid.shape
    # One slot per possible image start: b * S + start identifies an image uniquely.
    key = (torch.arange(batch, device=values.device).unsqueeze(1) * seq + layout.image_start.clamp_min(0))
    key = key[is_image]
    sums = torch.zeros(batch * seq, dtype=values.dtype, device=values.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, key, values[is_image])
    counts.index_add_(0, key, torch.ones_like(values[is_image]))
    mean = torch.zeros_like(values)
    mean[is_image] = sums[key] / counts[key]
    return mean


def next_temporal_index(layout: VisualLayout, config: C2RoPEConfig) -> torch.Tensor:
    """The temporal index m the next token of each row gets, int64 [B] (decoding:
    a new text token is then at (m, m, m), or (m, 0, 0) with text_spatial="zero")."""
    _check(layout, config)
    return _temporal_steps(layout, config).sum(dim=1)
