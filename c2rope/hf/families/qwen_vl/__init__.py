"""The registry entry of the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): one
patcher per model type, dispatching on the config's kind:

    c2rope.patch_model(model, c2rope.CircleRoPEConfig(...))  # Circle-RoPE + AGE (circle_patch.py)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(...))      # C2RoPE (c2rope_patch.py)

CircleRoPEConfig() stays the default (what patch_model(model) did before C2RoPE
reached this family)."""
from __future__ import annotations

from ....circle import CircleRoPEConfig
from ....config import C2RoPEConfig
from .circle_patch import apply_circle_patch
from .c2rope_patch import apply_c2rope_patch
from ...registry import register_patcher
from .check import check_lines, run_check, shrink_config  # noqa: F401  (`python -m c2rope check`: check.py)

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CHECK_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "qwen3_vl": "Qwen3VLForConditionalGeneration"}
DOCS = "docs/qwen.md"


@register_patcher(*MODEL_TYPES, config_types=(CircleRoPEConfig, C2RoPEConfig), takes_options=True)
def _patch_qwen_vl(model, record, state):
    options = getattr(state, "options", None)
    if isinstance(state.config, C2RoPEConfig):
        apply_c2rope_patch(model, record, state, options)
        return
    if options:
        raise TypeError(f"Qwen-VL with a CircleRoPEConfig takes no options, got {sorted(options)}")
    apply_circle_patch(model, record, state.config)
