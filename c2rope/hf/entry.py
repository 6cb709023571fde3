"""Where a patched model's calls enter c2rope: forward hooks on every module a call can
start at, so the image spans and the triplets reach the decoder whichever way it is run.

A multimodal model is run from more than one place. `model(...)` runs the top-level
forward; TRL's fused LM head, `model.model(...)` and other backbone calls run the inner
multimodal model (LlavaModel & co) directly; PEFT's LoraModel calls `model.forward`
(skipping the top-level module's `__call__`); accelerate and TRL replace `model.forward`
with their own wrappers. Every one of these paths goes through the inner model (it turns
the input_ids into embeddings and splices the image features) and then the decoder,
both called as modules. So the entry points are the top-level model, the inner model
and the decoder, and each one opens a call frame (context.py) that carries over what an
enclosing call already knew: the raw input_ids, `visual_layout=`, the path.

Why hooks (a forward pre-hook and an always-called forward hook per module), not
forward wrappers: hooks live in the module's own hook tables, apart from `forward`.
Whatever is wrapped around `forward` after patching (accelerate's autocast wrapper,
TRL's fused head, which keep a reference to the forward they found; accelerate's
`unwrap_model` walking `__wrapped__` back to it) neither hides the hooks nor is removed
with them: unpatching removes c2rope's hooks by their handles and leaves every wrapper
added since in place. Hooks run only through `module(...)`, never `module.forward(...)`;
that is why the inner model and the decoder are entry points too (the models call them
as modules on every path). The always-called hook closes the frame even when the
forward raises.

`visual_layout=` is taken from the keyword arguments by the first entry point a call
reaches (transformers 5.x forwards pass unknown keywords down as **kwargs); generate()
validates its keywords against the forward's signature, so `generate` alone gets a thin
instance-level wrapper that accepts `visual_layout=` (disarmed, not removed, on unpatch
when something wrapped it since: record.Disarmable).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from . import context
from .introspect import CACHE_ARGUMENTS, parameter_names, past_length
from .pipeline import to_kwargs
from .record import PatchRecord, Unpicklable

# The arguments that bring images to a multimodal forward: pixels, or images the model
# encoded before (generate() from transformers 5.24 passes mm_encoder_outputs; Idefics3's
# generate() of older releases passes image_hidden_states).
IMAGE_ARGUMENTS = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs", "image_hidden_states")


class EntryHooks(Unpicklable):
    """The pre-hook and always-called hook of one entry point (top-level or inner model).
    `spans`, if given, derives the call's image spans from its arguments (anyres)."""

    def __init__(self, state, name: str, names, spans: Optional[Callable] = None, encodes_images: bool = False):
        self.state = state
        self.name = name
        self.names = tuple(names)
        self.spans = spans
        self.encodes_images = encodes_images

    def pre(self, module, args, kwargs):
        layout = kwargs.pop("visual_layout", None)
        arguments = to_kwargs(self.names, args, kwargs)
        frame = context.open_frame(self.state, module, self.name, input_ids=arguments.get("input_ids"),
                                   visual_layout=layout)
        if any(arguments.get(name) is not None for name in IMAGE_ARGUMENTS):
            frame.images_given = True
        if self.encodes_images:
            frame.encodes_images = True
        if frame.visual_layout is None:
            if _decoding_step_without_images(self.state, frame, arguments):
                frame.chunk_spans = tuple(() for _ in frame.input_ids)  # no image in any row
            elif self.spans is not None:
                frame.chunk_spans = self.spans(self.names, args, kwargs)
        return args, kwargs

    def post(self, module, args, kwargs, output):
        context.close_frame(self.state, module)
        return None


def _decoding_step_without_images(state, frame, arguments) -> bool:
    """True for a decoding step (one new token per row after a KV cache) that brings no
    images: a model generated its token, and an image token id there is embedded as text
    (it cannot be a whole image), so c2rope reads it as text too. A longer chunk after a
    cache with image tokens but no images, to a model that encodes its own, is refused: a
    new turn whose pixels were dropped (transformers 4.57's generate() drops
    pixel_values once the cache is filled) or forgotten, which the model would embed as
    text. Before any cache the usual rules hold (image tokens without images are refused
    by the family)."""
    ids = frame.input_ids
    if frame.images_given or not (isinstance(ids, torch.Tensor) and ids.dim() == 2):
        return False
    cache = next((arguments[name] for name in CACHE_ARGUMENTS if arguments.get(name) is not None), None)
    if past_length(cache) == 0:
        return False
    if ids.shape[1] == 1:
        return True
    if frame.encodes_images and state.image_token_id is not None and bool((ids == state.image_token_id).any()):
        raise ValueError(
            "c2rope: this call continues a KV cache with image tokens but no pixel_values (or encoded images): the "
            "model would embed them as text. To add images after a cached turn, call the model's forward with the "
            "new tokens, their pixel_values, the cache and the 2-D attention_mask of the whole conversation "
            "(transformers 4.57's generate() drops pixel_values once the cache is filled)")
    return False


def inner_model(model: nn.Module, decoder: nn.Module) -> Optional[nn.Module]:
    """The innermost module between `model` and `decoder` that encodes images
    (has get_image_features): LlavaModel in LlavaForConditionalGeneration. None for
    plain decoders."""
    found = None
    for module in model.modules():
        if module is model or module is decoder or not callable(getattr(module, "get_image_features", None)):
            continue
        if any(m is decoder for m in module.modules()):
            if found is None or any(m is module for m in found.modules()):
                found = module
    return found


def _generate(original, state, *args, visual_layout=None, **kwargs):
    if visual_layout is None:
        return original(*args, **kwargs)
    with context.call_frame(state, visual_layout=visual_layout):
        return original(*args, **kwargs)


def add_entry_points(record: PatchRecord, model: nn.Module, decoder: nn.Module, state,
                     inner_spans: Optional[Callable] = None) -> None:
    """Hook the top-level model and the inner multimodal model (the decoder is hooked by
    pipeline.hook_decoder); `inner_spans(names, args, kwargs)` derives spans at the inner
    model (or the top-level one when there is none)."""
    inner = inner_model(model, decoder)
    points = [] if model is decoder else [(type(model).__name__, model)]
    if inner is not None:
        points.append((f"{type(inner).__name__} (inner model)", inner))
    for index, (name, module) in enumerate(points):
        spans = inner_spans if index == len(points) - 1 else None
        hooks = EntryHooks(state, name, parameter_names(module.forward), spans,
                           encodes_images=callable(getattr(module, "get_image_features", None)))
        record.add_hooks(module, hooks.pre, hooks.post)
        record.entry_points.append((name, module))
    if callable(getattr(model, "generate", None)):
        record.wrap_forward(model, _generate, state, attribute="generate", extra_keyword="visual_layout")
