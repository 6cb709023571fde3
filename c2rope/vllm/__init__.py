"""c2rope's vLLM plugin: serve C2RoPE-patched Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA /
LLaVA-NeXT / LLaVA-OneVision, Idefics3 / SmolVLM (images), InternVL, Gemma 3 and Gemma 4 (images)
checkpoints with the positions they were trained with (docs/serving.md).

vLLM finds it through the `vllm.general_plugins` entry point (pyproject.toml) and calls
`register()` in every process it starts; a checkpoint saved after
`c2rope.record_config(model)` names one of these architectures in its config.json:

    C2RoPEQwen2VLForConditionalGeneration      (transformers: Qwen2VLForConditionalGeneration)
    C2RoPEQwen2_5_VLForConditionalGeneration   (transformers: Qwen2_5_VLForConditionalGeneration)
    C2RoPEQwen3VLForConditionalGeneration      (transformers: Qwen3VLForConditionalGeneration)
    C2RoPELlavaForConditionalGeneration        (transformers: LlavaForConditionalGeneration)
    C2RoPELlavaNextForConditionalGeneration    (transformers: LlavaNextForConditionalGeneration)
    C2RoPELlavaOnevisionForConditionalGeneration (transformers: LlavaOnevisionForConditionalGeneration)
    C2RoPEIdefics3ForConditionalGeneration     (transformers: Idefics3ForConditionalGeneration)
    C2RoPESmolVLMForConditionalGeneration      (transformers: SmolVLMForConditionalGeneration)
    C2RoPEInternVLForConditionalGeneration     (transformers: InternVLForConditionalGeneration)
    C2RoPEGemma3ForConditionalGeneration       (transformers: Gemma3ForConditionalGeneration)

Importing this package does not import vLLM; the classes (c2rope.serving.SERVING_MODULES
names their modules) are registered by name and imported when vLLM builds such a model.
"""
from __future__ import annotations

from ..serving import SERVING_MODULES

ARCHITECTURES = tuple(sorted(SERVING_MODULES))


def register() -> None:
    """The entry point vLLM calls: register the serving classes by name (lazily)."""
    from vllm import ModelRegistry

    from .mrope_config import register_config_hooks

    for name in ARCHITECTURES:
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"{SERVING_MODULES[name]}:{name}")
    register_config_hooks()  # mrope_config.py: LLaVA's / Idefics3's three position rows, Qwen-VL's frame-axis row


__all__ = ["ARCHITECTURES", "register"]
