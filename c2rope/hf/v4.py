"""Patchers for transformers 4.37.x (the version the original LLaVA code pins): Llama
and LLaVA's `LlavaLlamaForCausalLM` (llava-torch 1.2.2.post1).

4.37 differs from 5.x in where RoPE happens: every attention layer owns a rotary module
that returns [max_seq, d] tables, and `apply_rotary_pos_emb(q, k, cos, sin,
position_ids)` gathers them by `position_ids`, which the decoder passes to every layer
untouched. So, per instance:
- each attention module runs its class's forward with `apply_rotary_pos_emb` bound to a
  c2rope function: for integer position_ids (text) it gathers HF's own tables and
  rotates with the fused kernel (identical numbers); for float [B, q, 3] triplets it
  builds C2RoPE cos/sin (`C2RotaryEmbedding.from_hf` of the layer's rotary module).
- the decoder's forward is wrapped: with images it passes the triplets as position_ids
  and the Chebyshev mask as a 4-D 0/1 mask (4.37 accepts and inverts those).
- LLaVA: `prepare_inputs_labels_for_multimodal` is wrapped to record where the image
  features were spliced into `inputs_embeds` (the ids never reach the decoder).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .calls import parameter_names, to_kwargs, top_forward
from .record import PatchRecord, bind_forward_with_globals
from .registry import register_patcher
from .state import C2RoPEState, dense_mask, past_length

_ROTARY_GLOBAL = "apply_rotary_pos_emb"
LLAVA_IMAGE_TOKEN_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX


def _legacy_rope(rotary_module: nn.Module, config):
    from ..rotary import C2RotaryEmbedding

    name = type(rotary_module).__name__
    if "Dynamic" in name:
        raise NotImplementedError(
            f"c2rope: {name} (dynamic NTK rope scaling) is not supported on transformers 4.37"
        )
    rope = C2RotaryEmbedding.from_hf(rotary_module, config)
    factor = getattr(rotary_module, "scaling_factor", None)
    if "Linear" in name and factor:
        # 4.37 linear scaling divides the positions, not inv_freq: t/s * f == t * (f/s).
        rope.inv_freq = rope.inv_freq / float(factor)
    return rope


def _make_apply(rope: nn.Module, text_zero: bool) -> Callable:
    from ..rotary import apply_rotary_pos_emb as fused

    last = [None, None, None]  # (positions, cos, sin): all layers of a forward share them

    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        if position_ids is not None and (position_ids.dim() == 3 or text_zero):
            positions = position_ids
            if positions.dim() == 2:  # text_spatial="zero" on text: (m, 0, 0)
                m = positions.to(torch.float32)
                positions = torch.stack([m, torch.zeros_like(m), torch.zeros_like(m)], dim=-1)
            if last[0] is not positions or last[1].dtype != q.dtype or last[1].device != q.device:
                last[0] = positions
                last[1], last[2] = rope(q, positions)
            return fused(q, k, last[1], last[2], unsqueeze_dim=unsqueeze_dim)
        return fused(q, k, cos, sin, position_ids, unsqueeze_dim=unsqueeze_dim)

    return apply_rotary_pos_emb


def _find_decoder(model: nn.Module) -> nn.Module:
    found = [
        m for m in model.modules()
        if isinstance(getattr(m, "layers", None), nn.ModuleList) and hasattr(m, "embed_tokens")
    ]
    if len(found) != 1:
        raise TypeError(f"c2rope: expected one decoder with `layers` in {type(model).__name__}, found {len(found)}")
    return found[0]


def _decoder_forward(original: Callable, decoder: nn.Module, state: C2RoPEState):
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
        plan = state.plan(input_ids=ids, attention_mask=bound.get("attention_mask"), cache=cache,
                          batch=batch, q_len=q_len, device=reference.device)
        if plan.positions is not None:
            bound["position_ids"] = plan.positions
            if state.needs_mask(plan):
                state.check_implementation(decoder.config._attn_implementation)
                mask = dense_mask(state, plan, q_len, plan.total_len)
                dtype = embeds.dtype if embeds is not None else decoder.embed_tokens.weight.dtype
                bound["attention_mask"] = mask.to(dtype)  # 4.37 reads 4-D masks as 1 = attend
        out = original(**bound)
        new_cache = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(out, "past_key_values", None)
        state.store(new_cache if new_cache is not None else cache, plan.spans, plan.total_len)
        return out

    return forward


def patch_decoder(model: nn.Module, record: PatchRecord, state: C2RoPEState) -> nn.Module:
    decoder = _find_decoder(model)
    attentions = [layer.self_attn for layer in decoder.layers]
    for attention in attentions:
        if not isinstance(getattr(attention, "rotary_emb", None), nn.Module):
            raise TypeError(f"c2rope: {type(attention).__name__} has no rotary_emb (not a 4.37-style layer)")
        if _ROTARY_GLOBAL not in type(attention).forward.__code__.co_names:
            raise TypeError(f"c2rope: {type(attention).__name__}.forward does not call {_ROTARY_GLOBAL}")
    rope = _legacy_rope(attentions[0].rotary_emb, state.config)
    # A child of the decoder so it follows .to(); its buffers are not persistent, so the
    # state_dict is unchanged.
    record.set_attr(decoder, "c2rope_rotary", rope)
    apply = _make_apply(rope, state.config.text_spatial == "zero")
    for attention in attentions:
        bind_forward_with_globals(record, attention, {_ROTARY_GLOBAL: apply})
    record.wrap_forward(decoder, lambda original: _decoder_forward(original, decoder, state))
    record.wrap_forward(model, lambda original: top_forward(original, state))
    return decoder


# Mistral on 4.37 reshapes position_ids to [-1, seq].long() before the layers, which
# destroys the float triplets this path relies on: not supported on the legacy line.
@register_patcher("llama")
def _patch_causal_lm(model, record, state):
    patch_decoder(model, record, state)


def splice_spans(input_ids, attention_mask, grid, out_len: int, model_config):
    """Image spans of the sequences LLaVA's prepare_inputs_labels_for_multimodal builds:
    per row, padding removed, each IMAGE_TOKEN_INDEX replaced by H*W feature tokens,
    truncated to tokenizer_model_max_length, padded (right, or left) to out_len."""
    from ..layout import VisualLayout

    grids = VisualLayout._parse_grids(grid)  # (H, W) for every image, or a list per image
    next_grid = 0
    max_len = getattr(model_config, "tokenizer_model_max_length", None)
    left = getattr(model_config, "tokenizer_padding_side", "right") == "left"
    spans, lengths = [], []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        if attention_mask is not None:
            ids = ids[attention_mask[b].bool()]
        pos, row = 0, []
        for token in ids.tolist():
            if token == LLAVA_IMAGE_TOKEN_INDEX:
                if isinstance(grids, tuple):
                    h, w = grids
                elif next_grid < len(grids):
                    h, w = grids[next_grid]
                    next_grid += 1
                else:
                    raise ValueError(f"c2rope: grid lists {len(grids)} images but the batch holds more")
                row.append((pos, h, w))
                pos += h * w
            else:
                pos += 1
        length = pos if max_len is None else min(pos, max_len)
        # An image cut by the truncation is no longer a whole grid: its tokens stay text.
        row = [(s, h, w) for s, h, w in row if s + h * w <= length]
        offset = out_len - length if left else 0
        spans.append(tuple((s + offset, h, w) for s, h, w in row))
        lengths.append(length)
    if max(lengths, default=0) != out_len:
        raise ValueError(
            f"c2rope: LLaVA spliced sequences of length {out_len} but grid {grid} predicts "
            f"{max(lengths, default=0)}; pass patch_model(..., grid=(H, W)) matching the number of "
            "image feature tokens (anyres / spatial patch merging is not a single grid)"
        )
    return tuple(spans)


def _splice_wrapper(original: Callable, model: nn.Module, state: C2RoPEState):
    def prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, image_sizes=None):
        result = original(input_ids, position_ids, attention_mask, past_key_values, labels, images,
                          image_sizes=image_sizes)
        embeds = result[4]
        if embeds is not None:  # features were spliced (otherwise LLaVA returned early)
            spans = splice_spans(input_ids, attention_mask, state.grid, embeds.shape[1], model.config)
            state.pending_spans = (spans, embeds.shape[1])
        return result

    return prepare_inputs_labels_for_multimodal


@register_patcher("llava_llama")
def _patch_llava(model, record, state):
    if state.grid is None:
        tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
        side = getattr(tower, "num_patches_per_side", None) if tower is not None else None
        state.grid = (int(side), int(side)) if side else (24, 24)
    patch_decoder(model, record, state)
    original = model.prepare_inputs_labels_for_multimodal
    record.set_attr(model, "prepare_inputs_labels_for_multimodal", _splice_wrapper(original, model, state))


__all__ = ["patch_decoder", "splice_spans", "past_length"]
