"""The attention masks a patched model hands to transformers when a call holds images:
the Chebyshev mask of the current chunk as a dense bool / additive [B, 1, q, kv] tensor
(eager, sdpa; transformers' mask creation returns prepared 4-D masks untouched) or a
FlexAttention BlockMask (flex_attention; never a dense q x kv tensor)."""
from __future__ import annotations

from typing import Optional

import torch

from .introspect import mask_sizes
from .state import C2RoPEState, CallPlan


def _padded_layout(plan: CallPlan, kv_len: int):
    """The plan's layout, extended with masked keys up to kv_len (static caches)."""
    layout = plan.layout
    if kv_len > layout.seq_len:
        extra = kv_len - layout.seq_len
        layout = layout.append_text(
            extra, torch.zeros(layout.batch_size, extra, dtype=torch.bool, device=layout.device)
        )
    return layout


def dense_mask(state: C2RoPEState, plan: CallPlan, q_len: int, kv_len: int,
               sliding_window: Optional[int] = None) -> torch.Tensor:
    """Boolean [B, 1, q, kv] Chebyshev mask of the current chunk (True = attend)."""
    from ..mask import chebyshev_mask

    past = plan.total_len - q_len
    mask = chebyshev_mask(_padded_layout(plan, kv_len), state.config, dtype=torch.bool, q_offset=past, q_len=q_len)
    if sliding_window is not None:
        q_idx = torch.arange(past, past + q_len, device=mask.device)[:, None]
        kv_idx = torch.arange(kv_len, device=mask.device)[None, :]
        mask = mask & (kv_idx > q_idx - sliding_window)
    if plan.samples is not None:
        from .packing import same_sample_dense

        mask = mask & same_sample_dense(plan.samples, past, q_len, kv_len)
    return mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> transformers' additive float mask (0 / finfo.min)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def block_mask(state: C2RoPEState, plan: CallPlan, q_len: int, kv_len: int,
               sliding_window: Optional[int] = None):
    """FlexAttention BlockMask of the current chunk: the Chebyshev rule, and the packed
    row's same-sample rule and the sliding window where they apply, classified a slab
    at a time (never a q x kv tensor, packed or not)."""
    from ..mask import chebyshev_block_mask

    layout = _padded_layout(plan, kv_len)
    past = plan.total_len - q_len
    mods = []
    if sliding_window is not None:
        window = int(sliding_window)

        def in_window(b, h, q_idx, kv_idx):
            return kv_idx > q_idx + past - window

        mods.append(in_window)
    if plan.samples is not None:
        from .packing import same_sample_mod

        mods.append(same_sample_mod(plan.samples, past))
    return chebyshev_block_mask(layout, state.config, q_len=q_len, kv_len=kv_len, q_offset=past, and_mods=mods)


def _sliding(config):
    """(window for every layer, window for 'sliding_attention' layers only)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None:
        return None, None
    if layer_types is None:
        return window, None  # Mistral: every layer slides
    if "sliding_attention" in layer_types:
        return None, window
    return None, None


def decoder_mask(state: C2RoPEState, plan: CallPlan, config, cache, q_len: int, dtype: torch.dtype, device):
    """The mask for a 4.57 / 5.x decoder call: one mask, or {layer type: mask} for
    models that mix full and sliding-window layers (as transformers itself passes)."""
    implementation = config._attn_implementation
    state.check_implementation(implementation)
    if implementation == "flex_attention" and torch.device(device).type == "cpu":
        # Measured (torch 2.13 CPU, transformers 5.24): the compiled flex_attention kernel
        # returned NaN rows for 2 of 3 random inputs with this mask, where the dense mask and
        # uncompiled flex agree with the reference. Refuse rather than return garbage.
        raise ValueError(
            "c2rope: flex_attention with images is not supported on CPU (torch's compiled CPU "
            "flex_attention returned NaN for c2rope's BlockMask on some inputs); use "
            "attn_implementation='sdpa' or 'eager' on CPU, flex_attention on GPUs"
        )
    kv_len, kv_offset = mask_sizes(cache, plan.total_len - q_len, q_len, device)
    if kv_offset:
        raise NotImplementedError("c2rope: sliding-window KV caches (kv_offset > 0) are not supported with images")
    kv_len = max(kv_len, plan.total_len)
    all_window, typed_window = _sliding(config)

    def build(window):
        if implementation == "flex_attention":
            return block_mask(state, plan, q_len, kv_len, window)
        mask = dense_mask(state, plan, q_len, kv_len, window)
        return additive(mask, dtype) if implementation == "eager" else mask

    if typed_window is not None:
        return {"full_attention": build(None), "sliding_attention": build(typed_window)}
    return build(all_window)


def legacy_mask(state: C2RoPEState, plan: CallPlan, config, q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """4.37 reads a 4-D attention_mask as 1 = attend, 0 = masked, and inverts it itself."""
    state.check_implementation(config._attn_implementation)
    return dense_mask(state, plan, q_len, plan.total_len).to(dtype)
