"""The c2rope settings a checkpoint carries in its config.json, for serving (docs/serving.md).

`c2rope.record_config(model)` (c2rope/hf/serving.py) puts them there on a patched model;
the vLLM plugin (c2rope.vllm) and `recorded_config` read them back. The entry is a plain
JSON object under the key "c2rope":

    "c2rope": {"format": 1, "kind": "C2RoPEConfig", "fields": {...every field...},
               "options": {"frequencies": "model", "frame_axis": "temporal"}}

and `architectures` names c2rope's serving class (`SERVING_ARCHITECTURES`), a name stock
vLLM does not know, so stock vLLM refuses the folder instead of serving it with the
model's own positions. Nothing here imports transformers or vLLM.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from .config import C2RoPEConfig

KEY = "c2rope"
FORMAT = 1
# transformers class -> the architecture name the vLLM plugin registers for it.
SERVING_ARCHITECTURES = {
    "Qwen2VLForConditionalGeneration": "C2RoPEQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "C2RoPEQwen2_5_VLForConditionalGeneration",
    "LlavaForConditionalGeneration": "C2RoPELlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "C2RoPELlavaNextForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": "C2RoPELlavaOnevisionForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "C2RoPEQwen3VLForConditionalGeneration",
    "Idefics3ForConditionalGeneration": "C2RoPEIdefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration": "C2RoPESmolVLMForConditionalGeneration",
    "InternVLForConditionalGeneration": "C2RoPEInternVLForConditionalGeneration",
    "Gemma3ForConditionalGeneration": "C2RoPEGemma3ForConditionalGeneration",
    "Gemma4ForConditionalGeneration": "C2RoPEGemma4ForConditionalGeneration",
}
# serving architecture -> the module of c2rope.vllm that defines the class (imported by
# vLLM only when it builds such a model).
SERVING_MODULES = {
    "C2RoPEQwen2VLForConditionalGeneration": "c2rope.vllm.qwen",
    "C2RoPEQwen2_5_VLForConditionalGeneration": "c2rope.vllm.qwen",
    "C2RoPELlavaForConditionalGeneration": "c2rope.vllm.llava",
    "C2RoPELlavaNextForConditionalGeneration": "c2rope.vllm.llava",
    "C2RoPELlavaOnevisionForConditionalGeneration": "c2rope.vllm.onevision",
    "C2RoPEQwen3VLForConditionalGeneration": "c2rope.vllm.qwen3",
    "C2RoPEIdefics3ForConditionalGeneration": "c2rope.vllm.idefics3",
    "C2RoPESmolVLMForConditionalGeneration": "c2rope.vllm.idefics3",
    "C2RoPEInternVLForConditionalGeneration": "c2rope.vllm.internvl",
    "C2RoPEGemma3ForConditionalGeneration": "c2rope.vllm.gemma3",
    "C2RoPEGemma4ForConditionalGeneration": "c2rope.vllm.gemma4",
}
ORIGINAL_ARCHITECTURES = {served: original for original, served in SERVING_ARCHITECTURES.items()}


def _config_classes():
    from .circle import CircleRoPEConfig

    return {"C2RoPEConfig": C2RoPEConfig, "CircleRoPEConfig": CircleRoPEConfig}


def config_entry(config, options: Optional[dict] = None) -> dict:
    """The JSON object recorded under "c2rope" for a C2RoPEConfig / CircleRoPEConfig."""
    kinds = _config_classes()
    kind = type(config).__name__
    if kinds.get(kind) is not type(config):
        raise TypeError(f"config must be a c2rope.C2RoPEConfig or c2rope.CircleRoPEConfig, got {kind}")
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    entry = {"format": FORMAT, "kind": kind, "fields": fields, "options": dict(options or {})}
    json.dumps(entry)  # must survive config.json
    return entry


def parse_entry(entry) -> dict:
    """{"config": C2RoPEConfig | CircleRoPEConfig, "options": dict} from a recorded entry,
    validated (ValueError naming what is wrong)."""
    if not isinstance(entry, dict):
        raise ValueError(f"config.json's {KEY!r} entry must be a JSON object, got {type(entry).__name__}")
    if entry.get("format") != FORMAT:
        raise ValueError(f"config.json's {KEY!r} entry has format {entry.get('format')!r}; this c2rope reads "
                         f"format {FORMAT} (written by c2rope.record_config)")
    kinds = _config_classes()
    kind = entry.get("kind")
    if kind not in kinds:
        raise ValueError(f"config.json's {KEY!r} entry: 'kind' must be one of {sorted(kinds)}, got {kind!r}")
    fields, options = entry.get("fields"), entry.get("options", {})
    if not isinstance(fields, dict) or not isinstance(options, dict):
        raise ValueError(f"config.json's {KEY!r} entry: 'fields' and 'options' must be JSON objects")
    known = {f.name for f in dataclasses.fields(kinds[kind])}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"config.json's {KEY!r} entry: unknown {kind} field(s) {unknown}")
    try:
        config = kinds[kind](**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config.json's {KEY!r} entry does not make a valid {kind}: {exc}") from None
    return {"config": config, "options": dict(options)}


# The only high-res budget vLLM 0.32's LLaVA-OneVision computes: its token count and its
# merge of the tiles take no config value (transformers reads config.vision_aspect_ratio).
ONEVISION_ASPECT = "anyres_max_9"


def onevision_refusal(config) -> Optional[str]:
    """Why the vLLM plugin cannot serve a LLaVA-OneVision with this transformers config
    exactly, or None: its image tokens must be one per patch (CLIP without its CLS token,
    "default"; SigLIP, "full"), and its high-res budget the one vLLM computes."""
    tower = getattr(config.vision_config, "model_type", None)
    per_patch = {"clip_vision_model": "default", "siglip_vision_model": "full"}
    strategy = getattr(config, "vision_feature_select_strategy", None)
    if per_patch.get(tower) != strategy:
        return ("the vLLM plugin serves LLaVA-OneVision with a CLIP tower and vision_feature_select_strategy="
                f"'default', or a SigLIP tower and 'full' (one token per patch), got {tower!r} with {strategy!r}: "
                "the image tokens would not be one grid per view")
    aspect = getattr(config, "vision_aspect_ratio", None)
    if aspect != ONEVISION_ASPECT:
        return (f"vision_aspect_ratio is {aspect!r}; vLLM's LLaVA-OneVision shrinks the high-resolution grid with "
                f"{ONEVISION_ASPECT!r} whatever the config says, so its image tokens would differ from "
                f"transformers'. The vLLM plugin serves vision_aspect_ratio={ONEVISION_ASPECT!r} only")
    return None


def internvl_refusal(config) -> Optional[str]:
    """Why the vLLM plugin cannot serve an InternVL (transformers' "-HF" format) with this
    transformers config exactly, or None: vLLM 0.32's tower (interns1.py) always takes the
    last layer's features without the CLS token, and counts a tile's tokens from
    image_size[0] and patch_size[0] (square tiles)."""
    layer = getattr(config, "vision_feature_layer", -1)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if layer != -1 or strategy != "default":
        return ("the vLLM plugin serves InternVL with vision_feature_layer=-1 and vision_feature_select_strategy="
                f"'default' (what vLLM's InternVL computes whatever the config says), got {layer!r} with "
                f"{strategy!r}: the image features would differ from transformers'")
    vision = config.vision_config
    size, patch = vision.image_size, vision.patch_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    if len(set(size)) != 1 or len(set(patch)) != 1:
        return (f"vision_config image_size {list(size)} / patch_size {list(patch)} are not square; vLLM's InternVL "
                "counts a tile's tokens from the first of each, so its image tokens would differ from transformers'")
    return None


def recorded_config(source) -> Optional[dict]:
    """What a checkpoint recorded: {"config": ..., "options": ...}, ready for
    `c2rope.patch_model(model, **recorded_config(folder))`; None when it recorded nothing.

    source: a checkpoint folder, a config.json path, its dict, or a transformers
    PretrainedConfig (e.g. `model.config` after `from_pretrained`)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as handle:
            source = json.load(handle)
    if isinstance(source, dict):
        entry = source.get(KEY)
    else:
        entry = getattr(source, KEY, None)
        if entry is None and not hasattr(source, "to_dict"):
            raise TypeError("source must be a folder, a config.json path, a dict or a transformers config, got "
                            f"{type(source).__name__}")
    return None if entry is None else parse_entry(entry)


__all__ = ["KEY", "ONEVISION_ASPECT", "SERVING_ARCHITECTURES", "SERVING_MODULES", "config_entry",
           "internvl_refusal", "onevision_refusal", "parse_entry", "recorded_config"]

assert set(SERVING_MODULES) == set(ORIGINAL_ARCHITECTURES)
