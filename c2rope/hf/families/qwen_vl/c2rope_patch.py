"""C2RoPE for the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), images and video.

    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), options={"frequencies": "c2rope"})

Every image, and every frame of a video, is a C2RoPE image: its merged grid
(image_grid_thw / video_grid_thw after spatial_merge_size) gives its tokens triplets
(m, x, y) and the Chebyshev mask inside it; frames of one video attend to each other
causally (a frame is an image that follows the previous one). Text, Qwen3-VL's
timestamp tokens included, is (m, m, m): exactly the unpatched model's positions.

What changes, on this model instance only (undone exactly by unpatching):
- `get_rope_index` of the inner Qwen*VLModel returns the triplets as its three M-RoPE
  rows (t, h, w) = (m, y, x), with rope_deltas that make transformers' own decoding
  continue at the next m. transformers calls it from forward and from generate(), so
  its own machinery carries the positions through prefill and decoding, with or
  without the KV cache. Prompts without vision tokens get the original's result.
- The inner model's forward notes where the current chunk's images and frames are
  (from its input_ids and grids; a thread-local call frame, `context.py`), and the text
  model's forward hands its layers the Chebyshev mask for that chunk (eager / sdpa: a
  4-D mask, flex_attention: a BlockMask). Chunks without vision tokens (text prompts,
  KV-cache decoding steps) keep the model's own mask.
- options={"frequencies": "model"} (default) rotates by the model's own M-RoPE sections,
  the split the checkpoint was trained with: m on the temporal section, y on height,
  x on width. "c2rope" rotates by the config's split instead (`C2RoPEConfig.axis_table`:
  d_temporal slots for m, then x/y interleaved or blocked), replacing the text model's
  rotary output; text positions (p, p, p) give plain RoPE under either split.
- options={"frame_axis": "separate"}: the frame index of video tokens rotates the slower
  half of the slots m has under that split (tables.FrameAxisTable; "temporal", the
  default, leaves the frame order to m).
- A chunk with new images after a KV cache (a later turn, through forward) is placed as
  in one uncached call over the whole conversation (`continuation_positions`).
- `record.probe` (probe.C2RoPEProbe) checks every layer at patch time.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Optional

import torch
from torch import nn

from ....mrope import IMAGE, VIDEO, c2rope_mrope_position_ids, mm_token_type_ids_from_input_ids, mrope_decode_position_ids
from ....mrope import qwen_vision_spans
from ... import context, packing
from ...entry import IMAGE_ARGUMENTS
from . import packed
from ...introspect import cache_argument, parameter_names, past_length
from ...masks import decoder_mask
from ...pipeline import to_kwargs
from ...record import PatchRecord
from .tables import C2RoPEAxisTable, FrameAxisTable, c2rope_row_table, model_row_table, three_rows
from ...state import MASKABLE_IMPLEMENTATIONS, C2RoPEState, CallPlan

# Said with every refusal of grids that do not fit the tokens: the usual cause is a
# conversation continued from a KV cache through generate().
CONTINUATION_HINT = (
    "the grids must describe exactly the images and videos whose tokens are in this call; to add images to a "
    "conversation held in a KV cache, call the model's forward with only the new turn's tokens, their "
    "pixel_values and grids, the cache and the 2-D attention_mask of the whole conversation: transformers' "
    "generate() cannot place new images after a cached prefix (docs/qwen.md, 'Multi-turn')"
)
FREQUENCIES = ("model", "c2rope")
FRAME_AXES = ("temporal", "separate")
OPTIONS = ("frequencies", "frame_axis")


def find_parts(model: nn.Module):
    """(inner Qwen*VLModel, text model) of a *ForConditionalGeneration or *Model."""
    inner = model.model if hasattr(model, "model") and hasattr(model.model, "get_rope_index") else model
    text = getattr(inner, "language_model", None)
    if not hasattr(inner, "get_rope_index") or text is None or not hasattr(text, "layers") \
            or not isinstance(getattr(text, "rotary_emb", None), nn.Module):
        raise TypeError(
            f"{type(model).__name__} does not look like a transformers Qwen2-VL / Qwen2.5-VL / Qwen3-VL model "
            "(expected .model.get_rope_index and .model.language_model with layers and rotary_emb)"
        )
    return inner, text


def check_options(options) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"options: unknown key(s) {unknown} for Qwen-VL with a C2RoPEConfig; accepted: {list(OPTIONS)}")
    frequencies = options.setdefault("frequencies", "model")
    if frequencies not in FREQUENCIES:
        raise ValueError(f"options['frequencies'] must be one of {FREQUENCIES}, got {frequencies!r}")
    frame_axis = options.setdefault("frame_axis", "temporal")
    if frame_axis not in FRAME_AXES:
        raise ValueError(f"options['frame_axis'] must be one of {FRAME_AXES}, got {frame_axis!r}")
    return options


class QwenC2RoPE:
    """What the patched Qwen model needs between calls."""

    def __init__(self, state: C2RoPEState, inner: nn.Module, text: nn.Module, options: dict):
        self.state = state
        self.inner = inner
        self.text = text
        self.frequencies = options["frequencies"]
        self.frame_axis = options["frame_axis"]
        self.decodes_by_valid_count = decodes_by_valid_count(inner.get_rope_index)
        vision = inner.config.vision_config
        self.merge = int(vision.spatial_merge_size)
        self.image_token_id = inner.config.image_token_id
        self.video_token_id = getattr(inner.config, "video_token_id", None)
        self.tables = []  # rotary wrappers (tables.py), innermost first
        # Hybrid stacks (Qwen3.5): (mask, text forward arguments) -> the per-layer-type masks.
        self.layer_masks: Optional[Callable] = None
        self._local = context.ThreadMemory()  # the last prompt's spans, per thread

    def vision_types(self, input_ids, mm_token_type_ids) -> Optional[torch.Tensor]:
        """0 / 1 / 2 (text / image / video) per token: from the ids when given (what
        the tokens really are), else the processor's mm_token_type_ids."""
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            return mm_token_type_ids_from_input_ids(input_ids, self.image_token_id, self.video_token_id)
        if isinstance(mm_token_type_ids, torch.Tensor) and mm_token_type_ids.dim() == 2:
            return mm_token_type_ids
        return None

    def spans(self, types, arguments):
        """Where the images and frames of `types` lie (`qwen_vision_spans`; None: no
        grids to place them by), and the padding mask used. Without grids in the arguments (transformers 5.24's generate()
        encodes the images first and calls forward without them), the spans recorded by
        the get_rope_index call of the same prompt are reused."""
        mask = _padding_mask(arguments.get("attention_mask"))
        if mask is not None and mask.shape != types.shape:
            mask = None  # a mask over cache + chunk: the chunk's images lie on its valid tokens anyway
        images, videos = arguments.get("image_grid_thw"), arguments.get("video_grid_thw")
        if images is None and videos is None:
            # Placeholder ids with no grid anywhere (e.g. generated by a text prompt) are
            # embedded as text by the model, so they are text here too.
            return self._recall(types, arguments.get("position_ids")), mask
        try:
            spans = qwen_vision_spans(types, images, videos, mask, spatial_merge_size=self.merge)
        except ValueError as exc:
            raise ValueError(f"{exc} ({CONTINUATION_HINT})") from None
        return spans, mask

    @contextlib.contextmanager
    def chunk_frames(self, spans, samples=None):
        """While the inner model runs: the chunk's images and frames, for the rotary
        (`frames()`), and the sample of every token of a packed row (`samples()`, for
        the text model's mask); per thread, restored after (calls may nest)."""
        previous = getattr(self._local, "frames", None), getattr(self._local, "samples", None)
        self._local.frames, self._local.samples = spans, samples
        try:
            yield
        finally:
            self._local.frames, self._local.samples = previous

    def frames(self):
        return getattr(self._local, "frames", None)

    def samples(self):
        return getattr(self._local, "samples", None)

    def rotary_tables(self, x, position_ids):
        """cos, sin the patched text rotary should return for these positions (built from
        the model's class forward and the tables the patch installed, whatever the
        rotary's forward is now: the probe's expectation)."""
        rotary = self.text.rotary_emb
        forward = functools.partial(type(rotary).forward, rotary)
        for table in self.tables:
            forward = functools.partial(table, forward, rotary)
        return forward(x, position_ids)

    def remember(self, types, spans, positions) -> None:
        self._local.last = (types.detach().cpu(), spans, positions.detach().cpu())

    def _recall(self, types, position_ids):
        """Spans of the last prompt get_rope_index placed, if `types` begins with that
        prompt (rows possibly repeated for beams / samples; what follows was generated:
        text to the model, whatever its ids), and the
        given position_ids begin with the positions it returned."""
        last = getattr(self._local, "last", None)
        if last is None or not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 3:
            return None
        known, spans, positions = last
        types = types.detach().cpu()
        batch, seq = types.shape
        if known.shape[0] == 0 or batch % known.shape[0] or seq < known.shape[1]:
            return None
        repeat = batch // known.shape[0]
        if not torch.equal(types[:, :known.shape[1]], known.repeat_interleave(repeat, dim=0)):
            return None
        given = position_ids[-3:, :, :known.shape[1]].detach().cpu().to(positions.dtype)
        if given.shape[1:] != (batch, known.shape[1]) or not torch.equal(
                given, positions.repeat_interleave(repeat, dim=1)):
            return None
        return [row for row in spans for _ in range(repeat)]


def _padding_mask(attention_mask) -> Optional[torch.Tensor]:
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        if attention_mask.is_floating_point():
            # LLaMA-Factory's collator calls get_rope_index with `(mask >= 1).float()`, which
            # transformers' own get_rope_index takes: a 0/1 float mask is a padding mask.
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask: a 2-D float padding mask must hold only 0 and 1")
            return attention_mask.long()
        return attention_mask
    return None


def call_arguments(original: Callable, args, kwargs) -> dict:
    """The call's arguments by name, as `original` would bind them."""
    bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
    extra = {}
    for name, parameter in inspect.signature(original).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD and name in bound:
            extra = bound.pop(name)
    return {**extra, **bound}


def decodes_by_valid_count(get_rope_index: Callable) -> bool:
    """Whether the release decodes a text token at its count of valid tokens plus
    rope_deltas (releases whose get_rope_index takes mm_token_type_ids), rather than at
    the past length, padding included, plus rope_deltas (4.57 - 5.0)."""
    return "mm_token_type_ids" in inspect.signature(get_rope_index).parameters


def release_deltas(get_rope_index: Callable, deltas: torch.Tensor, mask) -> torch.Tensor:
    """rope_deltas (counted from the valid tokens, as c2rope.mrope builds them) in the
    convention of the release's decoding (`decodes_by_valid_count`)."""
    if mask is None or decodes_by_valid_count(get_rope_index):
        return deltas
    return deltas + mask.sum(dim=1, keepdim=True).to(deltas) - mask.shape[1]


def generated_placeholder_step(arguments, types, past: int) -> bool:
    """A decoding step (one token per row after a KV cache, no images brought) whose
    token is a placeholder id: the model generated it and embeds it as text, so it is
    text for c2rope too (4.57 / 5.0 hand the prompt's grids on every step: they must not
    be fitted to it)."""
    return bool(past) and types is not None and types.shape[1] == 1 and bool(types.any()) and not any(
        arguments.get(name) is not None for name in IMAGE_ARGUMENTS + ("inputs_embeds",))


def _has_vision(types) -> bool:
    return types is not None and bool(((types == IMAGE) | (types == VIDEO)).any())


def _get_rope_index(original: Callable, qwen: QwenC2RoPE, *args, **kwargs):
    arguments = call_arguments(original, args, kwargs)
    ids = arguments.get("input_ids")
    types = qwen.vision_types(ids, arguments.get("mm_token_type_ids"))
    if not _has_vision(types):
        return original(*args, **kwargs)
    spans, mask = qwen.spans(types, arguments)
    if spans is None:
        return original(*args, **kwargs)
    positions, deltas = c2rope_mrope_position_ids(spans, types.shape[1], qwen.state.config, mask,
                                                  device=types.device)
    qwen.remember(types, spans, positions)
    return positions, release_deltas(original, deltas, mask)


def _inner_forward(original: Callable, qwen: QwenC2RoPE, cache_name, *args, **kwargs):
    """Note the chunk's images and frames for the text model (a call frame) and the
    rotary; a chunk after a KV cache gets its positions here when transformers' forward
    would get them wrong (`continuation_positions`, `_decode_positions`); a packed row
    gets every sample's positions alone and its sample ids (`packed.py`)."""
    from ....layout import VisualLayout

    arguments = call_arguments(original, args, kwargs)
    types = qwen.vision_types(arguments.get("input_ids"), arguments.get("mm_token_type_ids"))
    past = past_length(arguments.get(cache_name)) if cache_name else 0
    if generated_placeholder_step(arguments, types, past):
        types = torch.zeros_like(types)
    layout = spans = position_ids = samples = None
    if types is not None:
        samples = packed.packed_samples(arguments, *types.shape, types.device)
    else:
        packed.refuse_unplaceable(arguments)
    if _has_vision(types):
        spans, _ = qwen.spans(types, arguments)
    if spans is None:
        samples = None  # text-only packed rows stay transformers' (their boundaries were validated)
    if spans is not None and samples is not None:
        packed.check_packed(spans, samples, past)
        starts = packing.sample_starts(samples)
        rows, _ = c2rope_mrope_position_ids(spans, types.shape[1], qwen.state.config, None, device=types.device,
                                            sample_starts=starts)
        position_ids = packed.four_rows(samples, rows)
    elif spans is not None:
        if past:
            _check_continuation(arguments, types, spans)
            if arguments.get("position_ids") is None:
                position_ids = continuation_positions(qwen, spans, types, arguments, past)
    elif past and types is not None and arguments.get("position_ids") is None:
        position_ids = _decode_positions(qwen, arguments, past, *types.shape)
    maskable = getattr(qwen.text.config, "_attn_implementation", None) in MASKABLE_IMPLEMENTATIONS
    if spans is not None and (qwen.state.config.mask != "causal" or (samples is not None and maskable)):
        layout = VisualLayout.from_spans([[tuple(s[:3]) for s in row] for row in spans], types.shape[1],
                                         device=types.device)
    if position_ids is not None:
        bound = inspect.signature(original).bind_partial(*args, **kwargs)
        bound.arguments["position_ids"] = position_ids
        args, kwargs = bound.args, bound.kwargs
    with context.call_frame(qwen.state, visual_layout=layout), qwen.chunk_frames(spans, samples):
        return original(*args, **kwargs)


def _decode_positions(qwen: QwenC2RoPE, arguments, past: int, batch: int, q_len: int) -> Optional[torch.Tensor]:
    """Text after a KV cache called through forward (not generate(), which hands its own
    positions): the chunk's decode positions, text index + rope_deltas in the release's
    convention, where the release's forward gets them wrong. 4.57 / 5.0 restart at 0
    without a cache_position; 5.24 builds one position per token of a 2-D mask that
    covers the cache too. None: the release places the chunk itself."""
    deltas = qwen.inner.rope_deltas
    if deltas is None:
        return None
    mask = _padding_mask(arguments.get("attention_mask"))
    if qwen.decodes_by_valid_count:
        if mask is None or mask.shape[1] != past + q_len:
            return None
    elif arguments.get("cache_position") is not None:
        return None
    else:
        mask = None  # these releases count padding too: past + index
    deltas = deltas.repeat_interleave(batch // deltas.shape[0], dim=0)
    return mrope_decode_position_ids(deltas, q_len, past, mask)


def _check_continuation(arguments, types, spans) -> None:
    """A chunk with image or video tokens after a KV cache must bring their pixels
    (transformers 4.57's generate() drops pixel_values once the cache is filled: the new
    images would be embedded as placeholder tokens), and positions it is handed must
    not put them at text positions (5.0's generate() does: text index + rope_deltas)."""
    if arguments.get("inputs_embeds") is None and arguments.get("mm_encoder_outputs") is None:
        for kind, what, name in ((IMAGE, "image", "pixel_values"), (VIDEO, "video", "pixel_values_videos")):
            if bool((types == kind).any()) and arguments.get(name) is None:
                raise ValueError(f"c2rope: this call continues a KV cache with new {what} tokens but no {name}; "
                                 f"{CONTINUATION_HINT}")
    given = arguments.get("position_ids")
    if isinstance(given, torch.Tensor) and given.dim() == 3 and any(s.h * s.w > 1 for row in spans for s in row):
        rows = three_rows(given)
        vision = types != 0
        if torch.equal(rows[0][vision], rows[1][vision]) and torch.equal(rows[0][vision], rows[2][vision]):
            raise ValueError("c2rope: the position_ids handed with this continuation of a KV cache put its new "
                             f"image or video tokens at text positions; {CONTINUATION_HINT}")


def continuation_positions(qwen: QwenC2RoPE, spans, types, arguments, past: int) -> torch.Tensor:
    """[3, B, q] positions of a chunk with images that follows `past` cached tokens (a
    second turn), and the model's rope_deltas moved past it.

    The chunk's first token gets the m it would get as text: the release's decode
    position (its text index plus the rope_deltas the cached turn left). C2RoPE positions
    only depend on m from there on (text counts on, an image's (x, y) are centred on its
    own mean m), so they are built for the chunk behind that many text tokens: the whole
    conversation in one uncached call gives the same numbers, rounded the same way."""
    from ....mrope import VisionSpan

    inner = qwen.inner
    batch, q_len = types.shape
    mask = _padding_mask(arguments.get("attention_mask"))
    if mask is not None and mask.shape[1] != past + q_len:
        raise ValueError(f"c2rope: attention_mask covers {mask.shape[1]} tokens but the KV cache holds {past} and "
                         f"the input {q_len}; pass the 2-D mask of the whole conversation")
    local = torch.ones_like(types) if mask is None else mask[:, past:].to(types)
    previous = inner.rope_deltas
    previous = torch.zeros(batch, 1, device=types.device) if previous is None else previous.to(types.device)
    previous = previous.to(torch.float64).repeat_interleave(batch // previous.shape[0], dim=0)
    # The release's text index of the chunk's first token, and what it counts per chunk.
    by_valid = mask is not None and qwen.decodes_by_valid_count
    start = mask[:, :past].sum(dim=1, keepdim=True).to(previous) if by_valid else torch.full_like(previous, past)
    offset = (start + previous).round().to(torch.int64).flatten()  # m is whole at a text token
    prefix = int(offset.max())
    before = torch.arange(prefix, device=types.device).unsqueeze(0) >= (prefix - offset).unsqueeze(1)
    shifted = [[VisionSpan(s.start + prefix, *s[1:]) for s in row] for row in spans]
    positions, deltas = c2rope_mrope_position_ids(shifted, prefix + q_len, qwen.state.config,
                                                  torch.cat([before.to(local), local], dim=1), device=types.device)
    local_valid = local.sum(dim=1, keepdim=True).to(previous)
    counted = local_valid if by_valid else torch.full_like(previous, q_len)
    inner.rope_deltas = (previous + deltas.to(previous) + local_valid - counted).to(torch.float32)
    return positions[:, :, prefix:]


def _text_forward(original: Callable, qwen: QwenC2RoPE, names, cache_name, *args, **kwargs):
    frame = context.current(qwen.state)
    if frame is None or frame.visual_layout is None:
        return original(*args, **kwargs)
    bound = to_kwargs(names, args, kwargs)
    embeds = bound.get("inputs_embeds")
    reference = embeds if embeds is not None else bound.get("input_ids")
    chunk = frame.visual_layout
    frame.visual_layout = None  # one text-model call per chunk
    if reference is None or reference.shape[1] != chunk.seq_len:
        raise ValueError(
            f"c2rope: the text model got {None if reference is None else reference.shape[1]} tokens but the "
            f"input_ids that located the images had {chunk.seq_len}"
        )
    attention_mask = bound.get("attention_mask")
    if attention_mask is not None and _padding_mask(attention_mask) is None:
        raise ValueError(
            "c2rope: with images in the input the patched Qwen-VL model needs the 2-D padding attention_mask "
            "[batch, past + new tokens] (or None), not a prepared mask"
        )
    cache = bound.get(cache_name) if cache_name else None
    q_len = chunk.seq_len
    past = past_length(cache)
    spans = tuple(tuple((start + past, h, w) for start, h, w in row) for row in chunk.spans)
    plan = CallPlan(spans=spans, total_len=past + q_len, samples=qwen.samples())
    plan.layout = C2RoPEState._layout(spans, past + q_len, attention_mask, reference.device)
    dtype = embeds.dtype if embeds is not None else qwen.text.get_input_embeddings().weight.dtype
    mask = decoder_mask(qwen.state, plan, qwen.text.config, cache, q_len, dtype, reference.device)
    bound["attention_mask"] = mask if qwen.layer_masks is None else qwen.layer_masks(mask, bound)
    return original(**bound)


def apply_c2rope_patch(model: nn.Module, record: PatchRecord, state: C2RoPEState, options=None) -> QwenC2RoPE:
    """Make every change through `record` (so it can be undone)."""
    from .probe import C2RoPEProbe

    options = check_options(options)
    if state.config.text_spatial != "temporal":
        raise ValueError(
            "Qwen-VL decodes text at (p, p, p) on its three M-RoPE rows, so C2RoPEConfig(text_spatial="
            f"{state.config.text_spatial!r}) cannot be delivered through it; use text_spatial='temporal'"
        )
    inner, text = find_parts(model)
    qwen = QwenC2RoPE(state, inner, text, options)
    rotary = text.rotary_emb
    # Tables and splits are checked before anything changes (ValueError early).
    rows = c2rope_row_table(rotary, state.config) if qwen.frequencies == "c2rope" else \
        model_row_table(rotary, text.config)
    frames = FrameAxisTable(rotary, rows, qwen.frames) if qwen.frame_axis == "separate" else None
    record.wrap_forward(inner, _get_rope_index, qwen, attribute="get_rope_index")
    # Deltas left from earlier unpatched calls would shift our decode positions.
    record.set_attr(inner, "rope_deltas", None)
    record.wrap_forward(inner, _inner_forward, qwen, cache_argument(inner.forward))
    record.wrap_forward(text, _text_forward, qwen, parameter_names(text.forward), cache_argument(text.forward))
    if qwen.frequencies == "c2rope":
        qwen.tables.append(C2RoPEAxisTable(rotary, state.config))
    if frames is not None:
        qwen.tables.append(frames)
    for table in qwen.tables:
        record.wrap_forward(rotary, table, rotary)
    record.probe = C2RoPEProbe(qwen)
    return qwen


__all__ = ["FRAME_AXES", "FREQUENCIES", "apply_c2rope_patch", "continuation_positions", "find_parts"]
