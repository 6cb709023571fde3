"""Qwen3.5, dense and MoE (transformers' `qwen3_5` and `qwen3_5_moe`; docs/qwen.md,
"Qwen3.5"):

    c2rope.patch_model(model, c2rope.C2RoPEConfig())     # the default for this family
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), options={"frequencies": "c2rope"})
    c2rope.patch_model(model, c2rope.CircleRoPEConfig())

Qwen3.5 is a Qwen3-VL-style model (interleaved M-RoPE, timestamp text between video
frames, the same get_rope_index / generate() machinery) with two differences, and this
module handles only those; everything else is the Qwen-VL patch (qwen_vl/c2rope_patch.py,
qwen_vl/circle_patch.py), unchanged:

- partial rotary: only the first `head_dim * partial_rotary_factor` dims of each head
  are rotated. The text model's rotary module is built on that width and its attention
  passes the rest through, so c2rope's tables (the model's sections or c2rope's split)
  are built on the rotary's own `inv_freq` and never touch the pass-through dims.
- a hybrid stack: only the layers whose `layer_types` entry is "full_attention" attend
  with positions and a mask; the others are Gated DeltaNet (linear attention), which
  take neither, only the model's own 2-D padding mask. The text model takes one mask
  per layer type (a dict keyed by layer type); c2rope hands the Chebyshev mask to the
  full-attention layers and, to every other layer type, the mask the release itself
  builds (`create_recurrent_attention_mask` of the text model's module), so linear
  layers run exactly as unpatched. Circle-RoPE's AGE plan is laid over the
  full-attention layers only.

The probe (`patch_model(..., verify=True)`) checks both: full-attention layers rotate by
c2rope's positions and get its mask (qwen_vl/probe.py), and every linear-attention layer
gets, on a left-padded prompt, the very mask the unpatched text model hands it.

Refused: a transformers release without Qwen3.5 (TypeError); packed rows (several
samples in one row) that hold images or video (ValueError).
"""
from __future__ import annotations

import inspect
import sys
from typing import Callable, List

import torch
from torch import nn

from ...circle import CircleRoPEConfig
from ...config import C2RoPEConfig
from ...mrope import mm_token_type_ids_from_input_ids
from .. import introspect
from ..packing import sample_ids
from .qwen_vl.circle_patch import apply_circle_patch
from .qwen_vl.c2rope_patch import apply_c2rope_patch, call_arguments, find_parts
from .qwen_vl.check import check_lines, run_check, shrink_config  # noqa: F401  (the Qwen-VL check covers Qwen3.5)
from .qwen_vl.probe import _weight, probe_prompt, run_probe, token_mixer
from ..record import PatchRecord
from ..registry import register_patcher

MODEL_TYPES = ("qwen3_5", "qwen3_5_moe")
CHECK_CLASSES = {"qwen3_5": "Qwen3_5ForConditionalGeneration", "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}
DOCS = "docs/qwen.md"
FULL_ATTENTION = "full_attention"
_MASK_BUILDER = "create_recurrent_attention_mask"  # what the release's text forward calls for linear layers


def require_release(model_type: str) -> None:
    """TypeError unless the installed transformers ships the family (4.57 and 5.0 do not)."""
    introspect.require_release(model_type, "Qwen3.5", f"{DOCS}, 'Qwen3.5'")


def layer_types(text: nn.Module) -> List[str]:
    """The text config's layer_types, checked against the layers (one entry per layer,
    'full_attention' exactly where a layer has self-attention)."""
    types = list(getattr(text.config, "layer_types", None) or [])
    if len(types) < len(text.layers):
        raise TypeError(f"{type(text).__name__}: config.layer_types has {len(types)} entries for "
                        f"{len(text.layers)} layers")
    for index, (layer, kind) in enumerate(zip(text.layers, types)):
        if (token_mixer(layer)[0] == "attention") != (kind == FULL_ATTENTION):
            raise TypeError(f"{type(text).__name__}: layer {index} is {type(token_mixer(layer)[1]).__name__} but "
                            f"config.layer_types says {kind!r}")
    return types[:len(text.layers)]


class LayerTypeMasks:
    """`QwenC2RoPE.layer_masks`: the text model's attention_mask as a dict keyed by layer
    type. Full-attention layers get c2rope's mask, every other type the mask the
    release builds from the 2-D padding mask of the call (its own builder, found in
    the text model's module, called with the arguments it names)."""

    def __init__(self, text: nn.Module, types: List[str]):
        self.text = text
        self.other_types = sorted(set(types) - {FULL_ATTENTION})
        builder = vars(sys.modules[type(text).__module__]).get(_MASK_BUILDER)
        if self.other_types and not callable(builder):
            raise TypeError(
                f"c2rope: {type(text).__name__} of this transformers release does not build its linear-attention "
                f"mask with {_MASK_BUILDER}; c2rope cannot hand those layers their own mask")
        self.builder = builder

    def __call__(self, mask, bound: dict):
        masks = {FULL_ATTENTION: mask}
        if not self.other_types:
            return masks
        embeds = bound.get("inputs_embeds")
        if embeds is None:
            embeds = self.text.get_input_embeddings()(bound["input_ids"])
        position_ids = bound.get("position_ids")
        text_positions = position_ids[0] if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 3 \
            and position_ids.shape[0] == 4 else None
        names = inspect.signature(self.builder).parameters
        # The cache under one name only: 5.25 takes `cache` and still accepts the deprecated
        # `past_key_values`, warning (FutureWarning) when both are passed.
        cache_name = "cache" if "cache" in names else "past_key_values"
        offered = {"config": self.text.config, "inputs_embeds": embeds, "attention_mask": bound.get("attention_mask"),
                   cache_name: bound.get("cache", bound.get("past_key_values")), "position_ids": text_positions}
        own = self.builder(**{name: value for name, value in offered.items() if name in names})
        for kind in self.other_types:
            masks[kind] = own
        return masks


class LinearLayersProbe:
    """`record.probe`: the Qwen-VL probe of the attention layers (`attention_probe`),
    then the linear-attention layers: on the probe prompt with one padding token in
    front, each must get the mask the text model's own (class) forward hands it."""

    def __init__(self, attention_probe: Callable, inner: nn.Module, text: nn.Module, keep):
        self.attention_probe = attention_probe
        self.inner = inner
        self.text = text
        self.keep = keep  # (object, attribute): what the probe forward must leave as it was

    def __call__(self, state=None) -> None:
        self.attention_probe(state)
        inner, text = self.inner, self.text
        weight = _weight(text)
        if weight is None or all(token_mixer(layer)[0] == "attention" for layer in text.layers):
            return
        # No video: Circle-RoPE's AGE asks the release's get_rope_index, which cannot place
        # the probe's frames without their timestamp text (the linear layers' mask does not
        # depend on what the vision tokens are).
        arguments, _ = probe_prompt(inner, weight.device, video=False)
        for name in ("input_ids", "mm_token_type_ids", "attention_mask"):
            if name in arguments:
                value = arguments[name]
                arguments[name] = torch.cat([torch.zeros_like(value[:, :1]), value], dim=1)
        holder, name = self.keep
        kept = getattr(holder, name, None)
        try:
            seen = run_probe(inner, text, arguments)
        finally:
            setattr(holder, name, kept)
        want = self._release_masks(arguments["attention_mask"], weight)
        for index, entry in enumerate(seen):
            if entry["kind"] != "linear":
                continue
            got, expected = entry["mask"], want[index]
            same = (got is None and expected is None) or (
                isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and got.shape == expected.shape
                and bool(torch.equal(got, expected)))
            if entry["calls"] != 1 or not same:
                raise RuntimeError(
                    f"c2rope: linear-attention layer {index} ({type(token_mixer(text.layers[index])[1]).__name__}) "
                    "did not get the mask the unpatched model gives it")

    def _release_masks(self, attention_mask: torch.Tensor, weight: torch.Tensor) -> dict:
        """Per linear layer, the mask the text model's class forward (no c2rope wrapper)
        hands it for this 2-D padding mask."""
        from ..pipeline import probe_implementation

        text = self.text
        got = {}
        handles = []
        for index, layer in enumerate(text.layers):
            kind, module = token_mixer(layer)
            if kind == "linear":
                def hook(module, args, kwargs, index=index):
                    got[index] = kwargs.get("attention_mask")
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        embeds = torch.zeros(*attention_mask.shape, text.config.hidden_size, dtype=weight.dtype, device=weight.device)
        try:
            with torch.no_grad(), probe_implementation(text.config):
                type(text).forward(text, inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return got


def _refuse_packed_vision(original: Callable, inner: nn.Module, *args, **kwargs):
    """Packed rows (position_ids restarting per sample, or cu_seq_lens) holding images or
    video: refused (the Qwen-VL patch places one sequence per row)."""
    arguments = call_arguments(original, args, kwargs)
    ids = arguments.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        types = mm_token_type_ids_from_input_ids(ids, inner.config.image_token_id,
                                                 getattr(inner.config, "video_token_id", None))
        if bool(types.any()):
            position_ids = arguments.get("position_ids")
            if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 3 and position_ids.shape[0] == 4:
                position_ids = position_ids[0]
            cu = arguments.get("cu_seq_lens_q")
            packed = cu is not None or sample_ids(position_ids, None, arguments.get("attention_mask"),
                                                  *ids.shape, ids.device) is not None
            if packed:
                raise ValueError(
                    "c2rope: packed rows (several samples in one row: position_ids restarting or cu_seq_lens_q) "
                    "with images or video are not supported on Qwen3.5; give each sample its own row "
                    "(docs/qwen.md, 'Qwen3.5')")
    return original(*args, **kwargs)


@register_patcher(*MODEL_TYPES, config_types=(C2RoPEConfig, CircleRoPEConfig), takes_options=True)
def _patch_qwen3_5(model: nn.Module, record: PatchRecord, state) -> None:
    require_release(model.config.model_type)
    inner, text = find_parts(model)
    types = layer_types(text)
    options = getattr(state, "options", None)
    if isinstance(state.config, C2RoPEConfig):
        qwen = apply_c2rope_patch(model, record, state, options)
        qwen.layer_masks = LayerTypeMasks(text, types)
        keep = (qwen._local, "last")  # the last prompt get_rope_index placed
    else:
        if options:
            raise TypeError(f"Qwen3.5 with a CircleRoPEConfig takes no options, got {sorted(options)}")
        keep = (apply_circle_patch(model, record, state.config), "prompt")
    record.wrap_forward(inner, _refuse_packed_vision, inner)
    record.probe = LinearLayersProbe(record.probe, inner, text, keep)


__all__ = ["MODEL_TYPES", "LayerTypeMasks", "LinearLayersProbe", "layer_types", "require_release"]
