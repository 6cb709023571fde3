"""Per-model runtime state of a patch, and the per-call plan it computes: which image
spans the sequence holds (from input_ids, an explicit VisualLayout, or the KV cache of
earlier steps), the triplet positions of the current chunk and the attention mask.

Shared by the transformers 5.x (v5.py) and 4.37 (v4.py) patchers, which differ only
in how they hand positions and masks to the model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

import torch

from ..config import C2RoPEConfig

Spans = Tuple[Tuple[Tuple[int, int, int], ...], ...]

# Attention implementations that accept an arbitrary mask without a dense Q x K tensor
# problem: eager/sdpa take the dense [B, 1, Q, K] mask, flex_attention a BlockMask.
MASKABLE_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
_CACHE_ATTR = "_c2rope_spans"


@dataclasses.dataclass
class CallPlan:
    spans: Spans  # image spans of the whole sequence (cache + this chunk), absolute
    total_len: int  # past + q
    positions: Optional[torch.Tensor] = None  # float32 [B, q, 3]; None = text only
    layout: Any = None  # VisualLayout of the whole sequence when it holds images


def past_length(cache) -> int:
    """Tokens already in a KV cache: transformers Cache objects or legacy tuples."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and len(cache) and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


class C2RoPEState:
    """What a patched model remembers between calls (one per patched model)."""

    def __init__(self, config: C2RoPEConfig, image_token_id: Optional[int], grid, family: str):
        self.config = config
        self.image_token_id = image_token_id
        self.grid = grid
        self.family = family
        # Set by the top-level forward for the duration of one call: the raw input_ids
        # (LLaVA turns them into embeddings before the decoder runs) and an explicit
        # layout passed as `visual_layout=`.
        self.pending_ids: Optional[torch.Tensor] = None
        self.pending_layout = None
        # Legacy LLaVA: spans recorded where image features are spliced into the
        # embeddings, consumed by the next prefill.
        self.pending_spans: Optional[Tuple[Spans, int]] = None
        # Spans of the last call, for caches that cannot carry an attribute (tuples).
        self.last: Optional[Tuple[Spans, int]] = None

    # ------------------------------------------------------------ spans

    def chunk_spans(self, input_ids, attention_mask, batch: int, q_len: int) -> Optional[Spans]:
        """Image spans inside the current chunk (offsets relative to its first token),
        or None when nothing tells (embeddings without ids or layout)."""
        from ..layout import VisualLayout

        if self.pending_layout is not None:
            layout = self.pending_layout
            if not isinstance(layout, VisualLayout):
                raise TypeError(f"visual_layout must be a c2rope.VisualLayout, got {type(layout).__name__}")
            if layout.batch_size != batch:
                raise ValueError(f"visual_layout has batch {layout.batch_size}, the input has {batch}")
            if layout.seq_len == q_len:
                return layout.spans
            return None  # a prompt layout forwarded again on decode steps: the cache knows
        if self.pending_spans is not None:
            spans, length = self.pending_spans
            self.pending_spans = None
            if length != q_len or len(spans) != batch:
                raise RuntimeError(
                    f"c2rope: the recorded image splice ({len(spans)} rows x {length} tokens) does not "
                    f"match the decoder input ({batch} x {q_len})"
                )
            return spans
        if input_ids is not None and self.image_token_id is not None:
            if input_ids.dim() != 2 or tuple(input_ids.shape) != (batch, q_len):
                return None
            if not bool((input_ids == self.image_token_id).any()):
                return tuple(() for _ in range(batch))  # decode steps: no image to look for
            mask = attention_mask
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                mask = mask[:, -q_len:]
            else:
                mask = None
            layout = VisualLayout.from_input_ids(input_ids, self.image_token_id, self.grid, attention_mask=mask)
            return layout.spans
        return None

    def cached_spans(self, cache, past: int, batch: int) -> List[list]:
        """Spans of the `past` tokens already in the cache (empty rows when unknown)."""
        if past == 0:
            return [[] for _ in range(batch)]
        record = getattr(cache, _CACHE_ATTR, None) if cache is not None else None
        if record is None and self.last is not None and self.last[1] >= past:
            record = self.last
        if record is None or len(record[0]) != batch:
            return [[] for _ in range(batch)]
        spans, _ = record
        # A cropped cache (assisted decoding) keeps only the images it still holds whole.
        return [[s for s in row if s[0] + s[1] * s[2] <= past] for row in spans]

    def store(self, cache, spans: Spans, total_len: int) -> None:
        self.last = (spans, total_len)
        if cache is not None and not isinstance(cache, (tuple, list)):
            try:
                setattr(cache, _CACHE_ATTR, (spans, total_len))
            except (AttributeError, TypeError):  # slotted / frozen cache classes
                pass

    # ------------------------------------------------------------ plan

    def plan(
        self,
        *,
        input_ids,
        attention_mask,
        cache,
        batch: int,
        q_len: int,
        device: torch.device,
    ) -> CallPlan:
        """Spans and positions for one decoder call (positions None when no image)."""
        past = past_length(cache)
        chunk = self.chunk_spans(input_ids, attention_mask, batch, q_len)
        spans = self.cached_spans(cache, past, batch)
        if chunk is not None:
            for row, new in zip(spans, chunk):
                row.extend((start + past, h, w) for start, h, w in new)
        spans = tuple(tuple(row) for row in spans)
        plan = CallPlan(spans=spans, total_len=past + q_len)
        if not any(spans):
            return plan
        if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
            raise ValueError(
                "c2rope: with images in the sequence the patched model needs the 2-D padding "
                "attention_mask [batch, past + new tokens] (or None), not a prepared 4-D mask; "
                "static/compileable caches in generate() prepare 4-D masks and are not supported"
            )
        layout = self.layout(spans, past + q_len, attention_mask, device)
        from ..positions import build_position_ids

        plan.positions = build_position_ids(layout, self.config)[:, past:]
        plan.layout = layout
        return plan

    def layout(self, spans: Spans, total_len: int, attention_mask, device):
        from ..layout import VisualLayout

        mask = None
        if attention_mask is not None:
            if attention_mask.shape[1] < total_len:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} tokens but the cache plus the "
                    f"input hold {total_len}"
                )
            mask = attention_mask[:, :total_len].to(device)
        return VisualLayout.from_spans([list(r) for r in spans], total_len, attention_mask=mask, device=device)

    def needs_mask(self, plan: CallPlan) -> bool:
        return plan.positions is not None and self.config.mask != "causal"

    def check_implementation(self, implementation: str) -> None:
        if implementation not in MASKABLE_IMPLEMENTATIONS:
            raise ValueError(
                f"c2rope: attn_implementation={implementation!r} cannot take the Chebyshev image "
                f"mask of C2RoPEConfig(mask={self.config.mask!r}); it works with "
                f"{', '.join(repr(i) for i in MASKABLE_IMPLEMENTATIONS)} (e.g. "
                "model.set_attn_implementation('sdpa')), or use C2RoPEConfig(mask='causal'), which "
                "keeps the model's own causal mask and works with every implementation"
            )


def dense_mask(state: C2RoPEState, plan: CallPlan, q_len: int, kv_len: int,
               sliding_window: Optional[int] = None) -> torch.Tensor:
    """Boolean [B, 1, q, kv] Chebyshev mask of the current chunk (True = attend), with
    keys beyond the valid length (static caches) masked and an optional sliding window."""
    from ..mask import chebyshev_mask

    layout = plan.layout
    past = plan.total_len - q_len
    if kv_len > layout.seq_len:
        layout = layout.append_text(
            kv_len - layout.seq_len,
            torch.zeros(layout.batch_size, kv_len - layout.seq_len, dtype=torch.bool, device=layout.device),
        )
    mask = chebyshev_mask(layout, state.config, dtype=torch.bool, q_offset=past, q_len=q_len)
    if sliding_window is not None:
        q_idx = torch.arange(past, past + q_len, device=mask.device)[:, None]
        kv_idx = torch.arange(kv_len, device=mask.device)[None, :]
        mask = mask & (kv_idx > q_idx - sliding_window)
    return mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> HF's additive float mask (0 / finfo.min)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def block_mask(state: C2RoPEState, plan: CallPlan, q_len: int, kv_len: int,
               sliding_window: Optional[int] = None):
    """FlexAttention BlockMask of the current chunk (never a dense Q x K tensor)."""
    from ..mask import chebyshev_block_mask, chebyshev_mask_mod

    layout = plan.layout
    past = plan.total_len - q_len
    if kv_len > layout.seq_len:
        layout = layout.append_text(
            kv_len - layout.seq_len,
            torch.zeros(layout.batch_size, kv_len - layout.seq_len, dtype=torch.bool, device=layout.device),
        )
    if sliding_window is None:
        return chebyshev_block_mask(layout, state.config, q_len=q_len, kv_len=kv_len, q_offset=past)
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    window = int(sliding_window)

    def in_window(b, h, q_idx, kv_idx):
        return kv_idx > q_idx + past - window

    mask_mod = and_masks(chebyshev_mask_mod(layout, state.config, q_offset=past), in_window)
    return create_block_mask(mask_mod, layout.batch_size, None, q_len, kv_len, device=layout.device)

