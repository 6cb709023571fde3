"""c2rope's vLLM plugin: serve C2RoPE-patched Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints with the
positions they were trained with (docs/serving.md).

vLLM finds it through the `vllm.general_plugins` entry point (pyproject.toml) and calls
`register()` in every process it starts; a checkpoint saved after
`c2rope.record_config(model)` names one of these architectures in its config.json:

    C2RoPEQwen2VLForConditionalGeneration      (transformers: Qwen2VLForConditionalGeneration)
    C2RoPEQwen2_5_VLForConditionalGeneration   (transformers: Qwen2_5_VLForConditionalGeneration)
    C2RoPEQwen3VLForConditionalGeneration      (transformers: Qwen3VLForConditionalGeneration)

Importing this package does not import vLLM; the classes (c2rope.serving.SERVING_MODULES
names their modules) are registered by name and imported when vLLM builds such a model.
"""
from __future__ import annotations

from ..serving import SERVING_MODULES

ARCHITECTURES = tuple(sorted(SERVING_MODULES))
M_ROPE_MODULES = ("c2rope.vllm.qwen", "c2rope.vllm.qwen3")


def register() -> None:
    """The entry point vLLM calls: register the serving classes by name (lazily)."""
    from vllm import ModelRegistry

    for name in ARCHITECTURES:
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"{SERVING_MODULES[name]}:{name}")
    _register_config_hook()


def _register_config_hook() -> None:
    """The M-RoPE serving classes' config hook (frames.py: the frame axis' 4th row)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    from .frames import add_frame_section

    class C2RoPEFrameAxisConfig(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_model_config(model_config) -> None:
            add_frame_section(model_config)

    for name in ARCHITECTURES:
        if SERVING_MODULES[name] in M_ROPE_MODULES:
            MODELS_CONFIG_MAP.setdefault(name, C2RoPEFrameAxisConfig)


__all__ = ["ARCHITECTURES", "register"]
