"""Patchers for transformers 4.37.x (the version the original LLaVA code pins): Llama
and LLaVA's `LlavaLlamaForCausalLM` (llava-torch 1.2.2.post1).

4.37 differs from 4.57 / 5.x in where RoPE happens: every attention layer owns a
rotary module that returns [max_seq, d] tables, and `apply_rotary_pos_emb(q, k, cos,
sin, position_ids)` gathers them by `position_ids`. So, per instance:
- each attention layer runs its class's forward with `apply_rotary_pos_emb` bound to
  `pipeline.legacy_apply_rotary_pos_emb`: HF's own gathered tables for text (identical
  numbers), C2RoPE tables of the running call's triplet positions with images;
- forward hooks on the top-level model and the decoder (entry.py, pipeline.py) find
  the images and deliver positions and mask (the Chebyshev mask goes in as a 4-D 0/1
  mask, which 4.37 accepts and inverts);
- LLaVA: `prepare_inputs_labels_for_multimodal` is wrapped to record where the image
  features were spliced into `inputs_embeds` (the ids never reach the decoder); the
  record lives only as long as those embeddings.

It is a family module like the others (patchers registered by model_type), only for
another transformers line: its row in FAMILIES says line="legacy", so it is imported
instead of the 4.57 / 5.x families (it registers "llama" too, patched the 4.37 way).
"""
from __future__ import annotations

from torch import nn

from ..introspect import uses_global
from ..entry import add_entry_points
from ..pipeline import ROTARY_GLOBAL, LegacyDelivery, hook_decoder, legacy_apply_rotary_pos_emb
from ..record import PatchRecord, bind_forward_with_globals
from ..registry import register_patcher
from ..state import C2RoPEState

MODEL_TYPES = ("llama", "llava_llama")
DOCS = "docs/hf.md"
LLAVA_IMAGE_TOKEN_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX


def _legacy_rope(rotary_module: nn.Module, config):
    from ...rotary import C2RotaryEmbedding

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


def _find_decoder(model: nn.Module) -> nn.Module:
    found = [
        m for m in model.modules()
        if isinstance(getattr(m, "layers", None), nn.ModuleList) and hasattr(m, "embed_tokens")
    ]
    if len(found) != 1:
        raise TypeError(f"c2rope: expected one decoder with `layers` in {type(model).__name__}, found {len(found)}")
    return found[0]


def patch_decoder(model: nn.Module, record: PatchRecord, state: C2RoPEState) -> nn.Module:
    decoder = _find_decoder(model)
    attentions = [layer.self_attn for layer in decoder.layers]
    for attention in attentions:
        if not isinstance(getattr(attention, "rotary_emb", None), nn.Module):
            raise TypeError(f"c2rope: {type(attention).__name__} has no rotary_emb (not a 4.37-style layer)")
        if not uses_global(type(attention).forward, ROTARY_GLOBAL):
            raise TypeError(f"c2rope: {type(attention).__name__}.forward does not call {ROTARY_GLOBAL}")
    rope = _legacy_rope(attentions[0].rotary_emb, state.config)
    # A child of the decoder so it follows .to(); its buffers are not persistent, so the
    # state_dict is unchanged (and unpatching removes the child again).
    record.set_attr(decoder, "c2rope_rotary", rope)
    for attention in attentions:
        bind_forward_with_globals(record, attention, {ROTARY_GLOBAL: legacy_apply_rotary_pos_emb})
    add_entry_points(record, model, decoder, state)
    hook_decoder(record, decoder, state, LegacyDelivery(decoder, rope), attentions,
                 f"{type(decoder).__name__} (decoder)")
    record.probe = (decoder, attentions)
    return decoder


@register_patcher("llama")
def _patch_causal_lm(model, record, state):
    patch_decoder(model, record, state)


def splice_spans(input_ids, attention_mask, grid, out_len: int, model_config):
    """Image spans of the sequences LLaVA's prepare_inputs_labels_for_multimodal builds:
    per row, padding removed, each IMAGE_TOKEN_INDEX replaced by H*W feature tokens,
    truncated to tokenizer_model_max_length, padded (right, or left) to out_len."""
    from ...layout import VisualLayout

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


def _record_splice(original, model: nn.Module, state: C2RoPEState, input_ids, position_ids, attention_mask,
                   past_key_values, labels, images, image_sizes=None):
    result = original(input_ids, position_ids, attention_mask, past_key_values, labels, images,
                      image_sizes=image_sizes)
    embeds = result[4]
    if embeds is not None:  # features were spliced (otherwise LLaVA returned early)
        state.record_splice(embeds, splice_spans(input_ids, attention_mask, state.grid, embeds.shape[1],
                                                 model.config))
    return result


@register_patcher("llava_llama")
def _patch_llava(model, record, state):
    if state.grid is None:
        tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
        side = getattr(tower, "num_patches_per_side", None) if tower is not None else None
        state.grid = (int(side), int(side)) if side else (24, 24)
    patch_decoder(model, record, state)
    record.wrap_forward(model, _record_splice, model, state, attribute="prepare_inputs_labels_for_multimodal")


__all__ = ["patch_decoder", "splice_spans"]
