"""Circle-RoPE for transformers 5.x Qwen2-VL and Qwen2.5-VL, with AGE (a per-layer
choice between Circle-RoPE and the model's own M-RoPE positions).

    c2rope.patch_model(model, c2rope.CircleRoPEConfig(age_strategy="alternate"))
    c2rope.unpatch_model(model)

What changes, on this model instance only (undone exactly by unpatching):
- `get_rope_index` of the inner Qwen2VLModel returns Circle-RoPE positions (float32)
  and their rope_deltas. transformers calls it both from forward and from generate(),
  and continues decoding from those deltas, so the model's own machinery carries the
  new positions through prefill, KV-cache decoding and no-cache decoding.
- With AGE (any layer on M-RoPE), the same call also keeps the model's original M-RoPE
  positions. The text model's forward works out, for the chunk it runs, the M-RoPE
  positions of its tokens (prompt tokens from the kept set, generated tokens by their
  own rope_deltas), the rotary module attaches their cos/sin to the Circle ones, and
  each M-RoPE layer swaps them in. The swap travels with the cos tensor itself, so
  gradient checkpointing's recomputation sees the same choice. The chunk's M-RoPE
  positions live in a thread-local call frame (`context.py`), not on the model.
Text-only inputs never reach get_rope_index: their positions, and logits, are the
model's own.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
from torch import nn

from ....circle import CircleRoPEConfig
from ....mrope import mm_token_type_ids_from_input_ids, mrope_position_ids, qwen_vision_spans
from ... import context, packing
from . import packed
from ...introspect import cache_argument, parameter_names, past_length
from .c2rope_patch import call_arguments, find_parts, generated_placeholder_step, release_deltas
from .probe import CircleProbe, attention_layers
from ...record import PatchRecord

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
# Model types whose processors write timestamp text between video frames.
TIMESTAMPED_FRAMES = ("qwen3_vl", "qwen3_5", "qwen3_5_moe")
_ALT_ATTR = "_c2rope_mrope_cos_sin"  # set on the Circle cos tensor: the M-RoPE (cos, sin)


@dataclasses.dataclass
class _Prompt:
    """The positions of the last prompt that went through get_rope_index."""

    circle: torch.Tensor  # float32 [3, B, S]
    mrope: torch.Tensor  # float32 [3, B, S]
    circle_deltas: torch.Tensor  # [B, 1], the object handed to transformers as rope_deltas
    mrope_deltas: torch.Tensor  # float32 [B, 1]


class _CircleState:
    def __init__(self, config: CircleRoPEConfig, inner: nn.Module, text: nn.Module, num_layers: int):
        self.config = config
        self.inner = inner
        self.text = text
        self.plan = config.layer_plan(num_layers)  # over the layers that take positions
        self.prompt: Optional[_Prompt] = None
        self._local = context.ThreadMemory()  # a packed row's M-RoPE positions while it runs

    @property
    def packed_mrope(self) -> Optional[torch.Tensor]:
        return getattr(self._local, "packed_mrope", None)

    @property
    def needs_mrope(self) -> bool:
        return not all(self.plan)


def _positions(inner: nn.Module, arguments: dict, circle: Optional[CircleRoPEConfig], sample_lengths=None):
    """(positions [3, B, S], rope_deltas): Circle-RoPE's (circle given) or the model's own
    M-RoPE (None) for the call's ids and grids; `sample_lengths` for packed rows."""
    input_ids, mm_token_type_ids = arguments.get("input_ids"), arguments.get("mm_token_type_ids")
    image_grid_thw, video_grid_thw = arguments.get("image_grid_thw"), arguments.get("video_grid_thw")
    attention_mask, second_per_grid_ts = arguments.get("attention_mask"), arguments.get("second_per_grid_ts")
    config = inner.config
    frames_grid_thw = video_grid_thw
    if video_grid_thw is not None and config.model_type in TIMESTAMPED_FRAMES:
        # Qwen3-VL puts timestamp text between frames: each frame is its own grid.
        frames_grid_thw = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
        frames_grid_thw[:, 0] = 1
    vision = config.vision_config
    tokens_per_second = getattr(vision, "tokens_per_second", None)
    mask = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
    if mm_token_type_ids is None:
        mm_token_type_ids = mm_token_type_ids_from_input_ids(
            input_ids, config.image_token_id, getattr(config, "video_token_id", None)
        )
    return mrope_position_ids(
        input_ids, image_grid_thw, frames_grid_thw, mask,
        mm_token_type_ids=mm_token_type_ids, spatial_merge_size=vision.spatial_merge_size,
        second_per_grid_ts=second_per_grid_ts if tokens_per_second is not None else None,
        tokens_per_second=tokens_per_second,
        circle=circle, sample_lengths=sample_lengths,
    ), mm_token_type_ids, mask


def _get_rope_index(original: Callable, inner: nn.Module, state: _CircleState, *args, **kwargs):
    arguments = call_arguments(original, args, kwargs)
    (positions, deltas), mm_token_type_ids, mask = _positions(inner, arguments, state.config)
    deltas = release_deltas(original, deltas, mask)
    if state.needs_mrope:
        # The model's own M-RoPE positions for the layers AGE leaves on M-RoPE.
        second_per_grid_ts = arguments.get("second_per_grid_ts")
        extra = {} if second_per_grid_ts is None else {"second_per_grid_ts": second_per_grid_ts}
        if "mm_token_type_ids" in parameter_names(original):
            extra["mm_token_type_ids"] = mm_token_type_ids
        mrope, mrope_deltas = original(
            arguments.get("input_ids"), image_grid_thw=arguments.get("image_grid_thw"),
            video_grid_thw=arguments.get("video_grid_thw"), attention_mask=mask, **extra,
        )
        state.prompt = _Prompt(positions, mrope.to(torch.float32), deltas, mrope_deltas.to(torch.float32))
    return positions, deltas


def _as_three_rows(position_ids, past: int, batch: int, seq: int, device) -> torch.Tensor:
    """The [3, B, S] (t, h, w) positions the text model will use, as it derives them."""
    if position_ids is None:
        index = torch.arange(past, past + seq, device=device, dtype=torch.float32)
        return index.view(1, 1, -1).expand(3, batch, -1)
    if position_ids.dim() == 2:
        return position_ids[None].expand(3, -1, -1).to(torch.float32)
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        position_ids = position_ids[1:]
    return position_ids.to(torch.float32)


def _repeat_batch(value: torch.Tensor, batch: int, dim: int) -> Optional[torch.Tensor]:
    """Expand a prompt-time tensor to generate()'s expanded batch (beams / samples)."""
    have = value.shape[dim]
    if have == batch:
        return value
    if have == 0 or batch % have:
        return None
    return value.repeat_interleave(batch // have, dim=dim)


def mrope_positions_for_chunk(state: _CircleState, circle: torch.Tensor, past: int) -> Optional[torch.Tensor]:
    """M-RoPE positions [3, B, S] of a chunk whose Circle positions are `circle`, starting
    after `past` cached tokens; None when nothing says they differ (text only)."""
    prompt = state.prompt
    # Our prompt positions apply only while transformers decodes from our rope_deltas: a
    # text-only generate() resets them, and then both position sets are the same.
    if prompt is None or state.inner.rope_deltas is not prompt.circle_deltas:
        return None
    batch, seq = circle.shape[1], circle.shape[2]
    prompt_circle = _repeat_batch(prompt.circle, batch, 1)
    prompt_mrope = _repeat_batch(prompt.mrope, batch, 1)
    circle_deltas = _repeat_batch(prompt.circle_deltas, batch, 0)
    mrope_deltas = _repeat_batch(prompt.mrope_deltas, batch, 0)
    if prompt_circle is None:
        return None
    device = circle.device
    overlap = max(0, min(past + seq, prompt_circle.shape[2]) - past)
    head = None
    if overlap:
        known = prompt_circle[:, :, past:past + overlap].to(device)
        if not torch.equal(circle[:, :, :overlap], known):
            return None  # not the prompt we built: positions of unknown origin, leave them
        head = prompt_mrope[:, :, past:past + overlap].to(device)
    if overlap == seq:
        return head
    if overlap == 0 and past == 0:
        return None
    # Tokens after the prompt are text: same index, each set's own decode offset.
    shift = (mrope_deltas - circle_deltas.to(mrope_deltas.dtype)).to(device)
    tail = circle[:, :, overlap:] + shift.view(1, -1, 1)
    return tail if head is None else torch.cat([head, tail], dim=2)


def _text_forward(original: Callable, state: _CircleState, names, *args, **kwargs):
    bound = dict(zip(names, args))
    bound.update(kwargs)
    embeds = bound.get("inputs_embeds")
    ids = bound.get("input_ids")
    if embeds is None and ids is None:
        return original(*args, **kwargs)  # transformers raises its own error
    batch, seq = (embeds.shape[0], embeds.shape[1]) if embeds is not None else tuple(ids.shape)
    device = embeds.device if embeds is not None else ids.device
    cache = bound.get("cache", bound.get("past_key_values"))
    past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
    circle = _as_three_rows(bound.get("position_ids"), past, batch, seq, device)
    with context.call_frame(state) as frame:
        packed = state.packed_mrope
        frame.positions = packed if packed is not None else mrope_positions_for_chunk(state, circle, past)
        return original(*args, **kwargs)


def _rotary_forward(original: Callable, state: _CircleState, x, position_ids, *args, **kwargs):
    cos, sin = original(x, position_ids, *args, **kwargs)
    mrope = context.current_positions(state)
    if mrope is not None:
        setattr(cos, _ALT_ATTR, original(x, mrope, *args, **kwargs))
    return cos, sin


def _mrope_layer_forward(original: Callable, slot: Optional[int], *args, **kwargs):
    if "position_embeddings" in kwargs:
        embeddings = kwargs["position_embeddings"]
        alt = getattr(embeddings[0], _ALT_ATTR, None) if embeddings is not None else None
        if alt is not None:
            kwargs["position_embeddings"] = alt
    elif slot is not None and slot < len(args) and args[slot] is not None:
        alt = getattr(args[slot][0], _ALT_ATTR, None)
        if alt is not None:
            args = args[:slot] + (alt,) + args[slot + 1:]
    return original(*args, **kwargs)


def _inner_forward(original: Callable, inner: nn.Module, state: _CircleState, cache_name, *args, **kwargs):
    """Refuse a call that brings new image or video tokens after cached ones (a later
    turn, which the release would place at text positions: Circle-RoPE places images
    only in a prompt that starts the cache), and place a packed row's samples each as
    if alone (`_packed_call`)."""
    arguments = call_arguments(original, args, kwargs)
    ids = arguments.get("input_ids")
    grids = arguments.get("image_grid_thw") is not None or arguments.get("video_grid_thw") is not None
    past = past_length(arguments.get(cache_name)) if cache_name else 0
    types = None
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        types = mm_token_type_ids_from_input_ids(ids, inner.config.image_token_id,
                                                 getattr(inner.config, "video_token_id", None))
    elif isinstance(arguments.get("mm_token_type_ids"), torch.Tensor) and arguments["mm_token_type_ids"].dim() == 2:
        types = arguments["mm_token_type_ids"]
    else:
        packed.refuse_unplaceable(arguments)
    if generated_placeholder_step(arguments, types, past):
        types = torch.zeros_like(types)
    if grids and isinstance(ids, torch.Tensor) and types is not None and past and bool(types.any()):
        raise ValueError(
            "c2rope: Circle-RoPE cannot add images or videos to a conversation held in a KV cache (the "
            "model would place them at text positions); run the whole conversation without the cache, or "
            "use C2RoPEConfig, which places them (docs/qwen.md, 'Multi-turn')"
        )
    samples = None if types is None else packed.packed_samples(arguments, *types.shape, types.device)
    if samples is None or not grids or not bool(types.any()):
        return original(*args, **kwargs)  # not packed, or text only: transformers' own handling
    return _packed_call(original, inner, state, arguments, types, samples, past, args, kwargs)


def _packed_call(original, inner, state: _CircleState, arguments, types, samples, past, args, kwargs):
    """A packed row: Circle-RoPE positions of every sample alone (4-row form, the text
    row restarting per sample), the model's M-RoPE ones for AGE's layers, and the
    block-diagonal causal mask where the implementation takes a mask."""
    import inspect

    spans = qwen_vision_spans(types, arguments.get("image_grid_thw"), arguments.get("video_grid_thw"),
                              spatial_merge_size=inner.config.vision_config.spatial_merge_size)
    packed.check_packed(spans, samples, past)
    lengths = packing.sample_lengths(samples)
    (circle, _), _, _ = _positions(inner, arguments, state.config, lengths)
    bound = inspect.signature(original).bind_partial(*args, **kwargs)
    bound.arguments["position_ids"] = packed.four_rows(samples, circle.to(types.device))
    embeds = arguments.get("inputs_embeds")
    dtype = embeds.dtype if embeds is not None else state.text.get_input_embeddings().weight.dtype
    mask = packed.block_diagonal_mask(samples, state.text.config, None, dtype,
                                            types.device)
    if mask is not None:
        bound.arguments["attention_mask"] = mask
    mrope = None
    if state.needs_mrope:
        (mrope, _), _, _ = _positions(inner, arguments, None, lengths)
    previous = state.packed_mrope
    state._local.packed_mrope = None if mrope is None else mrope.to(types.device)
    try:
        return original(*bound.args, **bound.kwargs)
    finally:
        state._local.packed_mrope = previous


def apply_circle_patch(model: nn.Module, record: PatchRecord, config: CircleRoPEConfig) -> _CircleState:
    """Make every change through `record` (so it can be undone); returns the state."""
    if not isinstance(config, CircleRoPEConfig):
        raise TypeError(
            "Qwen2-VL / Qwen2.5-VL are patched with a c2rope.CircleRoPEConfig (Circle-RoPE on their "
            f"M-RoPE), got {type(config).__name__}"
        )
    inner, text = find_parts(model)
    layers = attention_layers(text)  # AGE's plan: over the layers that take positions
    state = _CircleState(config, inner, text, len(layers))
    record.wrap_forward(inner, _get_rope_index, inner, state, attribute="get_rope_index")
    # Deltas left from earlier unpatched calls would shift our decode positions.
    record.set_attr(inner, "rope_deltas", None)
    record.wrap_forward(inner, _inner_forward, inner, state, cache_argument(inner.forward))
    if state.needs_mrope:
        record.wrap_forward(text, _text_forward, state, parameter_names(text.forward))
        record.wrap_forward(text.rotary_emb, _rotary_forward, state)
        for layer, circle in zip(layers, state.plan):
            if not circle:
                names = parameter_names(layer.forward)
                slot = names.index("position_embeddings") if "position_embeddings" in names else None
                record.wrap_forward(layer, _mrope_layer_forward, slot)
    record.set_attr(inner, "_c2rope_circle_state", state)
    record.probe = CircleProbe(state, text)
    return state


def patch_qwen2_vl(model: nn.Module, config: Optional[CircleRoPEConfig] = None) -> nn.Module:
    """Same as `c2rope.patch_model(model, config or CircleRoPEConfig())` (kept for
    existing callers; the registry is the one patching mechanism)."""
    from ... import patch_model

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if isinstance(model, nn.Module) and model_type not in MODEL_TYPES:
        raise TypeError(f"patch_qwen2_vl supports model types {MODEL_TYPES}, got {model_type!r}")
    if config is not None and not isinstance(config, CircleRoPEConfig):
        raise TypeError(f"patch_qwen2_vl takes a c2rope.CircleRoPEConfig, got {type(config).__name__}")
    return patch_model(model, config if config is not None else CircleRoPEConfig())


def unpatch_qwen2_vl(model: nn.Module) -> nn.Module:
    """Same as `c2rope.unpatch_model(model)`."""
    from ... import unpatch_model

    return unpatch_model(model)


__all__ = ["apply_circle_patch", "patch_qwen2_vl", "unpatch_qwen2_vl", "mrope_positions_for_chunk"]
