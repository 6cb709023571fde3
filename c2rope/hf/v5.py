"""Patchers for transformers 5.x: Llama, Mistral, Qwen2 (and any decoder built the
same way) and LLaVA (`LlavaForConditionalGeneration`, any of those as language model).

How a 5.x decoder is changed, per instance (nothing in transformers' modules is
touched, so unpatched models are unaffected):
- `decoder.rotary_emb` (called once per forward, its cos/sin passed to every layer) is
  replaced by `C2RotaryAdapter`: a c2rope `C2RotaryEmbedding.from_hf(original)` (same
  inv_freq and attention_scaling, so rope scaling carries over) that rotates by the
  triplet positions of the current call, or by HF's own position_ids on text.
- each attention module runs its class's forward with the module-level name
  `apply_rotary_pos_emb` bound to c2rope's fused kernel (`rebind_globals`).
- `decoder.forward` is wrapped: it works out the image spans (input_ids, an explicit
  `visual_layout=`, or what the KV cache recorded on earlier steps), hands the
  positions to the adapter and, with images and a non-causal mask mode, passes the
  Chebyshev mask as a prepared 4-D mask (eager/sdpa) or BlockMask (flex_attention),
  which transformers' mask creation returns untouched.
- the top-level `forward` is wrapped to see `input_ids` before LLaVA turns them into
  embeddings, and to accept `visual_layout=`.
Text-only calls leave positions and masks exactly as HF computes them.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .calls import parameter_names, to_kwargs, top_forward
from .record import PatchRecord, bind_forward_with_globals
from .registry import register_patcher
from .state import C2RoPEState, additive, block_mask, dense_mask

_ROTARY_GLOBAL = "apply_rotary_pos_emb"


class C2RotaryAdapter(nn.Module):
    """Stands in for a decoder's `rotary_emb`: returns C2RoPE cos/sin.

    `pending` holds the triplet positions [B, q, 3] of the running call when the
    sequence has images; otherwise HF's own 2-D position_ids are used (plain RoPE, the
    same numbers as the original module). The original module stays a child
    (`original`) so it follows `.to()` and comes back unchanged on unpatch."""

    def __init__(self, original: nn.Module, rope: nn.Module, text_spatial: str):
        super().__init__()
        self.original = original
        self.rope = rope
        self.text_zero = text_spatial == "zero"
        self.pending: Optional[torch.Tensor] = None

    def forward(self, x, position_ids=None, *args, **kwargs):
        positions = self.pending
        if positions is None:
            positions = position_ids
            if self.text_zero:
                # text_spatial="zero": text is (m, 0, 0), not plain RoPE.
                m = position_ids.to(torch.float32)
                positions = torch.stack([m, torch.zeros_like(m), torch.zeros_like(m)], dim=-1)
        return self.rope(x, positions)


def find_decoder(model: nn.Module) -> nn.Module:
    """The module holding `rotary_emb` and the decoder `layers` (LlamaModel & co)."""
    found = [
        m for m in model.modules()
        if isinstance(getattr(m, "rotary_emb", None), nn.Module) and isinstance(getattr(m, "layers", None), nn.ModuleList)
    ]
    if len(found) != 1:
        raise TypeError(
            f"c2rope: expected one decoder with `rotary_emb` and `layers` in {type(model).__name__}, "
            f"found {len(found)}"
        )
    return found[0]


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


def _mask_for(state: C2RoPEState, plan, decoder, cache, q_len: int, dtype: torch.dtype):
    implementation = decoder.config._attn_implementation
    state.check_implementation(implementation)
    kv_len = plan.total_len
    if cache is not None and hasattr(cache, "get_mask_sizes"):
        kv_len, kv_offset = cache.get_mask_sizes(q_len, 0)
        if kv_offset:
            raise NotImplementedError("c2rope: sliding-window KV caches (kv_offset > 0) are not supported with images")
    all_window, typed_window = _sliding(decoder.config)

    def build(window):
        if implementation == "flex_attention":
            return block_mask(state, plan, q_len, kv_len, window)
        mask = dense_mask(state, plan, q_len, kv_len, window)
        return additive(mask, dtype) if implementation == "eager" else mask

    if typed_window is not None:
        return {"full_attention": build(None), "sliding_attention": build(typed_window)}
    return build(all_window)


def _decoder_forward(original: Callable, decoder: nn.Module, state: C2RoPEState, adapter: C2RotaryAdapter):
    names = parameter_names(original)

    def forward(*args, **kwargs):
        bound = to_kwargs(names, args, kwargs)
        input_ids, embeds = bound.get("input_ids"), bound.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        if reference is None:
            return original(**bound)
        batch, q_len = reference.shape[:2]
        cache = bound.get("past_key_values")
        ids = input_ids if input_ids is not None else state.pending_ids
        plan = _plan(state, ids, bound.get("attention_mask"), cache, batch, q_len, reference.device)
        if state.needs_mask(plan):
            dtype = embeds.dtype if embeds is not None else decoder.get_input_embeddings().weight.dtype
            bound["attention_mask"] = _mask_for(state, plan, decoder, cache, q_len, dtype)
        adapter.pending = plan.positions
        try:
            out = original(**bound)
        finally:
            adapter.pending = None
        new_cache = getattr(out, "past_key_values", None)
        state.store(new_cache if new_cache is not None else cache, plan.spans, plan.total_len)
        return out

    return forward


@torch.compiler.disable
def _plan(state, ids, attention_mask, cache, batch, q_len, device):
    # Data-dependent Python (span search, layout building): kept out of compiled graphs.
    return state.plan(input_ids=ids, attention_mask=attention_mask, cache=cache, batch=batch, q_len=q_len,
                      device=device)


def patch_decoder(model: nn.Module, record: PatchRecord, state: C2RoPEState) -> None:
    from ..rotary import C2RotaryEmbedding

    decoder = find_decoder(model)
    attentions = [layer.self_attn for layer in decoder.layers]
    for attention in attentions:
        code = getattr(type(attention).forward, "__code__", None)
        if code is None or _ROTARY_GLOBAL not in code.co_names:
            raise TypeError(
                f"c2rope: {type(attention).__name__}.forward does not call {_ROTARY_GLOBAL}; this "
                "model family is not supported by the generic decoder patcher"
            )
    from .. import rotary as c2rope_rotary

    original_rotary = decoder.rotary_emb
    rope = C2RotaryEmbedding.from_hf(original_rotary, state.config)
    adapter = C2RotaryAdapter(original_rotary, rope, state.config.text_spatial)
    record.set_attr(decoder, "rotary_emb", adapter)
    for attention in attentions:
        bind_forward_with_globals(record, attention, {_ROTARY_GLOBAL: c2rope_rotary.apply_rotary_pos_emb})
    record.wrap_forward(decoder, lambda original: _decoder_forward(original, decoder, state, adapter))
    record.wrap_forward(model, lambda original: top_forward(original, state))


@register_patcher("llama", "mistral", "qwen2")
def _patch_causal_lm(model, record, state):
    patch_decoder(model, record, state)


@register_patcher("llava")
def _patch_llava(model, record, state):
    config = model.config
    if state.image_token_id is None:
        state.image_token_id = getattr(config, "image_token_id", None)
        if state.image_token_id is None:
            state.image_token_id = getattr(config, "image_token_index", None)
    if state.grid is None:
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        state.grid = (side, side)
    patch_decoder(model, record, state)
