"""LLaVA on transformers 4.57.x and 5.x (`LlavaForConditionalGeneration`, any decoder
of the Llama family as language model): one image is one grid of `image_token_id`s,
its (H, W) read from the vision config; the decoder is patched as in llama.py."""
from __future__ import annotations

from ..state import default_image_token_id
from ..registry import register_patcher
from .llama import patch_decoder

MODEL_TYPES = ("llava",)
CHECK_CLASSES = {"llava": "LlavaForConditionalGeneration"}
DOCS = "docs/hf.md"


@register_patcher(*MODEL_TYPES)
def _patch_llava(model, record, state):
    config = model.config
    default_image_token_id(state, config)
    if state.grid is None:
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        state.grid = (side, side)
    patch_decoder(model, record, state)
