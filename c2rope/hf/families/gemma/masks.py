"""Which attention mask a Gemma text model gets.

Gemma's multimodal model (Gemma3Model, Gemma4Model) turns the 2-D padding mask into
its own masks before calling the text model: a dict {layer type: 4-D mask} in which
the image tokens of one image attend to each other both ways (the bidirectional image
block; Gemma 4 only on sliding-window layers) and sliding-window layers keep their
window. c2rope plans a call from the 2-D padding mask, and with images hands the text
model its own dict: the Chebyshev rule inside each image, the same sliding windows
(masks.decoder_mask reads the config's layer_types and sliding_window).

So around c2rope's decoder hook (pipeline.DecoderHooks):
- `InnerMask` (a hook on the multimodal model) remembers the 2-D padding mask of the
  running call;
- `HandPadding` (a decoder pre-hook that runs before c2rope's) puts that 2-D mask in
  place of the model's dict, and keeps the dict aside;
- `GiveBackModelMask` (a decoder pre-hook that runs after c2rope's) puts the model's
  dict back wherever c2rope did not deliver a mask of its own: text-only calls (the
  unpatched model's masks, exactly), `C2RoPEConfig(mask="causal")`, and the option
  `image_attention="bidirectional"` (the model's own image block, c2rope's positions).
A dict handed to the text model directly (no multimodal model around it) is left alone.
"""
from __future__ import annotations

import inspect
import threading

import torch

from ... import context
from ...masks import additive, decoder_mask, dense_mask
from ...pipeline import Delivery, same_tensor, to_kwargs
from ...record import Unpicklable


class _Stack(threading.local):
    """Per-thread stack of the calls running; a deep copy of the model starts empty."""

    def __init__(self):
        self.items = []

    def __deepcopy__(self, memo):
        return _Stack()


class InnerMask(Unpicklable):
    """Hooks on the multimodal model: the 2-D padding mask (or None) of the running call."""

    def __init__(self, names):
        self.names = tuple(names)
        self.stack = _Stack()

    def pre(self, module, args, kwargs):
        self.stack.items.append(to_kwargs(self.names, args, kwargs).get("attention_mask"))
        return None

    def post(self, module, args, kwargs, output):
        if self.stack.items:
            self.stack.items.pop()
        return None

    def current(self):
        return self.stack.items[-1] if self.stack.items else _NONE


_NONE = object()  # no multimodal call is running


class HandPadding(Unpicklable):
    """Decoder pre-hook before c2rope's: the model's mask dict out, the 2-D mask in."""

    def __init__(self, names, inner: InnerMask):
        self.names = tuple(names)
        self.inner = inner
        self.held = _Stack()

    def pre(self, module, args, kwargs):
        bound = to_kwargs(self.names, args, kwargs)
        own = bound.get("attention_mask")
        padding = self.inner.current()
        if not isinstance(own, dict) or padding is _NONE:
            self.held.items.append(None)
            return None
        self.held.items.append(own)
        bound["attention_mask"] = padding
        return (), bound

    def post(self, module, args, kwargs, output):
        if self.held.items:
            self.held.items.pop()
        return None

    def model_mask(self):
        return self.held.items[-1] if self.held.items else None


class GiveBackModelMask(Unpicklable):
    """Decoder pre-hook after c2rope's: the model's own dict back where c2rope handed
    no mask (or where the model's image block was asked for)."""

    def __init__(self, names, hand: HandPadding, state, keep_model_mask: bool):
        self.names = tuple(names)
        self.hand = hand
        self.state = state
        self.keep_model_mask = keep_model_mask

    def pre(self, module, args, kwargs):
        own = self.hand.model_mask()
        if own is None:
            return None
        frame = context.current(self.state)
        delivered = frame.mask if frame is not None else None
        if delivered is not None and not self.keep_model_mask:
            return None
        bound = to_kwargs(self.names, args, kwargs)
        bound["attention_mask"] = own
        if frame is not None:
            frame.mask = None  # the model's own mask: nothing of c2rope's for the checks to find
        return (), bound

    def post(self, module, args, kwargs, output):
        return None


def layer_mask_sizes(cache, layer: int, past: int, q_len: int, device):
    """(kv_len, kv_offset) of the keys layer `layer` sees in the next call: a sliding
    layer's cache keeps only its window, so its keys start at kv_offset."""
    get = getattr(cache, "get_mask_sizes", None)
    if cache is None or get is None:
        return past + q_len, 0
    parameters = inspect.signature(get).parameters
    extra = {"layer_idx": layer} if "layer_idx" in parameters else {}
    first = next(iter(parameters), None)
    if first == "cache_position":
        return tuple(int(v) for v in get(torch.arange(past, past + q_len, device=device), **extra))
    return tuple(int(v) for v in get(q_len, **extra))


class LayerTypeDelivery(Delivery):
    """The mask of a call with images, one per layer type, each sized to the keys that
    type's layers hold (a sliding layer's cache keeps only its window: its keys start at
    kv_offset), and what reaching a layer means (its position_embeddings are the tables
    the rotary adapter built for its layer type in this call)."""

    def mask(self, state, plan, decoder, cache, q_len, dtype, device):
        config = decoder.config
        implementation = config._attn_implementation
        if cache is None or implementation not in ("eager", "sdpa"):
            return decoder_mask(state, plan, config, cache, q_len, dtype, device)  # the corridor's (flex too)
        state.check_implementation(implementation)
        types = list(config.layer_types)[:len(decoder.layers)]
        past = plan.total_len - q_len
        masks = {}
        for kind in sorted(set(types)):
            kv_len, kv_offset = layer_mask_sizes(cache, types.index(kind), past, q_len, device)
            window = config.sliding_window if kind == "sliding_attention" else None
            whole = dense_mask(state, plan, q_len, max(plan.total_len, kv_offset + kv_len), window)
            own = whole[..., kv_offset:kv_offset + kv_len]
            masks[kind] = additive(own, dtype) if implementation == "eager" else own
        return masks

    def positions_reached(self, attention, kwargs: dict, frame) -> bool:
        received = kwargs.get("position_embeddings")
        if frame is None or frame.positions is None or not isinstance(frame.tables, dict):
            return False
        tables = frame.tables.get(getattr(attention, "layer_type", None))
        if tables is None or not isinstance(received, (tuple, list)):
            return False
        return all(same_tensor(a, b) for a, b in zip(received[:2], tables[:2]))
