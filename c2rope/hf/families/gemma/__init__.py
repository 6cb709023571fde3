"""Gemma 3 and Gemma 4 (transformers' `gemma3`, `gemma4`; docs/gemma.md):

    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), options={"image_attention": "bidirectional"})

What is particular to these families, on top of the generic decoder corridor
(pipeline, masks, state, entry):
- rotary.py: one rotary module serves two layer types (sliding-window layers with a
  small rope base, global layers with a large, possibly scaled one); c2rope's triplet
  tables are built per layer type on that type's own frequencies;
- masks.py: the multimodal model hands its text model a dict of prepared masks (the
  bidirectional image block, the sliding windows); c2rope plans from the 2-D padding
  mask and, with images, hands its own dict (Chebyshev rule inside each image, the
  same windows), or gives the model's dict back (text-only calls; the option
  image_attention="bidirectional"; mask="causal");
- geometry.py: each image's grid (Gemma 3: the projector's square pooled grid,
  checked against the image-token runs of the input; Gemma 4: per image, from the
  patch positions the processor sends, `image_position_ids`);
- probe.py: the patch-time probe, per layer type.
"""
from __future__ import annotations

import importlib
import inspect

from torch import nn

from ....config import C2RoPEConfig
from ....rotary import apply_rotary_pos_emb as fused_apply_rotary_pos_emb
from ...entry import add_entry_points
from ... import introspect
from ...introspect import parameter_names
from ...pipeline import ROTARY_GLOBAL, hook_decoder
from ...record import PatchRecord, bind_forward_with_globals
from ...registry import register_patcher
from . import geometry
from .check import check_inputs, shrink_config
from .masks import GiveBackModelMask, HandPadding, InnerMask, LayerTypeDelivery
from .probe import GemmaProbe
from .rotary import LayerTypeRotary

MODEL_TYPES = ("gemma3", "gemma4")
DOCS = "docs/gemma.md"
CHECK_CLASSES = {"gemma3": "Gemma3ForConditionalGeneration", "gemma4": "Gemma4ForConditionalGeneration"}
IMAGE_ATTENTION = ("chebyshev", "bidirectional")
_NAMES = {"gemma3": "Gemma 3", "gemma4": "Gemma 4"}


def unsupported_reason(model_type: str):
    """Why the installed transformers cannot be patched for this family, or None.
    Gemma 4 ships from 5.24 on; Gemma 3 from 4.50 on, but before 5.0 with one rotary
    module per rope base (rotary_emb and rotary_emb_local), which c2rope does not patch."""
    import transformers

    missing = introspect.missing_release(model_type, _NAMES.get(model_type, model_type), DOCS)
    if missing is not None:
        return missing
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    rotary = getattr(modeling, f"{model_type.capitalize()}RotaryEmbedding", None)
    if rotary is None:
        rotary = getattr(modeling, f"{model_type.capitalize()}TextRotaryEmbedding", None)
    if rotary is not None and "layer_type" not in inspect.signature(rotary.forward).parameters:
        return (f"{_NAMES.get(model_type, model_type)} of transformers {transformers.__version__} builds one rotary "
                "module per rope base (rotary_emb, rotary_emb_local); c2rope patches the releases whose rotary "
                f"module takes a layer_type (5.0 and later) ({DOCS})")
    return None


def require_release(model_type: str) -> None:
    """TypeError naming the release when it lacks the family or builds it in a way
    c2rope does not patch (unsupported_reason)."""
    reason = unsupported_reason(model_type)
    if reason is not None:
        raise TypeError(f"c2rope: {reason}")


def read_options(options) -> str:
    """The `image_attention` option (ValueError / TypeError naming what is wrong)."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"image_attention"})
    if unknown:
        raise TypeError(f"Gemma takes the option 'image_attention' only, got {unknown}")
    value = options.get("image_attention", "chebyshev")
    if value not in IMAGE_ATTENTION:
        raise ValueError(f"options['image_attention'] must be one of {IMAGE_ATTENTION}, got {value!r}")
    return value


def find_parts(model: nn.Module):
    """(multimodal model, text model): Gemma*Model and its language_model."""
    inner = getattr(model, "model", model)
    text = getattr(inner, "language_model", None)
    if not isinstance(text, nn.Module) or not isinstance(getattr(text, "layers", None), nn.ModuleList) \
            or not isinstance(getattr(text, "rotary_emb", None), nn.Module):
        raise TypeError(f"c2rope: {type(model).__name__} has no language_model with layers and rotary_emb")
    return inner, text


@register_patcher(*MODEL_TYPES, config_types=(C2RoPEConfig,), takes_options=True)
def _patch_gemma(model: nn.Module, record: PatchRecord, state) -> None:
    model_type = model.config.model_type
    require_release(model_type)
    image_attention = read_options(getattr(state, "options", None))
    inner, text = find_parts(model)
    spans = geometry.setup(model, inner, state, record)
    attentions = [layer.self_attn for layer in text.layers]
    record.set_attr(text, "rotary_emb", LayerTypeRotary(text.rotary_emb, state, state.config))
    # Gemma 3's layers call apply_rotary_pos_emb(q, k, cos, sin): c2rope's fused kernel
    # (the same numbers). Gemma 4's rotate q and k one at a time with their own function,
    # which takes c2rope's tables as they are.
    rebound = all(geometry.calls_pair_rotary(attention) for attention in attentions)
    if rebound:
        for attention in attentions:
            bind_forward_with_globals(record, attention, {ROTARY_GLOBAL: fused_apply_rotary_pos_emb})
    add_entry_points(record, model, text, state, spans)
    inner_mask = InnerMask(parameter_names(inner.forward))
    record.add_hooks(inner, inner_mask.pre, inner_mask.post)
    names = parameter_names(text.forward)
    hand = HandPadding(names, inner_mask)
    record.add_hooks(text, hand.pre, hand.post)  # runs before c2rope's decoder hook
    delivery = LayerTypeDelivery(text)
    hook_decoder(record, text, state, delivery, attentions, f"{type(text).__name__} (decoder)")
    give_back = GiveBackModelMask(names, hand, state, keep_model_mask=image_attention == "bidirectional")
    record.add_hooks(text, give_back.pre, give_back.post)  # runs after it
    record.probe = GemmaProbe(model, record, text, attentions, delivery, rebound,
                              keep_model_mask=image_attention == "bidirectional")


__all__ = ["CHECK_CLASSES", "DOCS", "IMAGE_ATTENTION", "MODEL_TYPES", "check_inputs", "find_parts", "read_options",
           "require_release", "shrink_config", "unsupported_reason"]
