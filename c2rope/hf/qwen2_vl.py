"""The documented import path of the Circle-RoPE entry points (docs/circle.md); the code
lives in the Qwen-VL family, c2rope/hf/families/qwen_vl/circle_patch.py."""
from .families.qwen_vl.circle_patch import patch_qwen2_vl, unpatch_qwen2_vl

__all__ = ["patch_qwen2_vl", "unpatch_qwen2_vl"]
