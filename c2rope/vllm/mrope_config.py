"""vLLM's per-architecture config hooks that size the position rows of the serving classes:
- three rows for serving classes whose model has 1-D RoPE (LLaVA, LLaVA-NeXT,
  LLaVA-OneVision, Idefics3, SmolVLM, InternVL, Gemma 3, Gemma 4), below;
- a 4th row for the Qwen-VL classes when the checkpoint records the frame axis
  (frames.py, `add_frame_section`).

vLLM asks a model for a prompt's positions (`get_mrope_input_positions`, [3, L] rows and
an integer decode offset) only when it decides from the checkpoint's config that the
model uses M-RoPE: `uses_mrope(hf_config)`, true when the config declares an
`mrope_section`. A LLaVA config declares none, and writing one into config.json would
change what transformers loads. So the plugin marks the config in vLLM only: it files
`C2RoPEThreeRows` as the per-architecture config hook (vLLM's MODELS_CONFIG_MAP, which
ModelConfig runs once it has loaded the config) for the LLaVA serving architectures, and
the hook sets `hf_config.mrope_section` on the loaded config object. The text model's
own rope parameters are left alone (its layers keep a plain RotaryEmbedding, which the
serving class replaces), so the section only tells vLLM "three rows": (m, x, y), with
the rotary-slot counts of each as its numbers.
"""
from __future__ import annotations

from ..serving import SERVING_MODULES

# Serving architectures whose model has 1-D positions in vLLM (LLaVA, LLaVA-NeXT, OneVision,
# Idefics3, SmolVLM, InternVL, Gemma 3, Gemma 4).
THREE_ROW_ARCHITECTURES = tuple(sorted(name for name, module in SERVING_MODULES.items()
                                       if module in ("c2rope.vllm.llava", "c2rope.vllm.onevision",
                                                     "c2rope.vllm.idefics3", "c2rope.vllm.internvl",
                                                     "c2rope.vllm.gemma3", "c2rope.vllm.gemma4")))
# Serving architectures whose model is M-RoPE in vLLM already (the frame axis may add a row).
M_ROPE_ARCHITECTURES = tuple(sorted(name for name, module in SERVING_MODULES.items()
                                    if module in ("c2rope.vllm.qwen", "c2rope.vllm.qwen3")))


def three_row_section(hf_config) -> list:
    """[m, x, y] rotary-slot counts of the recorded C2RoPEConfig on the text model's
    rotary dim: what `mrope_section` declares (len 3 = three position rows)."""
    from ..config import AXIS_M, AXIS_X, AXIS_Y
    from .servable import MASKS, check_servable

    config = check_servable(hf_config, MASKS)["config"]
    text = hf_config.get_text_config()
    try:
        head = getattr(text, "head_dim", None)
    except RuntimeError:  # Gemma 4 in transformers 5.19: a head size per layer type, read here by none
        head = None
    head = head or text.hidden_size // text.num_attention_heads
    table = config.axis_table(int(head))
    return [table.count(AXIS_M), table.count(AXIS_X), table.count(AXIS_Y)]


def register_config_hooks() -> None:
    """File the hook for every serving architecture (vLLM's own hook for an architecture,
    if it ever has one, is kept)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    from .frames import add_frame_section

    class C2RoPEThreeRows(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_model_config(model_config) -> None:
            hf_config = model_config.hf_config
            # Refuse what cannot be served before vLLM sizes anything for it.
            hf_config.mrope_section = three_row_section(hf_config)

    class C2RoPEFrameAxis(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_model_config(model_config) -> None:
            add_frame_section(model_config)

    for name in THREE_ROW_ARCHITECTURES:
        MODELS_CONFIG_MAP.setdefault(name, C2RoPEThreeRows)
    for name in M_ROPE_ARCHITECTURES:
        MODELS_CONFIG_MAP.setdefault(name, C2RoPEFrameAxis)


__all__ = ["M_ROPE_ARCHITECTURES", "THREE_ROW_ARCHITECTURES", "register_config_hooks", "three_row_section"]
